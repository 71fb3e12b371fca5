"""Fused kernel-domain sweeps for the commonest problem: one row and one column marginal.

In the stabilised kernel domain (:mod:`otalign.solvers.plan`) the plan is
``P = diag(du) Ktil diag(dv)``. When the only duals are a row and a column marginal, each an
equality that is hard or KL-penalised, one update is a closed form in the scalings:

* hard: ``du <- a / (Ktil dv)`` (the KL projection ``f <- f + eps (log a - log P1)``);
* KL(rho): ``du <- c (a / (Ktil dv))^tau`` with ``tau = rho / (rho + eps)`` and
  ``c = exp(-(1 - tau) F0 / eps)`` (applied in logs) (``F0`` the potential absorbed into ``Ktil``), i.e.
  ``f <- tau (f + eps (log a - log P1))``;
* over-relaxed: ``du <- du (du* / du)^omega`` (``d <- d + omega (d* - d)`` on the potential);

rows whose product ``Ktil dv`` is zero (padding, or rows forced to zero) keep their scaling, as
:func:`~otalign.solvers.registry.kl_step` keeps their dual. :class:`FusedPair` runs the sweeps
between two convergence checks this way: a matrix-vector product, a division and (when needed) a
power per half-sweep, instead of the generic path's log-space bookkeeping (some forty small tensor
operations per sweep, which dominate small problems). The duals are written back once per interval,
so the engine's checks, stopping test, domain choice and safety net are unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch

from .footprint import COL, ROW
from .plan import DenseLogPlan
from .projectors.marginal import MarginalProjector
from .registry import Projector

__all__ = ["FusedPair"]


class FusedPair:
    """Sweeps in scalings for a :class:`DenseLogPlan` whose duals are exactly one row and one
    column marginal (equalities, hard or KL), updated in that order, with no translation step.
    Build with :meth:`build`, which returns None when the problem is not of this form."""

    def __init__(self, plan: DenseLogPlan, kr: int, kc: int, pr: MarginalProjector, pc: MarginalProjector) -> None:
        self.kr, self.kc = kr, kc
        dtype = plan.log_ra.dtype
        self.a = torch.exp(pr.log_weights).to(dtype)  # (B or 1, n) targets
        self.b = torch.exp(pc.log_weights).to(dtype)
        self.tau_r = 1.0 if pr.kind == "hard" else pr.rho / (pr.rho + plan.eps)
        self.tau_c = 1.0 if pc.kind == "hard" else pc.rho / (pc.rho + plan.eps)
        self.single = plan.batch == 1

    @classmethod
    def build(cls, plan, projectors: list[Projector], ids: list[int], translation: bool) -> Optional["FusedPair"]:
        """A :class:`FusedPair` for this plan, or None (another footprint, an inequality, a TV
        penalty, block duals, forbidden pairs held as labels only, row sharding, or a translation
        step to run)."""
        if not isinstance(plan, DenseLogPlan) or plan.reducer.sharded or plan._group_ids:
            return None
        if len(ids) != 2:
            return None
        kr, kc = ids
        pr, pc = projectors[kr], projectors[kc]
        if pr.footprint is not ROW or pc.footprint is not COL:
            return None
        if plan._row_ids != [kr] or plan._col_ids != [kc]:
            return None
        for p in (pr, pc):
            if type(p) is not MarginalProjector or p.relation != "==" or p.kind not in ("hard", "KL"):
                return None
        if translation and "KL" in (pr.kind, pc.kind):
            return None  # the translation step ends every sweep there (engine.translate)
        if plan.duals[kr].shape != (plan.batch, plan.n) or plan.duals[kc].shape != (plan.batch, plan.m):
            return None
        return cls(plan, kr, kc, pr, pc)

    def _dead(self, plan: DenseLogPlan, K: torch.Tensor) -> bool:
        """Whether some row or column of ``Ktil`` is zero (checked once per absorption)."""
        key = plan._F0
        if getattr(self, "_dead_key", None) is not key:
            self._dead_key = key
            self._dead_value = bool((K.amax(-1) == 0).any()) or bool((K.amax(-2) == 0).any())
        return self._dead_value

    def sweeps(
        self,
        plan: DenseLogPlan,
        count: int,
        active: Optional[torch.Tensor],
        omega: Optional[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``count >= 1`` sweeps in the kernel domain (``plan.mode == "kernel"``); problems
        outside ``active`` keep their duals, ``omega`` (``(B,)``) over-relaxes. Writes the duals
        back and returns the potentials ``(F, G)`` before the last sweep (for the engine's choice
        of domain)."""
        eps = plan.eps
        K = plan._buf
        F0, G0 = plan._F0, plan._G0
        du = torch.exp((plan.F - F0) / eps)
        dv = torch.exp((plan.G - G0) / eps)
        # KL: log du* = tau log(a / Ktil dv) - (1 - tau) F0 / eps (in logs: the factor alone can
        # overflow when tau is far from 1)
        c_r = None if self.tau_r == 1.0 else F0 * (-(1.0 - self.tau_r) / eps)
        c_c = None if self.tau_c == 1.0 else G0 * (-(1.0 - self.tau_c) / eps)
        if omega is not None and bool((omega == 1.0).all()):
            omega = None
        w = None if omega is None else omega[:, None]
        keep = None if active is None else active[:, None]
        dead = self._dead(plan, K)
        if self.single:  # (n,) vectors: one matrix-vector product, no batch dimension
            K2, KT = K[0], K[0].t()
            du, dv, a, b = du[0], dv[0], self.a[0], self.b[0]
            c_r = None if c_r is None else c_r[0]
            c_c = None if c_c is None else c_c[0]
            w = None if w is None else w[0]
            keep = None if keep is None else keep[0]
            row, col = (lambda d: torch.mv(K2, d)), (lambda d: torch.mv(KT, d))  # noqa: E731
        else:
            a, b = self.a, self.b
            # (d^T Ktil^T) rather than (Ktil d): MKL's batched gemm is several times slower with a
            # column right-hand side on CPU (see DenseLogPlan._kernel_row)
            row = lambda d: torch.bmm(d[:, None, :], K.transpose(1, 2))[:, 0]  # noqa: E731
            col = lambda d: torch.bmm(d[:, None, :], K)[:, 0]  # noqa: E731
        if self.single and self.tau_r == self.tau_c == 1.0 and w is None and keep is None and not dead:
            # plain Sinkhorn on one problem: two products and two divisions per sweep
            for _ in range(count - 1):
                du = torch.div(a, torch.mv(K2, dv))
                dv = torch.div(b, torch.mv(KT, du))
            prev = (du, dv)
            du = torch.div(a, torch.mv(K2, dv))
            KTu = torch.mv(KT, du)
            dv = torch.div(b, KTu)
        else:
            prev = (du, dv)
            KTu = du
            for _ in range(count):
                prev = (du, dv)
                du = _step(du, row(dv), a, self.tau_r, c_r, w, keep, dead)
                KTu = col(du)
                dv = _step(dv, KTu, b, self.tau_c, c_c, w, keep, dead)
        if self.single:
            du, dv, KTu, prev = du[None], dv[None], KTu[None], (prev[0][None], prev[1][None])
        f = F0 + eps * torch.log(du)
        g = G0 + eps * torch.log(dv)
        plan.duals[self.kr] = f
        plan.duals[self.kc] = g
        plan._aggregate_rows()
        plan._aggregate_cols()
        plan._clear_caches()
        plan._log_col = torch.log(KTu * dv)  # exact at the final scalings (their last update)
        return F0 + eps * torch.log(prev[0]), G0 + eps * torch.log(prev[1])


def _step(d, Kd, target, tau, c, w, keep, dead):
    """One scaling update (module docstring); ``Kd`` is the product with the other scaling.
    ``dead``: some row (column) of ``Ktil`` is zero, so that ``Kd`` can be 0 there (elsewhere it
    is positive: the scalings stay within ``exp(+-2 SAFE_DRIFT)`` in the kernel domain)."""
    new = target / Kd
    if tau != 1.0:
        new = new.log_().mul_(tau).add_(c).exp_()
    if w is not None:
        new = d * (new / d).pow_(w)
    if dead:
        keep = Kd > 0 if keep is None else (Kd > 0) & keep
    return new if keep is None else torch.where(keep, new, d)
