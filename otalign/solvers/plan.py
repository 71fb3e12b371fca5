"""The log-domain representation of the current plan, and its marginals.

    log P_ij = Kbase_ij + alpha_i + beta_j,
    Kbase    = -C / eps  (-inf on forbidden pairs)  +  E / eps,
    alpha    = F / eps + log r_a,     beta = G / eps + log r_b,

where ``F`` (``(B, n)``) sums the duals with a ROW or SCALAR footprint, ``G`` (``(B, m)``) the COL
duals, ``E`` (``(B, n, m)``, only when block duals exist) the expanded block duals, and
``r_a (x) r_b`` is the reference measure ``R`` of the entropy (``a (x) b`` for ``entropy="kl"``,
``1`` for ``"shannon"``; ``-inf`` marks rows/columns forced to zero either way).

:class:`LogPlan` keeps these aggregates in sync with the duals and caches the marginals: when a
ROW dual moves by ``delta`` the row marginal moves by exactly ``delta / eps`` in log space (every
entry of the row is rescaled by the same factor), so the next query costs nothing; only the
marginals the move actually disturbs are recomputed with a log-sum-exp over ``(B, n, m)``.

Every log-domain reduction works inside one reusable ``(B, n, m)`` buffer (no ``n x m``
temporary is allocated per iteration). When gradients are unrolled through the iterations
(``inplace=False``) the reduction is a custom autograd function that saves only its inputs and
output; ``inplace=True`` (no autograd) additionally allows the kernel domain below.

**Stabilised kernel domain** (``inplace`` only, no block duals). A log-domain reduction computes
one exp per entry; the kernel domain needs none. :meth:`absorb` stores
``Ktil = exp(Kbase + alpha0_i + beta0_j)`` (the plan at the absorbed potentials ``alpha0``,
``beta0``), after which ``P = diag(du) Ktil diag(dv)`` with ``du = exp(alpha - alpha0)``,
``dv = exp(beta - beta0)``, and every marginal is a batched matrix-vector product
(``P 1 = du * (Ktil dv)``): bandwidth-bound, one read of ``Ktil``. Entries of ``Ktil`` below the
smallest normal float are flushed to zero; while the scalings stay within ``exp(+-drift)`` of 1,
with ``drift <= SAFE_DRIFT``, what those entries would contribute is below
``tiny * exp(2 * drift)``, i.e. below the dtype's resolution. The engine re-absorbs before every
convergence check once the drift passes ``SAFE_DRIFT / 2`` (so the stopping test always reads an
exact kernel) and falls back to log-domain sweeps when an interval could drift past
``2 * SAFE_DRIFT`` or overflows, so the kernel domain is as stable as the log domain.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional

import torch

from ..geometry.base import Geometry, PairTerms
from .distributed import IDENTITY, Reducer
from .footprint import COL, ROW, SCALAR, Footprint, Groups
from .problem import safe_logsumexp

__all__ = ["LogPlan", "DenseLogPlan", "make_log_plan", "SAFE_DRIFT"]

#: largest |log du|, |log dv| (log units) allowed in the kernel domain, by compute dtype: entries of
#: Ktil flushed to zero then weigh at most tiny * exp(2 * drift) (1e-12 of the mass in float32)
SAFE_DRIFT = {torch.float32: 30.0, torch.float64: 300.0}

_NEG_INF = -float("inf")


def exp_floor(dtype: torch.dtype) -> float:
    """Smallest argument whose exp is a normal float. Reductions clamp shifted logits there: exp
    of smaller inputs (denormal results, or -inf) runs a scalar slow path 3-30x slower on CPU,
    while what they add to a sum whose largest term is 1 is below the dtype's resolution."""
    return math.log(torch.finfo(dtype).tiny) + 1.0


def _lse_inplace(base: torch.Tensor, vec: torch.Tensor, dim: int, buf: torch.Tensor) -> torch.Tensor:
    """``log sum exp(base + vec)`` along ``dim``, computed inside ``buf`` (no allocation of n x m)."""
    torch.add(base, vec, out=buf)
    shift = torch.amax(buf, dim=dim, keepdim=True)
    empty = shift == _NEG_INF
    shift = torch.where(empty, torch.zeros_like(shift), shift)
    buf.sub_(shift).clamp_(min=exp_floor(buf.dtype)).exp_()
    out = buf.sum(dim).log_().add_(shift.squeeze(dim))
    return out.masked_fill_(empty.squeeze(dim), _NEG_INF)


class _BroadcastLSE(torch.autograd.Function):
    """``log sum exp(base + vec)`` along ``dim`` with a memory-light backward.

    Autograd through the iterations would otherwise keep several ``(B, n, m)`` temporaries per
    reduction. This function saves only its inputs (``base`` is the same tensor at every
    iteration, so it is stored once) and its ``(B, n)`` output, and recomputes the softmax in the
    backward pass: unrolled memory grows by O(n + m) per iteration instead of O(n m).
    """

    @staticmethod
    def forward(ctx, base: torch.Tensor, vec: torch.Tensor, dim: int, buf: torch.Tensor) -> torch.Tensor:
        out = _lse_inplace(base, vec, dim, buf)  # buf: scratch space, not saved
        ctx.save_for_backward(base, vec, out)
        ctx.dim = dim
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        base, vec, out = ctx.saved_tensors
        dim = ctx.dim
        safe = torch.where(torch.isfinite(out), out, torch.zeros_like(out)).unsqueeze(dim)
        weights = torch.exp(base + vec - safe)  # softmax along dim; 0 on -inf entries
        weights.mul_(torch.where(torch.isfinite(out), grad, torch.zeros_like(grad)).unsqueeze(dim))
        grad_base = weights.sum_to_size(base.shape) if ctx.needs_input_grad[0] else None
        grad_vec = weights.sum_to_size(vec.shape) if ctx.needs_input_grad[1] else None
        return grad_base, grad_vec, None, None


