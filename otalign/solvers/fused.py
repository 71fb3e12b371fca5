"""Fused kernel-domain sweeps for the commonest problem: one row and one column marginal.

In the stabilised kernel domain (:mod:`otalign.solvers.plan`) the plan is
``P = diag(du) Ktil diag(dv)``. When the only duals are a row and a column marginal, each an
equality that is hard or KL-penalised, one update is a closed form in the scalings:

* hard: ``du <- a / (Ktil dv)`` (the KL projection ``f <- f + eps (log a - log P1)``);
* KL(rho): ``du <- c (a / (Ktil dv))^tau`` with ``tau = rho / (rho + eps)`` and
  ``c = exp(-(1 - tau) F0 / eps)`` (applied in logs; ``F0`` the potential absorbed into
  ``Ktil``), i.e. ``f <- tau (f + eps (log a - log P1))``;
* over-relaxed: ``du <- du (du* / du)^omega`` (``d <- d + omega (d* - d)`` on the potential);
* the translation step of unbalanced problems: ``du e^{t/eps}``, ``dv e^{-t/eps}``;

rows whose product ``Ktil dv`` is zero (padding, or rows forced to zero) keep their scaling, as
:func:`~otalign.solvers.registry.kl_step` keeps their dual. :class:`FusedPair` runs the sweeps
between two convergence checks this way: a matrix-vector product, a division and (when needed) a
power per half-sweep, instead of the generic path's log-space bookkeeping (some forty small tensor
operations per sweep, which dominate small problems). The duals are written back once per interval,
so the engine's checks, stopping test, domain choice and safety net are unchanged.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .footprint import COL, ROW, Groups
from .plan import DenseLogPlan
from .projectors.block import BlockMassProjector
from .projectors.marginal import MarginalProjector
from .registry import Projector, translation_shift

__all__ = ["FusedPair", "FusedBlocks", "build_fused"]


def build_fused(plan, projectors: list[Projector], ids: list[int], translation: bool):
    """The fused sweeps that apply to this problem (:class:`FusedPair`, :class:`FusedBlocks`) or None."""
    return (FusedPair.build(plan, projectors, ids, translation)
            or FusedBlocks.build(plan, projectors, ids, translation))


def _marginal_ok(p: Projector) -> bool:
    return type(p) is MarginalProjector and p.relation == "==" and p.kind in ("hard", "KL")


class _FusedMarginals:
    """What the fused sweeps share: the row and column targets ``a``, ``b`` and KL factors
    ``tau`` (1 for a hard marginal), which lines of ``Ktil`` are live (not zero by construction),
    and the scalings at the start of an interval (those the last interval left in the plan,
    :meth:`DenseLogPlan.set_scalings`, when nothing changed them since)."""

    #: every dual is ``F0 + eps log(d)`` for a scaling ``d`` that the kernel drift reads, so that a
    #: finite drift means finite duals (the engine then skips its own finiteness test)
    duals_in_drift = False

    def __init__(self, plan: DenseLogPlan, pr: MarginalProjector, pc: MarginalProjector) -> None:
        dtype = plan.log_ra.dtype
        self.a = pr.weights.to(dtype)  # (B or 1, n) targets
        self.b = pc.weights.to(dtype)
        self.tau_r = 1.0 if pr.kind == "hard" else pr.rho / (pr.rho + plan.eps)
        self.tau_c = 1.0 if pc.kind == "hard" else pc.rho / (pc.rho + plan.eps)
        # rows and columns forced to zero (padding, zero weights: -inf reference weights), where
        # Ktil d is 0 and the scaling must be kept (and the translation step leaves their duals).
        # (A line that is zero otherwise, every entry forbidden or flushed to zero at absorption,
        # makes the update infinite; the engine's safety net then redoes the interval in the log
        # domain, as for any non-finite value in the kernel domain.)
        self.live_r, self.live_c = torch.isfinite(plan.log_ra), torch.isfinite(plan.log_rb)
        self.dead = not (bool(self.live_r.all()) and bool(self.live_c.all()))

    def _start(self, plan: DenseLogPlan, omega: Optional[torch.Tensor]):
        """``(du, dv, c_r, c_c, omega)`` at the start of an interval: the scalings, the KL offsets
        ``-(1 - tau) F0 / eps`` (None for a hard side: in logs, as the factor alone can overflow
        when tau is far from 1) and ``omega`` (None when every factor is 1)."""
        eps, F0, G0 = plan.eps, plan._F0, plan._G0
        known = plan.known_scalings()
        if known is not None:  # nothing changed since the last interval wrote the duals
            du, dv = known[2], known[3]
        else:
            du = torch.exp((plan.F - F0) / eps)
            dv = torch.exp((plan.G - G0) / eps)
        c_r = None if self.tau_r == 1.0 else F0 * (-(1.0 - self.tau_r) / eps)
        c_c = None if self.tau_c == 1.0 else G0 * (-(1.0 - self.tau_c) / eps)
        if omega is not None and bool((omega == 1.0).all()):
            omega = None
        return du, dv, c_r, c_c, omega


class FusedPair(_FusedMarginals):
    """Sweeps in scalings for a :class:`DenseLogPlan` whose duals are exactly one row and one
    column marginal (equalities, hard or KL), updated in that order, each sweep ended by the
    translation step when the engine runs one (``(f + t, g - t)``: ``du e^{t/eps}``,
    ``dv e^{-t/eps}``). Build with :meth:`build`, which returns None when the problem is not of this form."""

    duals_in_drift = True  # the row and column duals are the only ones

    def __init__(self, plan: DenseLogPlan, kr: int, kc: int, pr: MarginalProjector, pc: MarginalProjector) -> None:
        super().__init__(plan, pr, pc)
        self.kr, self.kc = kr, kc
        self.single = plan.batch == 1
        self.pr, self.pc = pr, pc
        self.translate = False  # set by build when the translation step ends every sweep
        self._views: Optional[tuple] = None  # one problem: (Ktil buffer, Ktil[0], its transpose, a, b)

    def _translated(self, du, dv, F0, G0, eps, keep, live_r, live_c):
        """The translation step (:func:`otalign.solvers.engine.translate`) on the scalings:
        ``(f + t, g - t)`` with the ``t`` that maximises the dual objective, i.e.
        ``du * exp(t / eps)``, ``dv * exp(-t / eps)`` on the live rows and columns."""
        if self.single:  # the projectors' models take (B, n) duals
            f, g = (F0 + eps * torch.log(du))[None], (G0 + eps * torch.log(dv))[None]
        else:
            f, g = F0 + eps * torch.log(du), G0 + eps * torch.log(dv)
        active = None if keep is None else keep[..., 0].reshape(-1)
        t = translation_shift(self.pr.translation(f), self.pc.translation(g), active) / eps
        t = t[0] if self.single else t[:, None]
        one = torch.ones((), dtype=du.dtype, device=du.device)
        return du * torch.where(live_r, torch.exp(t), one), dv * torch.where(live_c, torch.exp(-t), one)

    @classmethod
    def build(cls, plan, projectors: list[Projector], ids: list[int], translation: bool) -> Optional["FusedPair"]:
        """A :class:`FusedPair` for this plan, or None (another footprint, an inequality, a TV
        penalty, block duals, row sharding). ``translation``: the engine ends every sweep with the
        translation step (applied here when a side is KL)."""
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
        if not (_marginal_ok(pr) and _marginal_ok(pc)):
            return None
        if plan.duals[kr].shape != (plan.batch, plan.n) or plan.duals[kc].shape != (plan.batch, plan.m):
            return None
        out = cls(plan, kr, kc, pr, pc)
        # the engine ends every sweep with the translation step where it applies (not both hard)
        out.translate = translation and "KL" in (pr.kind, pc.kind)
        return out

    def sweeps(
        self,
        plan: DenseLogPlan,
        count: int,
        active: Optional[torch.Tensor],
        omega: Optional[torch.Tensor],
    ) -> Callable[[], torch.Tensor]:
        """Run ``count >= 1`` sweeps in the kernel domain (``plan.mode == "kernel"``); problems
        outside ``active`` keep their duals, ``omega`` (``(B,)``) over-relaxes. Writes the duals
        back and returns the movement of the last sweep (:func:`_moved`, for the engine's choice of
        domain)."""
        eps = plan.eps
        K = plan._buf
        F0, G0 = plan._F0, plan._G0
        du, dv, c_r, c_c, omega = self._start(plan, omega)
        w = None if omega is None else omega[:, None]
        keep = None if active is None else active[:, None]
        dead = self.dead
        F0t, G0t, live_r, live_c = F0, G0, self.live_r, self.live_c
        if self.single:  # (n,) vectors: one matrix-vector product, no batch dimension
            if self._views is None or self._views[0] is not K:  # views of the kernel buffer
                self._views = (K, K[0], K[0].t(), self.a[0], self.b[0])
            _, K2, KT, a, b = self._views
            du, dv = du[0], dv[0]
            if self.translate:
                F0t, G0t, live_r, live_c = F0[0], G0[0], live_r[0], live_c[0]
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
        if self.single and self.tau_r == self.tau_c == 1.0 and w is None and keep is None and not dead \
                and not self.translate:
            # plain Sinkhorn on one problem: two products and two divisions per sweep
            for _ in range(count - 1):
                du = torch.div(a, torch.mv(K2, dv))
                dv = torch.div(b, torch.mv(KT, du))
            prev = (du, dv)
            du = torch.div(a, torch.mv(K2, dv))
            KTu = torch.mv(KT, du)
            dv = torch.div(b, KTu)
            col_marginal = (KTu, dv)
        else:
            prev = (du, dv)
            for _ in range(count):
                prev = (du, dv)
                du = _step(du, row(dv), a, self.tau_r, c_r, w, keep, dead)
                KTu = col(du)
                dv = _step(dv, KTu, b, self.tau_c, c_c, w, keep, dead)
                col_marginal = (KTu, dv)
                if self.translate:  # leaves the plan, hence its marginals, unchanged
                    du, dv = self._translated(du, dv, F0t, G0t, eps, keep, live_r, live_c)
        # the marginals at the final scalings, for the check that follows: the column one from the
        # last update's product, the row one from one more product (the check needs it anyway)
        row_sum, (KTu, dv_col) = row(dv), col_marginal
        if self.single:
            du, dv = du[None], dv[None]
        plan.set_scalings(du, dv)
        plan._clear_caches()
        plan._log_row, plan._log_col = torch.log(row_sum * du), torch.log(KTu * dv_col).reshape(dv.shape)
        return _moved(du, dv, *prev)


def _moved(du: torch.Tensor, dv: torch.Tensor, du_before: torch.Tensor, dv_before: torch.Tensor):
    """The engine's :func:`~otalign.solvers.engine._movement` from the scalings: a function giving
    ``(B,)``, the largest ``|log du - log du_before|`` and ``|log dv - log dv_before|`` (the
    potentials' movement over the last sweep, in units of epsilon)."""
    return lambda: torch.log(torch.cat([du / du_before, dv / dv_before], -1)).abs().amax(-1)


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


class FusedBlocks(_FusedMarginals):
    """Sweeps in scalings for a row marginal, a column marginal (equalities, hard or KL, no
    translation step) and one ``BlockMass`` equality, updated in that order.

    With the block scalings ``w = exp((E - E0) / eps)`` (``(B, R, S)`` on the joint groups,
    :class:`~otalign.solvers.plan._JointBlocks`) the plan is ``du_i Ktil_ij dv_j w[r(i), c(j)]``.
    A sweep reads ``Ktil`` twice, as a plain sweep does:

    * rows: ``(V Ktil^T)[r(i), i]`` with ``V[r, j] = dv_j w[r, c(j)]`` (one product with ``R``
      right-hand sides), then the row update;
    * columns and blocks: ``Y = U Ktil`` with ``U[r, i] = du_i [r(i) = r]`` (one product), whose
      rows give the column sums ``sum_r w[r, c(j)] Y[r, j]`` (column update) and, with the new
      ``dv``, the block sums ``T[r, s] = sum_{c(j) = s} Y[r, j] dv_j``; the block update is then
      ``w <- mass / T`` (blocks outside the constraint, or of zero mass, keep theirs).
    """

    def __init__(self, plan: DenseLogPlan, ids: list[int], pr, pc, pb: BlockMassProjector) -> None:
        super().__init__(plan, pr, pc)
        self.kr, self.kc, self.kb = ids
        j = plan._joint
        dtype = plan.log_ra.dtype
        fp = pb.footprint
        Gr, Gc = fp.n_row_groups, fp.n_col_groups
        rows, cols = j.row_of[0], j.col_of[0]  # (R,), (S,): footprint group of each joint group
        real = (rows < Gr)[:, None] & (cols < Gc)[None, :]  # (R, S): blocks the constraint covers
        self.r_idx, self.s_idx = torch.nonzero(real, as_tuple=True)
        self.g_idx, self.h_idx = rows[self.r_idx], cols[self.s_idx]
        padded = torch.nn.functional.pad(pb.mass, (0, 1, 0, 1))  # (B', Gr + 1, Gc + 1)
        self.mass = padded[:, rows][:, :, cols]  # (B', R, S); 0 outside the constraint
        self.real = real.to(dtype)
        self.fp = fp
        B, n, m = plan.batch, plan.n, plan.m
        R = j.n_row
        self.row_take = j.row_codes.expand(B, n)[:, None, :]  # (B, 1, n): gather index of r(i)
        self.col_take = j.col_index(B, m, R)  # (B, R, m): index of c(j) along the S axis
        self.row_onehot_t = j.row_onehot.transpose(1, 2)  # (B', R, n); broadcast in a product
        self.col_onehot = j.col_onehot.expand(B, -1, -1).contiguous()  # (B, m, S), for bmm

        # labels shared by the batch: rows and columns sorted by joint group (plan._kp), every
        # row group a band of contiguous rows (_sorted_sweeps: 2 R products on the bands per sweep,
        # each entry read once per pass; MKL's products with a few right-hand sides cost as much
        # as that many passes)
        self.sorted = j.sorted
        if self.sorted:
            self.j = j
            self.a_p = self.a.index_select(1, j.row_perm)
            self.b_p = self.b.index_select(1, j.col_perm)
            # (S, m) one-hot of the sorted columns' joint groups (w[r, c(j)] and the block sums
            # as products)
            self.col_onehot_pt = torch.nn.functional.one_hot(j.col_sorted_codes, len(j.col_bounds)).to(dtype).t()
            self.single = B == 1

    def _sorted_sweeps(self, Kp, count, du, dv, w, c_r, c_c, om, om3, keep, keep3, dead):
        """The sweeps in sorted order (``Kp``: ``(B, n, m)``, rows and columns by joint group, so
        that each row group is a band of contiguous rows). A sweep is ``2 R`` products on the
        bands (each entry of ``Ktil`` read twice, as in a plain sweep):

        * rows: band ``r`` times ``dv * w[r, c(j)]``;
        * columns: ``Y[r] = band_r^T du_r``; the column sums ``sum_r w[r, c(j)] Y[r, j]``, and
          with the new ``dv`` the block sums ``T[r, s] = sum_{c(j) = s} Y[r, j] dv_j``.

        ``w[r, c(j)]`` and the block sums are products with the ``(S, m)`` one-hot of the columns'
        groups (an index_select along the columns costs ~10x more on the CPU). One problem runs on
        ``(n,)`` vectors (mat-vec products, no batch dimension). Returns ``((du, dv, w, T), (du,
        dv) before the last sweep)`` in natural order."""
        j = self.j
        bounds, sizes = j.row_bounds, [r1 - r0 for r0, r1 in j.row_bounds]
        du = du.index_select(1, j.row_perm)
        dv = dv.index_select(1, j.col_perm)
        c_r = None if c_r is None else c_r.index_select(1, j.row_perm)
        c_c = None if c_c is None else c_c.index_select(1, j.col_perm)
        onehot_t, a, b, mass, real = self.col_onehot_pt, self.a_p, self.b_p, self.mass, self.real
        if self.single:  # drop the batch dimension; (1,)-shaped factors broadcast
            K2 = Kp[0]
            bands = [(K2[r0:r1], K2[r0:r1].t()) for r0, r1 in bounds]
            du, dv, w, a, b, mass = du[0], dv[0], w[0], a[0], b[0], mass[0]
            c_r, c_c = (None if c is None else c[0] for c in (c_r, c_c))
            om, keep = (None if x is None else x[0] for x in (om, keep))
            om3, keep3 = (None if x is None else x[0] for x in (om3, keep3))
            prev = (du, dv)
            T = w
            for _ in range(count):
                prev = (du, dv)
                wc = torch.mm(w, onehot_t)  # (R, m): w[r, c(j)], sorted columns
                rows = torch.cat([torch.mv(band, v) for (band, _), v in zip(bands, (dv * wc).unbind(0))])
                du = _step(du, rows, a, self.tau_r, c_r, om, keep, dead)
                Y = torch.stack([torch.mv(band_t, u) for (_, band_t), u in zip(bands, du.split(sizes))])  # (R, m)
                dv = _step(dv, (Y * wc).sum(0), b, self.tau_c, c_c, om, keep, dead)
                T = torch.mm(Y * dv, onehot_t.t()) * real  # (R, S)
                w = _step(w, T, mass, 1.0, None, om3, keep3, True)
            du, dv, w, T, prev = du[None], dv[None], w[None], T[None], (prev[0][None], prev[1][None])
        else:
            bands = [Kp[:, r0:r1] for r0, r1 in bounds]
            prev = (du, dv)
            T = w
            for _ in range(count):
                prev = (du, dv)
                wc = torch.matmul(w, onehot_t)  # (B, R, m)
                V = dv[:, None, :] * wc
                rows = torch.cat([j._times(band, V[:, r]) for r, band in enumerate(bands)], 1)
                du = _step(du, rows, a, self.tau_r, c_r, om, keep, dead)
                Y = torch.stack([j._times_t(band, u) for band, u in zip(bands, du.split(sizes, 1))], 1)  # (B, R, m)
                dv = _step(dv, (Y * wc).sum(1), b, self.tau_c, c_c, om, keep, dead)
                T = torch.matmul(Y * dv[:, None, :], onehot_t.t()) * real  # (B, R, S)
                w = _step(w, T, mass, 1.0, None, om3, keep3, True)
        back = lambda u, v: (u.index_select(1, j.row_inv), v.index_select(1, j.col_inv))  # noqa: E731
        return (*back(du, dv), w, T), back(*prev)

    @classmethod
    def build(cls, plan, projectors: list[Projector], ids: list[int], translation: bool) -> Optional["FusedBlocks"]:
        if not isinstance(plan, DenseLogPlan) or plan.reducer.sharded or plan._joint is None:
            return None
        if len(ids) != 3 or len(plan._group_ids) != 1:
            return None
        pr, pc, pb = (projectors[k] for k in ids)
        if pr.footprint is not ROW or pc.footprint is not COL or not isinstance(pb.footprint, Groups):
            return None
        if plan._row_ids != [ids[0]] or plan._col_ids != [ids[1]] or plan._group_ids != [ids[2]]:
            return None
        if not (_marginal_ok(pr) and _marginal_ok(pc)):
            return None
        if type(pb) is not BlockMassProjector or pb.relation != "==":
            return None
        if translation and "KL" in (pr.kind, pc.kind):
            return None
        return cls(plan, ids, pr, pc, pb)

    def sweeps(self, plan: DenseLogPlan, count: int, active: Optional[torch.Tensor],
               omega: Optional[torch.Tensor]) -> Callable[[], torch.Tensor]:
        """As :meth:`FusedPair.sweeps`, with the block scalings."""
        eps = plan.eps
        K = plan._buf
        E0 = plan._E0
        du, dv, c_r, c_c, omega = self._start(plan, omega)
        w = torch.exp(plan._log_w())
        om = None if omega is None else omega[:, None]
        om3 = None if omega is None else omega[:, None, None]
        keep = None if active is None else active[:, None]
        keep3 = None if active is None else active[:, None, None]
        dead = self.dead
        if self.sorted and plan._kp is not None:
            (du, dv, w, T), prev = self._sorted_sweeps(plan._kp, count, du, dv, w, c_r, c_c, om, om3, keep, keep3, dead)
        else:
            Kt = K.transpose(1, 2)
            prev = (du, dv)
            for _ in range(count):
                prev = (du, dv)
                wc = torch.gather(w, 2, self.col_take)  # (B, R, m): w[r, c(j)]
                rows = torch.bmm(dv[:, None, :] * wc, Kt).gather(1, self.row_take)[:, 0]  # (B, n)
                du = _step(du, rows, self.a, self.tau_r, c_r, om, keep, dead)
                Y = torch.bmm(du[:, None, :] * self.row_onehot_t, K)  # (B, R, m)
                dv = _step(dv, (Y * wc).sum(1), self.b, self.tau_c, c_c, om, keep, dead)
                T = torch.bmm(Y * dv[:, None, :], self.col_onehot) * self.real  # (B, R, S)
                w = _step(w, T, self.mass, 1.0, None, om3, keep3, True)
        E = E0 + eps * torch.log(w)
        H = plan.duals[self.kb].clone()
        H[:, self.g_idx, self.h_idx] = E[:, self.r_idx, self.s_idx]
        plan.duals[self.kb] = H
        plan.set_scalings(du, dv)
        plan._set_base()
        # the block sums at the final scalings, for the check (row and column sums are recomputed)
        log_blocks = torch.full((plan.batch, self.fp.n_row_groups, self.fp.n_col_groups), -math.inf,
                                dtype=K.dtype, device=K.device)
        log_blocks[:, self.g_idx, self.h_idx] = torch.log(w * T)[:, self.r_idx, self.s_idx]
        plan._log_groups[id(self.fp)] = log_blocks
        return _moved(du, dv, *prev)
