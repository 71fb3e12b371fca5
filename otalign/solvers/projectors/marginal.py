"""Marginal constraints: hard, KL- or TV-penalised, equality or cap.

For a row constraint with weights ``w`` and dual ``f`` (cost units), let
``f* = f + eps * (log w - log mu)`` be the exact KL projection (the value of ``f`` for which the
row marginal ``mu = P 1`` equals ``w`` with the other duals fixed). The update is the proximal map
of the constraint's conjugate, evaluated at ``f*``:

============  ==========================  ===========================
relation      ``==``                       ``<=`` (cap stays hard)
============  ==========================  ===========================
hard          ``f*``                       ``min(f*, 0)`` (Dykstra)
KL(rho)       ``tau f*``, tau=rho/(rho+eps) ``min(f*, tau f*)``
TV(rho)       ``clip(f*, -rho, rho)``       ``min(f*, rho)``
============  ==========================  ===========================

Columns are identical with ``g`` and ``P^T 1``. Zero weights of a hard, capped or KL constraint
force the row to zero (``KL(mu || 0)`` is infinite unless ``mu = 0``); TV allows mass there.

Duality gap (:meth:`MarginalProjector.gap`), per entry, in forms that are sums of non-negative
terms (no cancellation; ``mu <= w`` holds for a cap up to its violation). The stopping test
certifies the KL parts by the distance bound they imply (second order in the error of the duals)
and the first-order parts (caps, TV) by their complementarity residual in mass units
(:meth:`MarginalProjector.certificate`):

============  ==============================================  ==========================================
relation      ``==``                                          ``<=``
============  ==============================================  ==========================================
hard          ``f (mu - w)`` (signed; certified by the         ``|f| (w - mu)``
              marginal error instead)
KL(rho)       ``rho KL(mu || w exp(-f/rho))``                  ``f > 0``: as ``==``; else
                                                              ``rho KL(mu || w) + |f| (w - mu)``
TV(rho)       ``rho |mu - w| + f (mu - w)``                    ``rho (w - mu)_+ - f (w - mu)``
============  ==============================================  ==========================================

with ``KL(x || y) = x log(x / y) - x + y``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ...constraints.types import Marginal
from ..footprint import COL, ROW
from ..problem import Problem, safe_log
from ..registry import Projector, Support, kl_step, register

__all__ = ["MarginalProjector", "kl_divergence_terms"]


def kl_divergence_terms(log_x: torch.Tensor, log_y: torch.Tensor) -> torch.Tensor:
    """Entrywise ``x log(x / y) - x + y >= 0`` from ``log x``, ``log y``, without cancellation.

    With ``u = log x - log y`` the term is ``y h(u)``, ``h(u) = u e^u - e^u + 1 = u^2/2 + u^3/3 +
    ...``: a short series near 0 (where the direct form would cancel), the direct form elsewhere.
    ``x = 0`` gives ``y``; ``y = 0`` gives 0 for ``x = 0`` and ``inf`` otherwise.
    """
    u = log_x - log_y
    finite = torch.isfinite(u)
    uf = torch.where(finite, u, torch.zeros_like(u))
    us = torch.clamp(uf, -0.1, 0.1)  # the series is used (and differentiated) on |u| < 0.1 only
    series = us * us * (0.5 + us * (1 / 3 + us * (1 / 8 + us * (1 / 30 + us * (1 / 144 + us / 840)))))
    direct = uf * torch.exp(uf) - torch.expm1(uf)
    h = torch.where(uf.abs() < 0.1, series, direct)
    y = torch.exp(log_y)
    term = y * h
    zero_x = log_x == -math.inf
    term = torch.where(zero_x, y, term)  # x = 0: the term is y
    term = torch.where(~zero_x & (log_y == -math.inf), torch.full_like(term, math.inf), term)
    return torch.where(finite | zero_x | (log_y == -math.inf), term, torch.full_like(term, math.nan))


@register(Marginal)
class MarginalProjector(Projector):
    def __init__(self, constraint: Marginal, problem: Problem) -> None:
        super().__init__(constraint, problem)
        self.axis = constraint.axis
        name = "weights" if constraint.weights is None else f"Marginal(axis={self.axis}).weights"
        self.weights = problem.vector(constraint.weights, self.axis, name)
        self.log_weights = safe_log(self.weights)
        self.relation = constraint.relation
        pen = constraint.penalty
        self.rho = math.inf if pen is None else pen.rho
        self.kind = "hard" if math.isinf(self.rho) else type(pen).__name__
        self.footprint = ROW if self.axis == 0 else COL
        self.hard = self.kind == "hard" or self.relation == "<="
        self.needs_certificate = self.kind != "hard" or self.relation == "<="
        self.reference = (self.axis, self.weights)
        self.is_hard_equality = self.kind == "hard" and self.relation == "=="
        self.relaxable = self.relation == "==" and self.kind in ("hard", "KL")
        #: the form of :meth:`translation`'s model, known without computing it
        self.translation_kind = {"hard": "linear", "KL": "exp"}.get(self.kind) if self.relation == "==" else None

    @classmethod
    def batch_size(cls, constraint: Marginal) -> Optional[int]:
        w = constraint.weights
        return w.shape[0] if w is not None and w.dim() == 2 else None

    @property
    def forces_zero(self) -> bool:
        """Zero weights force zero mass (all but an equality with a TV penalty)."""
        return not (self.kind == "TV" and self.relation == "==")

    def support(self) -> Support:
        if not self.forces_zero:
            return Support()
        live = self.weights > 0
        return Support(rows=live) if self.axis == 0 else Support(cols=live)

    def init_dual(self) -> torch.Tensor:
        size = self.problem.size(self.axis)
        return torch.zeros(self.problem.batch, size, dtype=self.problem.dtype, device=self.problem.device)

    def update(self, dual: torch.Tensor, log_marginal: torch.Tensor, eps: float) -> torch.Tensor:
        fstar = kl_step(dual, self.log_weights, log_marginal, eps)
        if self.kind == "hard":
            return fstar if self.relation == "==" else torch.clamp(fstar, max=0.0)
        if self.kind == "KL":
            tau = self.rho / (self.rho + eps)
            return tau * fstar if self.relation == "==" else torch.minimum(fstar, tau * fstar)
        if self.relation == "==":
            return torch.clamp(fstar, min=-self.rho, max=self.rho)
        return torch.clamp(fstar, max=self.rho)

    def violation(self, log_marginal: torch.Tensor) -> torch.Tensor:
        gap = torch.exp(log_marginal) - self.weights
        if self.relation == "<=":
            return torch.clamp(gap, min=0.0).sum(-1)
        if self.kind == "hard":
            return gap.abs().sum(-1)
        return torch.zeros_like(gap[..., 0])

    def penalty(self, log_marginal: torch.Tensor) -> torch.Tensor:
        mu = torch.exp(log_marginal)
        w = self.weights.expand_as(mu)
        if self.kind == "hard":
            return torch.zeros_like(mu[..., 0])
        if self.kind == "KL":
            # zero weights are padding (their mass is forced to zero): no term, no gradient;
            # KL(mu || w) without cancellation (rho up to 1e5 multiplies it)
            present = w > 0
            term = kl_divergence_terms(log_marginal, torch.where(present, self.log_weights, torch.zeros_like(w)))
            return self.rho * torch.where(present, term, torch.zeros_like(mu)).sum(-1)
        if self.relation == "==":
            return self.rho * (mu - w).abs().sum(-1)
        return self.rho * torch.clamp(w - mu, min=0.0).sum(-1)

    def gap(self, dual: torch.Tensor, log_marginal: torch.Tensor) -> torch.Tensor:
        if self.is_hard_equality:  # <f, mu - w> (a line of zero weight has zero mass: no term)
            return (dual * (torch.exp(log_marginal) - self.weights)).sum(-1)
        smooth, first_order = self._gap_parts(dual, log_marginal)
        return (smooth + first_order).sum(-1)

    def certificate(self, dual: torch.Tensor, log_marginal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        smooth, _ = self._gap_parts(dual, log_marginal)
        return smooth.sum(-1), self._residual(dual, log_marginal).sum(-1)

    def _gap_parts(self, dual: torch.Tensor, log_marginal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Entrywise Fenchel-Young gap split into its smooth (KL) and first-order parts."""
        mu = torch.exp(log_marginal)
        w = self.weights.expand_as(mu)
        zero = torch.zeros_like(mu)
        smooth, first = zero, zero
        if self.kind == "hard":
            first = dual * (mu - w) if self.relation == "==" else -dual * (w - mu)
        elif self.kind == "KL":
            log_target = self.log_weights - dual / self.rho  # log(w exp(-f / rho))
            smooth = self.rho * kl_divergence_terms(log_marginal, log_target)
            if self.relation == "<=":
                below = self.rho * kl_divergence_terms(log_marginal, self.log_weights)
                smooth = torch.where(dual > 0, smooth, below)
                first = torch.where(dual > 0, zero, -dual * (w - mu))
        elif self.relation == "==":
            first = self.rho * (mu - w).abs() + dual * (mu - w)
        else:
            first = self.rho * torch.clamp(w - mu, min=0.0) - dual * (w - mu)
        if self.forces_zero:  # padding: no mass, no term
            live = w > 0
            smooth, first = torch.where(live, smooth, zero), torch.where(live, first, zero)
        return smooth, first

    def _residual(self, dual: torch.Tensor, log_marginal: torch.Tensor) -> torch.Tensor:
        """Entrywise complementarity residual (mass units) of the first-order part of the gap:
        the mass by which ``mu`` misses the value the dual asks for. A cap whose dual is
        negative (active) must be full; a TV dual strictly inside ``(-rho, rho)`` asks for
        ``mu = w``, one at ``-rho`` allows ``mu > w`` only, one at ``rho`` allows ``mu < w`` only."""
        mu = torch.exp(log_marginal)
        w = self.weights.expand_as(mu)
        zero = torch.zeros_like(mu)
        if self.kind == "TV" and self.relation == "==":
            return torch.where(mu > w, torch.where(dual <= -self.rho, zero, mu - w),
                               torch.where(dual >= self.rho, zero, w - mu))
        if self.relation != "<=":
            return zero
        shortfall = torch.clamp(w - mu, min=0.0)
        if self.kind == "TV":  # the dual at rho: the shortfall is paid for
            out = torch.where(dual >= self.rho, zero, shortfall)
        else:  # hard or KL cap: an active cap (dual < 0) must be full
            out = torch.where(dual < 0, shortfall, zero)
        return torch.where(w > 0, out, zero) if self.forces_zero else out

    def translation(self, dual: torch.Tensor) -> Optional[tuple[str, torch.Tensor, float]]:
        """This constraint's dual objective along ``dual + t`` (``t`` one number per problem), for
        the engine's translation step (:func:`otalign.solvers.engine.translate`):

        * hard equality: ``("linear", log W, 0)``: ``<w, f + t> = const + W t``;
        * KL equality: ``("exp", log S, rho)``: ``rho <w, 1 - exp(-(f + t) / rho)> = const -
          rho S exp(-t / rho)`` with ``S = <w, exp(-f / rho)>``.

        None for other kinds (no closed form).
        """
        kind = self.translation_kind
        if kind == "linear":  # (safe_log: a zero total gives -inf and no NaN gradient)
            return "linear", safe_log(self.weights.sum(-1)).expand(dual.shape[0]), 0.0
        if kind == "exp":
            return "exp", torch.logsumexp(self.log_weights - dual / self.rho, -1), self.rho
        return None

    def dual_objective(self, dual: torch.Tensor) -> torch.Tensor:
        w = self.weights
        if self.kind == "hard":
            term = dual if self.relation == "==" else torch.clamp(dual, max=0.0)
        elif self.kind == "KL":
            soft = self.rho * (-torch.expm1(-dual / self.rho))
            term = soft if self.relation == "==" else torch.where(dual <= 0, dual, soft)
        else:
            term = torch.clamp(dual, max=self.rho)
        return (w * term).sum(-1)