def _lse(base: torch.Tensor, vec: torch.Tensor, dim: int, buf: torch.Tensor) -> torch.Tensor:
    """Differentiable ``log sum exp(base + vec)`` along ``dim`` (``buf``: reusable scratch space of
    the broadcast shape); entirely ``-inf`` slices give ``-inf`` with a zero (not NaN) gradient."""
    if not (base.requires_grad or vec.requires_grad):
        return _lse_inplace(base, vec, dim, buf)
    return _BroadcastLSE.apply(base, vec, dim, buf)


class LogPlan:
    """Current plan of a batch of problems, held as its duals; reductions go through a geometry.

    Subclasses: :class:`DenseLogPlan` (a dense cost: buffered reductions and the kernel domain).
    This base class reduces tile by tile (:mod:`otalign.geometry.streaming`): nothing of size
    ``n x m`` is held, forward or backward.

    Args:
        geometry: the costs (:class:`~otalign.geometry.Geometry`).
        epsilon: entropic strength.
        log_ra, log_rb: ``(B, n)``, ``(B, m)`` log reference weights (``-inf`` forces zero).
        terms: the static pair terms (forbidden pairs: mask or labels).
        footprints: one per constraint, None for constraints without a dual.
        duals: the initial duals, aligned with ``footprints`` (None where no dual).
        inplace: no autograd through the iterations (allows the kernel domain).

    ``reducer`` (:mod:`otalign.solvers.distributed`) combines the reductions over rows across the
    ranks of a row-sharded solve (column, total and block marginals, the reference mass); the
    identity otherwise.
    """

    reducer: Reducer = IDENTITY

    def __init__(
        self,
        geometry: Geometry,
        epsilon: float,
        log_ra: torch.Tensor,
        log_rb: torch.Tensor,
        terms: PairTerms,
        footprints: list[Optional[Footprint]],
        duals: list[Optional[torch.Tensor]],
        inplace: bool,
    ) -> None:
        self.geometry = geometry
        self.log_ra = log_ra
        self.log_rb = log_rb
        self.static_terms = terms
        self.footprints = footprints
        self.duals = list(duals)
        self.inplace = inplace
        self.batch, self.n = log_ra.shape
        self.m = log_rb.shape[-1]
        self.mode = "log"
        self._row_ids = [k for k, fp in enumerate(footprints) if fp is ROW or fp is SCALAR]
        self._col_ids = [k for k, fp in enumerate(footprints) if fp is COL]
        self._group_ids = [k for k, fp in enumerate(footprints) if isinstance(fp, Groups)]
        self.eps = float(epsilon)
        self._set_base()
        self._aggregate_rows()
        self._aggregate_cols()

    # -- aggregates -------------------------------------------------------------------------
    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.log_ra.dtype, device=self.log_ra.device)

    def _aggregate_rows(self) -> None:
        parts = [self.duals[k][:, None] if self.footprints[k] is SCALAR else self.duals[k] for k in self._row_ids]
        if len(parts) == 1 and parts[0].shape == (self.batch, self.n):
            F = parts[0]  # the common case: one row dual is the row potential
        else:
            F = self._zeros(self.batch, self.n)
            for part in parts:
                F = F + part
        self.F = F
        self._alpha: Optional[torch.Tensor] = None

    def _aggregate_cols(self) -> None:
        parts = [self.duals[k] for k in self._col_ids]
        G = parts[0] if len(parts) == 1 else sum(parts, self._zeros(self.batch, self.m))
        self.G = G
        self._beta: Optional[torch.Tensor] = None

    @staticmethod
    def _cacheable(*inputs: torch.Tensor) -> bool:
        """A value computed under ``no_grad`` from tensors that require grad must not be reused
        where a graph is expected."""
        return torch.is_grad_enabled() or not any(t.requires_grad for t in inputs)

    @property
    def alpha(self) -> torch.Tensor:
        """``F / eps + log r_a`` (computed when first needed after a change)."""
        if self._alpha is not None:
            return self._alpha
        alpha = self.F / self.eps + self.log_ra
        if self._cacheable(self.F, self.log_ra):
            self._alpha = alpha
        return alpha

    @property
    def beta(self) -> torch.Tensor:
        """``G / eps + log r_b``."""
        if self._beta is not None:
            return self._beta
        beta = self.G / self.eps + self.log_rb
        if self._cacheable(self.G, self.log_rb):
            self._beta = beta
        return beta

    def _set_base(self) -> None:
        """Epsilon or a block dual changed: forget what depends on them."""
        self._clear_caches()

    def _clear_caches(self) -> None:
        self._log_row: Optional[torch.Tensor] = None
        self._log_col: Optional[torch.Tensor] = None
        self._log_total: Optional[torch.Tensor] = None
        self._log_groups: dict[int, torch.Tensor] = {}

    def set_epsilon(self, epsilon: float) -> None:
        """Change eps (annealing); the duals (in cost units) are kept. Leaves the kernel domain."""
        self.eps = float(epsilon)
        self.leave_kernel()
        self._set_base()
        self._aggregate_rows()
        self._aggregate_cols()

    # -- kernel domain (dense plans only) -----------------------------------------------------
    @property
    def kernel_capable(self) -> bool:
        return False

    def leave_kernel(self, keep: bool = False) -> None:
        """Nothing to leave: a streaming plan always reduces in the log domain."""

    # -- reductions ---------------------------------------------------------------------------
    def pair_terms(self) -> PairTerms:
        """The static pair terms with the current block duals."""
        blocks = [(self.footprints[k], self.duals[k]) for k in self._group_ids]
        return PairTerms(self.static_terms.mask, self.static_terms.forbid_labels, blocks)

    def _row_lse(self) -> torch.Tensor:
        return self.geometry.reductions.lse(self.geometry, self.eps, self.alpha, self.beta, self.pair_terms(), -1)

    def _col_lse(self) -> torch.Tensor:
        return self.geometry.reductions.lse(self.geometry, self.eps, self.alpha, self.beta, self.pair_terms(), -2)

    def _group_lse(self, footprint: Groups) -> torch.Tensor:
        return self.geometry.reductions.block_lse(self.geometry, self.eps, self.alpha, self.beta, self.pair_terms(),
                                                  footprint)

    def log_plan(self) -> torch.Tensor:
        """``log P``, shape ``(B, n, m)`` (``-inf`` on forbidden pairs and padded rows/columns)."""
        return self.geometry.reductions.log_plan(self.geometry, self.eps, self.alpha, self.beta, self.pair_terms())

    def materialize_plan(self) -> torch.Tensor:
        """The dense plan ``(B, n, m)``."""
        return torch.exp(self.log_plan())

    def transport_cost(self, plan: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B,)`` ``<C, P>`` (streamed; ``plan`` is ignored here)."""
        return self.geometry.reductions.weighted_cost(self.geometry, self.eps, self.alpha, self.beta, self.pair_terms())

    def apply(self, v: torch.Tensor, transpose: bool, plan: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``P v`` (``v``: ``(B, m, k)``) or ``P^T v`` (``v``: ``(B, n, k)``), streamed."""
        norm = self.log_marginal(COL if transpose else ROW)
        return self.geometry.reductions.apply(self.geometry, self.eps, self.alpha, self.beta, self.pair_terms(), v,
                                              transpose, norm)

    def reference_mass(self) -> torch.Tensor:
        """``(B,)`` total mass of the reference measure ``R = r_a (x) r_b`` on the allowed pairs."""
        ra, rb = torch.exp(self.log_ra), torch.exp(self.log_rb)
        mask = self.static_terms.mask
        if mask is not None:
            return self.reducer.sum(torch.einsum("bi,bij,bj->b", ra, mask.expand(self.batch, -1, -1).to(ra.dtype), rb))
        total = self.reducer.sum(ra.sum(-1)) * rb.sum(-1)
        labels = self.static_terms.forbid_labels
        # pairs forbidden by any of the label constraints, by inclusion-exclusion over them
        for size in range(1, len(labels) + 1):
            for chosen in itertools.combinations(labels, size):
                total = total - (-1) ** (size + 1) * _same_label_mass(ra, rb, chosen)
        return total

    def log_marginal(self, footprint: Footprint) -> torch.Tensor:
        """Log of the plan's marginal that a dual with this footprint controls."""
        if footprint is ROW:
            if self._log_row is None:
                self._log_row = self._row_lse()
            return self._log_row
        if footprint is COL:
            if self._log_col is None:
                self._log_col = self.reducer.lse(self._col_lse())
            return self._log_col
        if footprint is SCALAR:
            if self._log_total is None:
                if self._log_row is None and self._log_col is not None:
                    self._log_total = safe_logsumexp(self._log_col, -1)  # already over every rank
                else:
                    self._log_total = self.reducer.lse(safe_logsumexp(self.log_marginal(ROW), -1))
            return self._log_total
        if isinstance(footprint, Groups):
            key = id(footprint)
            if key not in self._log_groups:
                self._log_groups[key] = self.reducer.lse(self._group_lse(footprint))
            return self._log_groups[key]
        raise TypeError(f"unknown footprint {footprint!r}")

    # -- updates ----------------------------------------------------------------------------
    def translate(self, row: int, col: int, t: torch.Tensor) -> None:
        """``duals[row] += t``, ``duals[col] -= t`` (``t``: ``(B,)``) on the live rows and columns
        (padding keeps its duals): the plan, its marginals and the kernel (whose absorbed
        potentials move with them) are unchanged."""
        zero = torch.zeros((), dtype=t.dtype, device=t.device)
        up = torch.where(torch.isfinite(self.log_ra), t[:, None], zero)
        down = torch.where(torch.isfinite(self.log_rb), t[:, None], zero)
        self.duals[row] = self.duals[row] + up
        self.duals[col] = self.duals[col] - down
        self._aggregate_rows()
        self._aggregate_cols()
        if self.mode == "kernel":
            self._F0 = self._F0 + up
            self._G0 = self._G0 - down

    def shift_gauge(self, row: int, col: int, f: torch.Tensor, g: torch.Tensor) -> None:
        """Replace ``duals[row]``, ``duals[col]`` by ``f = duals[row] + c``, ``g = duals[col] - c``
        (``c``: ``(B, 1)``): the plan and its marginals are unchanged, so are the cached ones."""
        self.duals[row], self.duals[col] = f, g
        self._aggregate_rows()
        self._aggregate_cols()

    def set_dual(self, index: int, value: torch.Tensor) -> None:
        """Replace dual ``index`` and update the aggregates and cached marginals exactly."""
        fp = self.footprints[index]
        shift = (value - self.duals[index]) / self.eps
        self.duals[index] = value
        if fp is ROW:
            self._aggregate_rows()
            row = None if self._log_row is None else self._log_row + shift
            self._clear_caches()
            self._log_row = row
        elif fp is COL:
            self._aggregate_cols()
            col = None if self._log_col is None else self._log_col + shift
            self._clear_caches()
            self._log_col = col
        elif fp is SCALAR:
            self._aggregate_rows()
            if self._log_row is not None:
                self._log_row = self._log_row + shift[:, None]
            if self._log_col is not None:
                self._log_col = self._log_col + shift[:, None]
            if self._log_total is not None:
                self._log_total = self._log_total + shift
            self._log_groups = {k: v + shift[:, None, None] for k, v in self._log_groups.items()}
        elif isinstance(fp, Groups):
            own = self._log_groups.get(id(fp))
            self._set_base()  # the block duals enter the kernel
            if own is not None:
                self._log_groups[id(fp)] = own + shift
        else:
            raise TypeError(f"constraint {index} has no dual")


