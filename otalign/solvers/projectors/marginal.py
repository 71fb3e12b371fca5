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
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ...constraints.types import Marginal
from ..footprint import COL, ROW
from ..problem import Problem, safe_log
from ..registry import Projector, Support, kl_step, register

__all__ = ["MarginalProjector"]


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
        self.tracks_dual_change = self.kind != "hard" or self.relation == "<="
        self.reference = (self.axis, self.weights)
        self.is_hard_equality = self.kind == "hard" and self.relation == "=="
        self.relaxable = self.relation == "==" and self.kind in ("hard", "KL")

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
            # zero weights are padding (their mass is forced to zero): no term, no gradient
            present = w > 0
            log_ratio = torch.where(present & (mu > 0), log_marginal - self.log_weights, torch.zeros_like(mu))
            term = torch.where(present, mu * log_ratio - mu + w, torch.zeros_like(mu))
            return self.rho * term.sum(-1)
        if self.relation == "==":
            return self.rho * (mu - w).abs().sum(-1)
        return self.rho * torch.clamp(w - mu, min=0.0).sum(-1)

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
