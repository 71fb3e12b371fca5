"""The result of a solve: plan, potentials, values, marginals and per-problem convergence."""

from __future__ import annotations

from functools import cached_property
from collections.abc import Sequence
import math
from typing import Callable, Optional

import numpy as np
import torch

from ..constraints.base import ConstraintSet
from .engine import Trace
from .footprint import COL, ROW
from ..geometry.base import memory_budget
from .gradients import AdjointReport, EnvelopeGuard
from .plan import LogPlan
from .problem import safe_logsumexp
from .registry import Projector

__all__ = ["OTResult", "PLAN_FRACTION"]

#: the share of the available memory that ``res.plan`` may take on a lazy geometry
PLAN_FRACTION = 0.5


class OTResult:
    """Output of :func:`otalign.solve`.

    Batched problems (a cost of shape ``(B, n, m)``, or batched weights) give tensors with a leading
    ``B``; a 2-D cost gives unbatched tensors. Tensors are in the input's dtype and on its device,
    and carry gradients as requested by ``grad=``. The plan is computed on demand from the
    potentials (and cached).

    Attributes:
        plan: ``(B, n, m)`` transport plan (exact zeros on forbidden pairs and zero weights).
        log_plan: ``log(plan)`` (``-inf`` where the plan is zero).
        f, g: ``(B, n)``, ``(B, m)`` potentials in cost units, such that
            ``plan = R * exp((f_i + g_j - C_ij) / epsilon)`` (times ``exp(H/epsilon)`` on the blocks
            of ``BlockMass`` duals ``H``), with ``R = a (x) b`` (``entropy="kl"``) or ``1``
            (``"shannon"``). Balanced problems are centred so that ``<f, a> = <g, b>``; padded rows
            and columns get 0.
        duals: one entry per constraint (None for constraints without a dual), cost units.
        value: ``(B,)`` regularised primal objective ``<C, P> + eps * Omega(P) + penalties``, with
            ``Omega = KL(P || R)`` (``"kl"``) or ``sum P log P - P`` (``"shannon"``).
        transport_cost: ``(B,)`` ``<C, P>``.
        marginals: ``(P 1, P^T 1)``.
        errors: ``(B, n_checks)`` error at each check (NaN after the problem stopped);
            ``check_iters`` gives the iteration of each check.
        error: ``(B,)`` last measured error. n_iters: ``(B,)`` sweeps performed.
        gap: ``(B,)`` duality gap at the last check: the primal objective of the plan minus the
            dual objective of the duals (objective units; ``>= 0`` up to the hard constraints'
            violation). For problems whose constraints are all penalties it bounds the distance
            to the optimum: ``epsilon KL(P* || P) <= gap``.
        converged: ``(B,)`` ``error <= tol`` was reached. diverged: ``(B,)`` non-finite values met.
        stalled: ``(B,)`` unconverged at ``max_iter`` with an error that no longer fell (by 1% over
            the last 200 sweeps): more sweeps would not help (``tol`` below the dtype's floor, or
            an epsilon too small for the iteration).
        grad: the gradient mode the result was computed with (see ``docs/gradients.md``).

    Row-sharded solves (``shard="rows"``, ``docs/distributed.md``): ``plan``, ``log_plan``,
    ``f``, the row marginal and the row duals are this rank's rows; everything else is global and
    identical on every rank, with a gradient scaled by ``1/W`` so that backpropagating it on every
    rank counts it once.
    """

    def __init__(
        self,
        state: LogPlan,
        projectors: list[Projector],
        constraints: ConstraintSet,
        trace: Trace,
        *,
        epsilon: float,
        entropy: str,
        tol: float,
        batched: bool,
        out_dtype: torch.dtype,
        grad: str = "unroll",
        envelope_value: Optional[Callable[[], torch.Tensor]] = None,
        anchor: Optional[torch.Tensor] = None,
        adjoint: Optional["AdjointReport"] = None,
        inputs: Sequence[tuple[str, torch.Tensor]] = (),
    ) -> None:
        self._state = state
        self._projectors = projectors
        self.constraints = constraints
        self.epsilon = epsilon
        self.entropy = entropy
        self.tol = tol
        self._batched = batched
        self._dtype = out_dtype
        self._trace = trace
        self.check_iters = trace.check_iters
        self.grad = grad
        self._envelope_fn = envelope_value
        self._anchor = anchor
        #: what the implicit backward did (:class:`~otalign.solvers.gradients.AdjointReport`):
        #: None outside ``grad="implicit"``; its fields are filled when a backward pass runs
        self.adjoint = adjoint
        # the plan, values and marginals are computed on demand from the caller's tensors: record
        # their version counters to refuse reading them after an in-place change
        self._inputs = [(name, t, t._version) for name, t in inputs]
        # point clouds given as NumPy arrays: every tensor output is returned as a NumPy array
        self._numpy = bool(getattr(state.geometry, "numpy_input", False))

    def _check_inputs(self) -> None:
        for name, t, version in self._inputs:
            if t._version != version:
                raise RuntimeError(
                    f"{name} was modified in place after the solve; the plan, values and marginals "
                    "are computed on demand from it, so they would no longer be those of the problem "
                    "solved. Read them before modifying it, or pass a copy (cost.clone()) to the solve"
                )
    # -- helpers ------------------------------------------------------------------------------
    @property
    def _reducer(self):
        return self._state.reducer

    def _rep(self, t: torch.Tensor) -> torch.Tensor:
        """A global output of a row-sharded solve (the identity for one process)."""
        return self._reducer.replicated(t)

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            t = t.to(self._dtype)
            if self.grad == "none":
                t = t.detach()
            elif self.grad == "envelope":
                t = t.detach() if self._anchor is None else EnvelopeGuard.apply(t.detach(), self._anchor)
        return self._host(t if self._batched else t[0])

    def _host(self, t: torch.Tensor):
        """A NumPy array for NumPy inputs (:class:`~otalign.geometry.PointCloud` of arrays), else ``t``."""
        return t.detach().cpu().numpy() if self._numpy else t

    def _check_dense_size(self, what: str) -> None:
        """A lazy geometry materialises ``(B, n, m)`` only within the memory budget."""
        st = self._state
        if st.geometry.is_dense:
            return
        size = st.batch * st.n * st.m * (torch.finfo(st.log_ra.dtype).bits // 8)
        budget = memory_budget(st.log_ra.device, fraction=PLAN_FRACTION)
        if size > budget:
            raise ValueError(
                f"res.{what} would materialise a ({st.batch}, {st.n}, {st.m}) array of {size / 2**30:.2f} GiB, above "
                f"the memory budget of {budget / 2**30:.2f} GiB (half the available memory); expected a problem "
                "whose plan fits, or use what needs no n x m array: res.apply(v), res.marginals, res.value, "
                "res.f, res.g, res.transport_cost"
            )

    @cached_property
    def _log_plan(self) -> torch.Tensor:
        self._check_inputs()
        self._check_dense_size("log_plan")
        return self._state.log_plan()

    @cached_property
    def _plan(self) -> torch.Tensor:
        self._check_inputs()
        if "_log_plan" in self.__dict__:
            return torch.exp(self._log_plan)
        self._check_dense_size("plan")
        return self._state.materialize_plan()

    @cached_property
    def _log_marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs()
        return self._state.log_marginal(ROW), self._state.log_marginal(COL)

    # -- plan and potentials ------------------------------------------------------------------
    @property
    def log_plan(self) -> torch.Tensor:
        return self._out(self._log_plan)

    @property
    def plan(self) -> torch.Tensor:
        return self._out(self._plan)

    @property
    def f(self) -> torch.Tensor:
        live = torch.isfinite(self._state.log_ra)
        return self._out(torch.where(live, self._state.F, torch.zeros_like(self._state.F)))

    @property
    def g(self) -> torch.Tensor:
        live = torch.isfinite(self._state.log_rb)
        return self._out(self._rep(torch.where(live, self._state.G, torch.zeros_like(self._state.G))))

    @property
    def duals(self) -> tuple[Optional[torch.Tensor], ...]:
        return tuple(None if d is None else self._out(d if p.footprint is ROW else self._rep(d))
                     for p, d in zip(self._projectors, self._state.duals))

    @property
    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        row, col = self._log_marginals
        return self._out(torch.exp(row)), self._out(self._rep(torch.exp(col)))

    # -- values -------------------------------------------------------------------------------
    @cached_property
    def _transport_cost(self) -> torch.Tensor:
        self._check_inputs()
        st = self._state
        return st.reducer.sum(st.transport_cost(self._plan if st.geometry.is_dense else None))

    @cached_property
    def _value(self) -> torch.Tensor:
        """The primal objective from the duals and the marginals (no ``n x m`` pass): with
        ``log P = log R + (F_i + G_j + E_ij - C_ij) / eps`` on the support,
        ``<C, P> + eps KL(P || R) = sum_k <d_k, marginal_k> - eps sum P + eps sum R`` (the last
        term for ``entropy="kl"`` only; ``"shannon"`` drops it), plus the penalties."""
        self._check_inputs()
        st = self._state
        value = -self.epsilon * torch.exp(st.reducer.lse(safe_logsumexp(st.log_marginal(ROW), -1)))
        if self.entropy == "kl":
            value = value + self.epsilon * st.reference_mass()
        for proj, dual in zip(self._projectors, st.duals):
            if proj.footprint is None:
                continue
            log_mu = st.log_marginal(proj.footprint)
            mu = torch.exp(log_mu)
            inner = torch.where(mu > 0, dual * mu, torch.zeros_like(mu)).reshape(st.batch, -1).sum(-1)
            term = inner + proj.penalty(log_mu)
            value = value + (st.reducer.sum(term) if proj.footprint is ROW else term)
        return value

    @cached_property
    def _envelope_value(self) -> torch.Tensor:
        self._check_inputs()
        return self._envelope_fn()

    @property
    def value(self) -> torch.Tensor:
        if self._envelope_fn is not None:
            v = self._rep(self._envelope_value).to(self._dtype)
            return self._host(v if self._batched else v[0])
        return self._out(self._rep(self._value))

    @property
    def transport_cost(self) -> torch.Tensor:
        return self._out(self._rep(self._transport_cost))

    def apply(self, v: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``P @ v``, or ``P^T @ v`` with ``transpose=True``, without an ``n x m`` array on a
        lazy geometry.

        ``v``: ``(m,)``, ``(m, k)`` (shared by the batch) or ``(B, m)``, ``(B, m, k)`` for
        ``P @ v`` (``n`` instead of ``m`` with ``transpose``); the result has the same layout
        with ``n`` (or ``m``) rows, in the plan's dtype.
        """
        self._check_inputs()
        st = self._state
        size, other = (st.n, st.m) if transpose else (st.m, st.n)
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(v)
        if not v.is_floating_point():
            v = v.to(self._dtype)
        shape = tuple(v.shape)
        batched = v.dim() == 3 or (v.dim() == 2 and self._batched and shape[0] == st.batch and shape[1] == size
                                   and not (shape[0] == size and st.batch != size))
        if v.dim() == 0 or v.dim() > 3 or (v.dim() == 3 and shape[0] not in (1, st.batch)) or \
                (v.shape[1 if batched else 0] != size):
            want = f"({size},), ({size}, k), ({st.batch}, {size}) or ({st.batch}, {size}, k)"
            raise ValueError(f"v has shape {shape}; expected {want} ({'rows' if transpose else 'columns'} of the plan)")
        w = v.to(device=st.log_ra.device, dtype=st.log_ra.dtype)
        squeeze = w.dim() == (2 if batched else 1)
        if squeeze:
            w = w[..., None]
        if not batched:
            w = w[None]
        w = w.expand(st.batch, -1, -1)
        out = st.apply(w, transpose, self._plan if st.geometry.is_dense else None)
        if transpose:  # P^T u sums over the rows: over every rank's
            out = self._rep(st.reducer.sum(out))
        if squeeze:
            out = out[..., 0]
        if not batched:
            out = out if self._batched or st.batch > 1 else out[0]
            return self._out_raw(out)
        return self._out_raw(out)

    def _out_raw(self, t: torch.Tensor) -> torch.Tensor:
        """Like ``_out`` without dropping the batch dimension (``apply`` shapes its result)."""
        t = t.to(self._dtype)
        if self.grad == "none":
            return self._host(t.detach())
        if self.grad == "envelope":
            return self._host(t.detach() if self._anchor is None else EnvelopeGuard.apply(t.detach(), self._anchor))
        return self._host(t)

    def barycentric_map(self, y=None, *, empty: str = "raise"):
        """The barycentric projection ``T(x_i) = (P @ y)_i / (P 1)_i``: where the plan sends row ``i``
        on average.

        Args:
            y: ``(m, k)``, ``(m,)``, ``(B, m, k)`` or ``(B, m)`` values at the columns (tensor or NumPy
                array); default: the target points of a :class:`~otalign.geometry.PointCloud`.
            empty: what a row that receives no mass (``P 1 = 0``: a zero weight, a fully forbidden
                row, an underflow) gets: ``"raise"`` (``ValueError`` naming the rows) or ``"nan"``.
                Padding rows of a ragged batch are NaN either way.

        Returns:
            ``(n, k)`` (or ``(B, n, k)``; ``(n,)`` / ``(B, n)`` for vector ``y``), in the plan's dtype
            (NumPy for NumPy inputs).
        """
        if empty not in ("raise", "nan"):
            raise ValueError(f"empty={empty!r}; expected 'raise' or 'nan'")
        st = self._state
        if y is None:
            if getattr(st.geometry, "source_y", None) is None:
                raise ValueError("y=None needs a PointCloud geometry; expected the values (m, k) at the columns")
            y = st.geometry.y  # (B', m, d) in the compute dtype
            if y.shape[0] == 1:
                y = y[0]
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(np.asarray(y))
        numpy_out = self._numpy
        self._numpy = False
        try:
            num = self.apply(y)
        finally:
            self._numpy = numpy_out
        with torch.no_grad():
            log_mass = st.log_marginal(ROW)
        mass = torch.exp(st.log_marginal(ROW)).to(self._dtype)
        if self.grad == "none" or self.grad == "envelope":
            mass = mass.detach()
        if not self._batched:
            mass, log_mass = mass[0], log_mass[0]
        valid = st.geometry.valid_rows
        zero = torch.isneginf(log_mass) | (mass == 0)
        if valid is not None:
            pad = ~(valid if self._batched else valid[0]).expand_as(zero)
            real_zero = zero & ~pad
        else:
            real_zero = zero
        if empty == "raise" and bool(real_zero.any()):
            rows = torch.nonzero(real_zero).tolist()[:5]
            raise ValueError(
                f"rows {rows} of the plan have zero mass (P 1 = 0), so their barycentric map is undefined; "
                "expected rows that receive mass, or empty='nan' to get NaN there"
            )
        denom = torch.where(zero, torch.full_like(mass, math.nan), mass)
        out = num / (denom[..., None] if num.dim() > denom.dim() else denom)
        return self._host(out)

    @property
    def mass(self) -> torch.Tensor:
        """``(B,)`` total mass of the plan."""
        total = self._reducer.lse(safe_logsumexp(self._log_marginals[0], -1))
        return self._out(self._rep(torch.exp(total)))

    # -- convergence --------------------------------------------------------------------------
    @property
    def errors(self) -> torch.Tensor:
        return self._out(self._trace.errors)

    @property
    def error(self) -> torch.Tensor:
        return self._out(self._trace.error)

    @property
    def gap(self) -> torch.Tensor:
        return self._out(self._trace.gap)

    @property
    def n_iters(self) -> torch.Tensor:
        return self._out(self._trace.n_iters)

    @property
    def converged(self) -> torch.Tensor:
        return self._out(self._trace.converged)

    @property
    def diverged(self) -> torch.Tensor:
        return self._out(self._trace.diverged)

    @property
    def stalled(self) -> torch.Tensor:
        return self._out(self._trace.stalled)

    @property
    def omega(self) -> Optional[torch.Tensor]:
        """``(B,)`` over-relaxation ``omega`` of the last sweeps (None for plain sweeps): with
        ``overrelax="adaptive"``, what the next solve of a similar problem can start from
        (``overrelax_start``)."""
        omega = getattr(self._trace, "omega", None)
        return None if omega is None else self._host(omega.detach() if self._batched else omega.detach()[0])

    def __repr__(self) -> str:
        shape = (self._state.n, self._state.m)
        batch = f"B={self._state.batch}, " if self._batched else ""
        conv = self._trace.converged
        return (
            f"OTResult({batch}shape={shape}, epsilon={self.epsilon:g}, "
            f"converged={int(conv.sum())}/{conv.numel()}, "
            f"max n_iters={int(self._trace.n_iters.max())})"
        )