class DenseLogPlan(LogPlan):
    """A plan on a dense cost ``(B', n, m)`` (``B'`` in ``{1, B}``): log-sum-exps inside one
    reusable ``(B, n, m)`` buffer, and the stabilised kernel domain (module docstring). Forbidden
    pairs are held as a mask (labels are turned into one)."""

    def __init__(self, geometry: Geometry, epsilon: float, log_ra: torch.Tensor, log_rb: torch.Tensor,
                 terms: PairTerms, footprints: list[Optional[Footprint]], duals: list[Optional[torch.Tensor]],
                 inplace: bool) -> None:
        self.cost = geometry.dense()
        mask = terms.mask
        for row_labels, col_labels in terms.forbid_labels:  # labels become a mask on a dense cost
            same = (row_labels[:, :, None] == col_labels[:, None, :]) & (row_labels[:, :, None] >= 0)
            mask = ~same if mask is None else mask & ~same
        self.allowed = mask
        self._buf: Optional[torch.Tensor] = None
        self._final: Optional[tuple] = None  # the kernel kept at the end of a solve (take_plan)
        self._F0: Optional[torch.Tensor] = None  # potentials absorbed into the kernel
        self._scalings: Optional[tuple] = None  # (F, G, F0, G0, eps, log du, log dv, du, dv): set_scalings
        self._fresh: Optional[tuple] = None  # (F, G) at the last absorption
        self._G0: Optional[torch.Tensor] = None
        self._E0: Optional[torch.Tensor] = None  # joint block duals absorbed into the kernel
        self._kp: Optional[torch.Tensor] = None  # Ktil with rows and columns sorted by joint group
        super().__init__(geometry, epsilon, log_ra, log_rb, PairTerms(mask=mask), footprints, duals, inplace)
        groups = [footprints[k] for k in self._group_ids]
        self._joint = _JointBlocks.build(groups, self.cost.dtype) if groups and inplace else None

    def _set_base(self) -> None:
        """Forget ``Kbase``; it is rebuilt when first needed (eps or a block dual changed)."""
        self._kbase: Optional[torch.Tensor] = None
        self._clear_caches()

    @property
    def kbase(self) -> torch.Tensor:
        """``Kbase = -C/eps (-inf on forbidden pairs) + E/eps``, ``(B', n, m)``, built lazily: a
        solve that runs in the kernel domain from the start never needs it."""
        if self._kbase is not None:
            return self._kbase
        klog = self.cost / (-self.eps)
        if self.allowed is not None:
            klog = klog.masked_fill(~self.allowed, _NEG_INF)
        groups = [self.duals[k] for k in self._group_ids]
        if groups:
            E = sum(self.footprints[k].expand(self.duals[k]) for k in self._group_ids)
            klog = klog + E / self.eps
        if self._cacheable(self.cost, *groups):
            self._kbase = klog
        return klog

    @property
    def plain(self) -> bool:
        """``Kbase`` is just ``-C / eps`` (no forbidden pairs, no block duals)."""
        return self.allowed is None and not self._group_ids

    def log_plan_into(self, out: torch.Tensor) -> torch.Tensor:
        """Write ``log P`` into ``out`` (``(B, n, m)``), fusing ``-C / eps`` when ``Kbase`` is plain."""
        if self.plain and self._kbase is None:
            torch.add(self.alpha[:, :, None], self.cost, alpha=-1.0 / self.eps, out=out)
        else:
            torch.add(self.kbase, self.alpha[:, :, None], out=out)
        return out.add_(self.beta[:, None, :])

    # -- kernel domain ----------------------------------------------------------------------
    @property
    def kernel_capable(self) -> bool:
        """Kernel-domain reductions apply: no autograd, and block duals (if any) whose joint
        groups are few enough for the block-scaled products (:class:`_JointBlocks`)."""
        return self.inplace and (not self._group_ids or self._joint is not None)

    def absorb(self) -> None:
        """Enter (or refresh) the kernel domain: ``Ktil = exp(log P)`` at the current duals."""
        if not self.kernel_capable:
            raise RuntimeError("the kernel domain needs inplace=True and few joint block groups")
        self._log_plan_into_buffer()
        self._exponentiate_buffer()

    def _log_plan_into_buffer(self) -> torch.Tensor:
        return self.log_plan_into(self._buffer())

    def _exponentiate_buffer(self) -> None:
        buf = self._buf
        floor = exp_floor(buf.dtype)
        buf.clamp_(min=floor).exp_()
        # flush what would be denormal (slow in the mat-vec products too): one in-place pass
        torch.nn.functional.threshold_(buf, math.exp(floor) * (1 + 1e-3), 0.0)
        # the reference weights are constant, so the scalings are du = exp((F - F0) / eps),
        # dv = exp((G - G0) / eps): finite even on padded rows, whose Ktil rows are 0
        self._F0, self._G0 = self.F.detach(), self.G.detach()
        if self._joint is not None:
            self._E0 = self._joint.duals(self.duals, self._group_ids)
            if self._joint.sorted:  # blocks as contiguous sub-matrices (one copy per absorption)
                self._kp = self._joint.permute(buf)
        self.mode = "kernel"
        self._clear_caches()  # recompute the marginals from the fresh kernel
        self._fresh = (self.F, self.G)  # while these are the potentials, du = dv = 1

    def absorb_if_safe_at_start(self, safe: float) -> bool:
        """Enter the kernel domain before any movement is measured, if the largest entry of
        ``log P`` in every live row and column is at least ``safe`` above the float floor (nothing
        significant underflows in ``Ktil``; the engine's safety net covers the rest)."""
        if not self.kernel_capable:
            return False
        buf = self._log_plan_into_buffer()
        rows, cols = buf.amax(-1), self.reducer.amax(buf.amax(-2))
        floor = exp_floor(buf.dtype) + safe
        fine = ((rows > floor) | (rows == _NEG_INF)).all() & ((cols > floor) | (cols == _NEG_INF)).all()
        if not bool(self.reducer.all(fine)):
            return False
        self._exponentiate_buffer()
        return True

    def leave_kernel(self, keep: bool = False) -> None:
        """Back to log-domain reductions (the buffer is reused for them). ``keep`` (the end of a
        solve): hand the kernel over to :meth:`take_plan` instead; reductions needed later get a
        fresh scratch buffer."""
        if keep and self.mode == "kernel":
            self._final = (self._buf, self._F0, self._G0, self.eps)
            self._buf = None
        self.mode = "log"
        self._F0 = self._G0 = self._E0 = self._kp = None

    def take_plan(self) -> Optional[torch.Tensor]:
        """The plan ``P = diag(du) Ktil diag(dv)``, built in place in the kernel kept by
        ``leave_kernel(keep=True)``: two scaling passes (none when the kernel is exact) instead of
        sums and an exp per entry. None when no kernel was kept, or when the scalings moved so far
        since it was formed that entries flushed to zero there could matter (then the caller
        exponentiates ``log P``). Hands the buffer over, so it works once."""
        final, self._final = self._final, None
        if final is None or self._group_ids:
            return None
        buf, F0, G0, eps = final
        if eps != self.eps:
            return None
        log_du, log_dv = (self.F - F0) / eps, (self.G - G0) / eps
        up_u, up_v = log_du.amax(-1, keepdim=True), log_dv.amax(-1, keepdim=True)
        # entries of Ktil flushed to zero (below exp(floor)) are amplified by at most
        # max_i du_i * max_j dv_j: no more than the iterations themselves allow (2 SAFE_DRIFT)
        amplification = (up_u + up_v).squeeze(-1)
        if not bool((amplification <= 2 * SAFE_DRIFT.get(buf.dtype, 30.0)).all()):
            return None  # (also when a potential is not finite)
        # only du_i dv_j matters: split the amplification evenly between the two scalings
        # (centring shifts f and g oppositely by an arbitrary constant)
        shift = 0.5 * (up_u - up_v)
        buf.mul_((log_du - shift).exp_()[:, :, None]).mul_((log_dv + shift).exp_()[:, None, :])
        return buf

    def _log_du(self) -> torch.Tensor:
        known = self.known_scalings()
        return (self.F - self._F0) / self.eps if known is None else known[0]

    def _log_dv(self) -> torch.Tensor:
        known = self.known_scalings()
        return (self.G - self._G0) / self.eps if known is None else known[1]

    def set_scalings(self, du: torch.Tensor, dv: torch.Tensor) -> None:
        """Set the row and column duals from the kernel domain's scalings ``du = exp((F - F0) /
        eps)``, ``dv`` (one row and one column dual: the fused sweeps), and keep the scalings and
        their logs (:meth:`known_scalings`) until the duals or the kernel change."""
        (kr,), (kc,) = self._row_ids, self._col_ids
        log_du, log_dv = torch.log(du), torch.log(dv)
        self.duals[kr] = self._F0 + self.eps * log_du
        self.duals[kc] = self._G0 + self.eps * log_dv
        self._aggregate_rows()
        self._aggregate_cols()
        self._scalings = (self.F, self.G, self._F0, self._G0, self.eps, log_du, log_dv, du, dv)

    def known_scalings(self) -> Optional[tuple]:
        """``(log du, log dv, du, dv)`` as :meth:`set_scalings` left them, or None when the duals,
        the kernel or epsilon changed since (duals are replaced, never mutated: the same objects
        mean the same values)."""
        known = self._scalings
        if known is None or known[4] != self.eps or not all(
                a is b for a, b in zip(known, (self.F, self.G, self._F0, self._G0))):
            return None
        return known[5:]

    def _log_w(self) -> Optional[torch.Tensor]:
        """``(B, R, S)`` log block scalings ``(E - E0) / eps`` of the joint groups (None without
        block duals)."""
        if self._joint is None or self._E0 is None:
            return None
        # duals are replaced, never mutated: the same objects (held here, so no id is reused) mean
        # the same block scalings
        key = (self._E0, self.eps, *(self.duals[k] for k in self._group_ids))
        cached = getattr(self, "_log_w_key", None)
        if cached is not None and len(cached) == len(key) and all(a is b for a, b in zip(cached, key)):
            return self._log_w_cached
        log_w = (self._joint.duals(self.duals, self._group_ids) - self._E0) / self.eps
        # a block whose dual was -inf at absorption has no mass in Ktil: its scaling is moot
        log_w = torch.where(torch.isnan(log_w), torch.zeros_like(log_w), log_w)
        self._log_w_key, self._log_w_cached = key, log_w
        return log_w

    def kernel_drift(self) -> torch.Tensor:
        """``(B,)`` how far the scalings moved since :meth:`absorb`: the largest |log du|,
        |log dv|, plus half the largest |log w| of the block scalings (so that ``du dv w``, the
        factor entries flushed to zero can be amplified by, stays within ``exp(2 drift)``)."""
        drift = torch.maximum(self._log_du().abs().amax(-1), self._log_dv().abs().amax(-1))
        log_w = self._log_w()
        if log_w is not None:
            finite = torch.where(torch.isfinite(self._E0), log_w.abs(), torch.zeros_like(log_w))
            drift = drift + 0.5 * finite.flatten(1).amax(-1)
        return drift

    def _at_absorption(self) -> bool:
        """Whether the potentials are those absorbed into the kernel (no block duals): then
        ``du = dv = 1`` and ``P = Ktil``."""
        fresh = self._fresh
        return self._joint is None and fresh is not None and fresh[0] is self.F and fresh[1] is self.G

    def _kernel_row(self) -> torch.Tensor:
        if self._at_absorption():
            return torch.log(self._buf.sum(-1))
        log_du = self._log_du()
        dv = torch.exp(self._log_dv())
        log_w = self._log_w()
        if log_w is not None and self._kp is not None:
            return self._joint.sorted_rows(self._kp, log_du, self._log_dv(), log_w)
        if log_w is not None:  # P 1 = du * sum_s w[r(i), s] (Ktil (dv * [c = s]))_i
            j = self._joint
            # (V^T Ktil^T): MKL's batched gemm is several times slower with Ktil on the left
            per_group = torch.bmm((dv[:, :, None] * j.col_onehot).transpose(1, 2), self._buf.transpose(1, 2))
            w = torch.exp(log_w).transpose(1, 2).gather(2, j.row_index_t(self.batch, self.n, j.n_col))  # (B, S, n)
            return torch.log((per_group * w).sum(1)).add_(log_du)
        # (dv^T Ktil^T) rather than (Ktil dv): the same product, but MKL's batched gemm is 5-8x
        # slower on CPU for a column right-hand side (measured, B = 16, n = 512)
        return torch.log(torch.bmm(dv[:, None, :], self._buf.transpose(1, 2))[:, 0]).add_(log_du)

    def _kernel_col(self) -> torch.Tensor:
        if self._at_absorption():
            return torch.log(self._buf.sum(-2))
        log_dv = self._log_dv()
        du = torch.exp(self._log_du())
        log_w = self._log_w()
        if log_w is not None and self._kp is not None:
            return self._joint.sorted_cols(self._kp, self._log_du(), log_dv, log_w)
        if log_w is not None:  # P^T 1 = dv * sum_r w[r, c(j)] ((du * [r(i) = r])^T Ktil)_j
            j = self._joint
            per_group = torch.bmm((du[:, :, None] * j.row_onehot).transpose(1, 2), self._buf)  # (B, R, m)
            w = torch.exp(log_w).gather(2, j.col_index(self.batch, self.m, j.n_row))  # (B, R, m)
            return torch.log((per_group * w).sum(1)).add_(log_dv)
        return torch.log(torch.bmm(du[:, None, :], self._buf)[:, 0]).add_(log_dv)

    def _kernel_blocks(self, footprint: Groups) -> torch.Tensor:
        """``(B, Gr, Gc)`` log block sums: ``w * (U^T Ktil V)`` over the joint groups, summed
        into the footprint's groups."""
        j = self._joint
        if self._kp is not None:
            joint = j.sorted_blocks(self._kp, self._log_du(), self._log_dv())
            return torch.log(j.reduce(joint * torch.exp(self._log_w()), footprint))
        du, dv = torch.exp(self._log_du()), torch.exp(self._log_dv())
        left = torch.bmm((du[:, :, None] * j.row_onehot).transpose(1, 2), self._buf)  # (B, R, m)
        joint = torch.bmm(left, dv[:, :, None] * j.col_onehot)  # (B, R, S)
        joint = joint * torch.exp(self._log_w())
        return torch.log(j.reduce(joint, footprint))

    # -- reductions -------------------------------------------------------------------------
    def _buffer(self) -> torch.Tensor:
        if self._buf is None:
            self._buf = torch.empty(
                (self.batch, self.n, self.m), dtype=self.cost.dtype, device=self.cost.device
            )
        return self._buf

    def _row_lse(self) -> torch.Tensor:
        if self.mode == "kernel":
            return self._kernel_row()
        return _lse(self.kbase, self.beta[:, None, :], -1, self._buffer()) + self.alpha

    def _col_lse(self) -> torch.Tensor:
        if self.mode == "kernel":
            return self._kernel_col()
        return _lse(self.kbase, self.alpha[:, :, None], -2, self._buffer()) + self.beta

    def log_plan(self) -> torch.Tensor:
        """``log P``, shape ``(B, n, m)`` (``-inf`` on forbidden pairs and padded rows/columns)."""
        return self.kbase + self.alpha[:, :, None] + self.beta[:, None, :]

    def _group_lse(self, footprint: Groups) -> torch.Tensor:
        if self.mode == "kernel":
            return self._kernel_blocks(footprint)
        return footprint.log_reduce(self.log_plan())

    def materialize_plan(self) -> torch.Tensor:
        """The dense plan: scaled from the solve's last kernel when one was kept (no exp per
        entry), else ``log P`` exponentiated in one allocation; through autograd when tracked."""
        tracked = torch.is_grad_enabled() and any(t.requires_grad for t in (self.cost, self.alpha, self.beta))
        if tracked or self.batch != max(self.cost.shape[0], self.alpha.shape[0]):
            return torch.exp(self.log_plan())
        kept = self.take_plan()
        if kept is not None:
            return kept
        out = torch.empty((self.batch, self.n, self.m), dtype=self.cost.dtype, device=self.cost.device)
        return self.log_plan_into(out).exp_()

    def transport_cost(self, plan: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B,)`` ``<C, P>`` from the dense plan, as one batched dot product (no temporary)."""
        plan = self.materialize_plan() if plan is None else plan
        B = plan.shape[0]
        cost = self.cost.expand(B, -1, -1)
        return torch.bmm(plan.reshape(B, 1, -1), cost.reshape(B, -1, 1)).reshape(B)

    def apply(self, v: torch.Tensor, transpose: bool, plan: Optional[torch.Tensor] = None) -> torch.Tensor:
        plan = self.materialize_plan() if plan is None else plan
        return plan.transpose(1, 2) @ v if transpose else plan @ v

class _JointBlocks:
    """The joint groups of every block footprint of a problem, for the kernel domain.

    With block duals ``E`` the plan is ``P_ij = du_i Ktil_ij dv_j w[r(i), c(j)]``, where ``r(i)``
    (``c(j)``) is row ``i``'s (column ``j``'s) joint group: its tuple of group ids over every
    block footprint (``-1``, "no group", is a group of its own here), and ``w = exp((E - E0) /
    eps)`` is constant on each joint block. Row sums are then ``S`` mat-vec products done as one
    ``(n, m) x (m, S)`` product (one read of ``Ktil``), column sums likewise with ``R``, and block
    sums ``w * (U^T Ktil V)``. Built only when ``R * S <= MAX_JOINT`` (beyond, the log domain).
    """

    #: the most joint blocks (R * S) the kernel domain handles with block duals
    MAX_JOINT = 1024

    def __init__(self, row_onehot, col_onehot, row_codes, col_codes, row_of, col_of, footprints):
        self.row_onehot = row_onehot  # (B', n, R)
        self.col_onehot = col_onehot  # (B', m, S)
        self.row_codes = row_codes  # (B', n) joint row group of each row
        self.col_codes = col_codes  # (B', m)
        self.n_row, self.n_col = row_onehot.shape[-1], col_onehot.shape[-1]
        self.row_of = row_of  # per footprint: (R,) its group id (Gr for "none") of each joint row group
        self.col_of = col_of
        self.footprints = footprints

    @classmethod
    def build(cls, footprints: list, dtype: torch.dtype) -> Optional["_JointBlocks"]:
        def joint(labels_list, counts):
            codes, radix = None, 1
            for labels, count in zip(labels_list, counts):
                part = labels.remainder(count + 1).long()  # -1 -> count
                codes = part * radix if codes is None else codes + part * radix
                radix *= count + 1
            return codes, radix

        row_codes, R_full = joint([fp.row_groups for fp in footprints], [fp.n_row_groups for fp in footprints])
        col_codes, S_full = joint([fp.col_groups for fp in footprints], [fp.n_col_groups for fp in footprints])
        # keep only the joint groups that occur (compact codes)
        row_used, row_codes = torch.unique(row_codes, return_inverse=True)
        col_used, col_codes = torch.unique(col_codes, return_inverse=True)
        R, S = row_used.numel(), col_used.numel()
        if R * S > cls.MAX_JOINT:
            return None
        row_of, col_of, radix_r, radix_c = [], [], 1, 1
        for fp in footprints:
            row_of.append((row_used // radix_r).remainder(fp.n_row_groups + 1))
            col_of.append((col_used // radix_c).remainder(fp.n_col_groups + 1))
            radix_r *= fp.n_row_groups + 1
            radix_c *= fp.n_col_groups + 1
        row_onehot = torch.nn.functional.one_hot(row_codes, R).to(dtype)
        col_onehot = torch.nn.functional.one_hot(col_codes, S).to(dtype)
        out = cls(row_onehot, col_onehot, row_codes, col_codes, row_of, col_of, footprints)
        out._sort()
        return out

    def _sort(self) -> None:
        """With labels shared by the batch, sort rows and columns by joint group: every block is
        then a contiguous sub-matrix, and the block-scaled products cost one mat-vec in all."""
        self.sorted = self.row_codes.shape[0] == 1 and self.col_codes.shape[0] == 1
        if not self.sorted:
            return
        rc, cc = self.row_codes[0], self.col_codes[0]
        self.row_perm = torch.argsort(rc, stable=True)
        self.col_perm = torch.argsort(cc, stable=True)
        self.row_inv = torch.argsort(self.row_perm)
        self.col_inv = torch.argsort(self.col_perm)
        rb = torch.bincount(rc, minlength=self.n_row).cumsum(0).tolist()
        cb = torch.bincount(cc, minlength=self.n_col).cumsum(0).tolist()
        self.row_bounds = list(zip([0] + rb[:-1], rb))
        self.col_bounds = list(zip([0] + cb[:-1], cb))
        self.row_sorted_codes = rc[self.row_perm]
        self.col_sorted_codes = cc[self.col_perm]

    def permute(self, kernel: torch.Tensor) -> torch.Tensor:
        """``(B, n, m)`` kernel with rows and columns in joint-group order (a new tensor)."""
        return kernel.index_select(1, self.row_perm).index_select(2, self.col_perm)

    @staticmethod
    def _times(kp: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(B, n', m') x (B, m') -> (B, n')``: ``kp @ v`` as ``v^T kp^T`` (MKL's faster form)."""
        return torch.bmm(v[:, None, :], kp.transpose(1, 2))[:, 0]

    @staticmethod
    def _times_t(kp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(B, n', m') x (B, n') -> (B, m')``: ``kp^T @ u``."""
        return torch.bmm(u[:, None, :], kp)[:, 0]

    def sorted_rows(self, kp, log_du, log_dv, log_w) -> torch.Tensor:
        """``(B, n)`` log row sums of ``du_i Ktil_ij dv_j w[r(i), c(j)]`` (natural order): for
        each row group, its contiguous rows times ``dv * w[r, c(j)]`` (one mat-vec in all)."""
        dv_p = torch.exp(log_dv).index_select(1, self.col_perm)
        w = torch.exp(log_w).index_select(2, self.col_sorted_codes)  # (B, R, m): w[r, c(j)]
        rows = torch.cat([self._times(kp[:, r0:r1], dv_p * w[:, r]) for r, (r0, r1) in enumerate(self.row_bounds)], 1)
        return torch.log(rows.index_select(1, self.row_inv)).add_(log_du)

    def sorted_cols(self, kp, log_du, log_dv, log_w) -> torch.Tensor:
        """``(B, m)`` log column sums (natural order), by column groups."""
        du_p = torch.exp(log_du).index_select(1, self.row_perm)
        w = torch.exp(log_w).index_select(1, self.row_sorted_codes)  # (B, n, S): w[r(i), c]
        cols = torch.cat([self._times_t(kp[:, :, c0:c1], du_p * w[:, :, c]) for c, (c0, c1) in enumerate(self.col_bounds)], 1)
        return torch.log(cols.index_select(1, self.col_inv)).add_(log_dv)

    def sorted_blocks(self, kp, log_du, log_dv) -> torch.Tensor:
        """``(B, R, S)`` block sums of ``du_i Ktil_ij dv_j`` (without the block scalings)."""
        du_p = torch.exp(log_du).index_select(1, self.row_perm)
        dv_p = torch.exp(log_dv).index_select(1, self.col_perm)
        Y = torch.cat([self._times_t(kp[:, r0:r1], du_p[:, r0:r1]) for r0, r1 in self.row_bounds], 0)  # (R*B, m)
        Y = Y.reshape(len(self.row_bounds), -1, Y.shape[-1]) * dv_p  # (R, B, m)
        return torch.stack([Y[:, :, c0:c1].sum(-1) for c0, c1 in self.col_bounds], -1).transpose(0, 1)  # (B, R, S)

    def duals(self, duals: list, group_ids: list[int]) -> torch.Tensor:
        """``(B, R, S)`` sum of the block duals on each joint block (0 for "no group")."""
        total = None
        for fp, k, rows, cols in zip(self.footprints, group_ids, self.row_of, self.col_of):
            padded = torch.nn.functional.pad(duals[k], (0, 1, 0, 1))  # group -1 -> the zero pad
            part = padded[:, rows][:, :, cols]
            total = part if total is None else total + part
        return total

    def row_index_t(self, B: int, n: int, S: int) -> torch.Tensor:
        """``(B, S, n)`` index of each row's joint group along dim 2 of a ``(B, S, R)`` array."""
        return self.row_codes.expand(B, n)[:, None, :].expand(B, S, n)

    def col_index(self, B: int, m: int, R: int) -> torch.Tensor:
        """``(B, R, m)`` index of each column's joint group along dim 2 of a ``(B, R, S)`` array."""
        return self.col_codes.expand(B, m)[:, None, :].expand(B, R, m)

    def reduce(self, joint: torch.Tensor, footprint: Groups) -> torch.Tensor:
        """``(B, R, S)`` block sums -> the footprint's ``(B, Gr, Gc)`` (joint groups summed)."""
        k = next(i for i, fp in enumerate(self.footprints) if fp is footprint)
        rows, cols = self.row_of[k], self.col_of[k]
        Gr, Gc = footprint.n_row_groups, footprint.n_col_groups
        B = joint.shape[0]
        out = joint.new_zeros(B, Gr + 1, joint.shape[2]).index_add_(1, rows, joint)
        out = out.new_zeros(B, Gr + 1, Gc + 1).index_add_(2, cols, out)
        return out[:, :Gr, :Gc]


def _same_label_mass(ra: torch.Tensor, rb: torch.Tensor, labels: tuple) -> torch.Tensor:
    """``(B,)`` mass of ``ra (x) rb`` on the pairs whose labels agree under every given pair of
    label vectors (a combined label: labels ``-1`` never match)."""
    B = ra.shape[0]
    rows = torch.zeros(B, ra.shape[1], dtype=torch.long, device=ra.device)
    cols = torch.zeros(B, rb.shape[1], dtype=torch.long, device=rb.device)
    valid_r = torch.ones_like(rows, dtype=torch.bool)
    valid_c = torch.ones_like(cols, dtype=torch.bool)
    for row_labels, col_labels in labels:
        r, c = row_labels.expand(B, -1), col_labels.expand(B, -1)
        # a combined key: the pair of labels mapped to one integer (labels are < n + m + 1)
        base = int(max(int(r.max()), int(c.max()), 0)) + 2
        rows, cols = rows * base + (r + 1), cols * base + (c + 1)
        valid_r, valid_c = valid_r & (r >= 0), valid_c & (c >= 0)
    keys = torch.cat([torch.where(valid_r, rows, -1), torch.where(valid_c, cols, -2)], dim=1)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    k = uniq.numel()
    inv_r, inv_c = inverse[:, : ra.shape[1]], inverse[:, ra.shape[1]:]
    sum_r = torch.zeros(B, k, dtype=ra.dtype, device=ra.device).scatter_add(1, inv_r, torch.where(valid_r, ra, 0.0))
    sum_c = torch.zeros(B, k, dtype=rb.dtype, device=rb.device).scatter_add(1, inv_c, torch.where(valid_c, rb, 0.0))
    return (sum_r * sum_c).sum(-1)


def make_log_plan(geometry: Geometry, *args, reducer: Reducer = IDENTITY, **kwargs) -> LogPlan:
    """A :class:`DenseLogPlan` for a geometry that holds its cost, a streaming one otherwise
    (``reducer``: the row-sharding reducer, identity for one process)."""
    cls = DenseLogPlan if geometry.is_dense else LogPlan
    plan = cls(geometry, *args, **kwargs)
    plan.reducer = reducer
    return plan
