"""Fixed-support entropic barycentres by iterated Bregman (KL) projections, in the log domain.

Given histograms ``a_1, ..., a_K`` on ``n`` bins (rows of ``histograms``), barycentric weights
``w`` on the simplex and a cost ``C`` of shape ``(n, m)`` between the histograms' bins and the
``m`` bins of the barycentre's support, the balanced barycentre is

    q* = argmin_q  sum_k w_k OT_eps(a_k, q),
    OT_eps(a, q) = min_{P 1 = a, P^T 1 = q}  <C, P> + eps * sum_ij (P_ij log P_ij - P_ij),

(Shannon entropy, i.e. ``KL(P || 1)``: POT's convention for ``ot.bregman.barycenter``). With
``rho`` the marginal constraints become KL penalties (Chizat, Peyre, Schmitzer, Vialard 2018):

    OT_eps,rho(a, q) = min_P <C, P> + eps * sum (P log P - P) + rho_in KL(P 1 || a) + rho_bar KL(P^T 1 || q).

Algorithm (Benamou, Carlier, Cuturi, Nenna, Peyre 2015; Chizat et al. 2018, section 5.2): each plan
is ``P_k = diag(u_k) K diag(v_k)`` with ``K = exp(-C / eps)``; one sweep updates, for every k at
once (a batched ``(B, K, n, m)`` reduction, no loop over k or over problems),

    log u_k = tau_in  (log a_k - LSE_j(log K_ij + log v_kj))        tau = rho / (rho + eps)
    log z_k = LSE_i(log K_ij + log u_ki)                            (log K^T u_k)
    log q   = sum_k w_k log z_k                                     (rho_bar = inf)
            = LSE_k(log w_k + (1 - tau_bar) log z_k) / (1 - tau_bar) (rho_bar < inf)
    log v_k = tau_bar (log q - log z_k)

with ``tau = 1`` on hard sides. ``exp(-C / eps)`` is never formed: every reduction is a
log-sum-exp of ``-C / eps`` plus the log-scalings.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Optional, Union

import numpy as np
import torch

from ..warnings import NonConvergenceWarning
from ._inputs import GRAD_MODES, Inputs, check_int, check_number, parse_rho, prepare
from ._lse import lse
from ._reducers import SAFE_DRIFT, KernelReduce, LogReduce, absorb

__all__ = ["barycenter", "BarycenterResult", "METHODS"]

METHODS = ("auto", "log")

_NEG_INF = -math.inf

Array = Union[torch.Tensor, np.ndarray]
Reducer = Union[LogReduce, KernelReduce]


# ---------------------------------------------------------------------------------------------
# The iteration
# ---------------------------------------------------------------------------------------------
def _safe_log(x: torch.Tensor) -> torch.Tensor:
    """``log x`` with ``log 0 = -inf`` and a zero (not NaN) gradient where ``x == 0``."""
    positive = x > 0
    return torch.where(positive, torch.log(torch.where(positive, x, torch.ones_like(x))), _NEG_INF)


@dataclass(frozen=True)
class _Spec:
    """What does not change during a solve: the mask, epsilon and the two exponents ``tau``."""

    allowed: Optional[torch.Tensor]  # (Bm, n, m) bool
    eps: float
    tau_in: float  # rho_in / (rho_in + eps); 1 if hard
    tau_bar: float  # rho_bar / (rho_bar + eps); 1 if hard

    def parts(self, hist: torch.Tensor, weights: torch.Tensor, cost: torch.Tensor) -> "_Parts":
        """Differentiable log-domain data of the problem from the (compute-dtype) inputs."""
        log_k = -cost / self.eps
        if self.allowed is not None:
            log_k = torch.where(self.allowed, log_k, _NEG_INF)
        return _Parts(
            log_a=_safe_log(hist),
            weights=weights,
            log_w=_safe_log(weights),
            w_pos=(weights > 0)[:, :, None],
            log_k=log_k[:, None],
        )


@dataclass(frozen=True)
class _Parts:
    log_a: torch.Tensor  # (B, K, n)
    weights: torch.Tensor  # (Bw, K)
    log_w: torch.Tensor  # (Bw, K)
    w_pos: torch.Tensor  # (Bw, K, 1) weights > 0
    log_k: torch.Tensor  # (Bc, 1, n, m): -C / eps, -inf on forbidden pairs


@dataclass
class _State:
    """One iterate: ``g_in`` (the ``log v`` the last sweep started from) and what that sweep made."""

    g_in: torch.Tensor  # (B, K, m)
    lu: torch.Tensor  # (B, K, n) log u
    lz: torch.Tensor  # (B, K, m) log K^T u
    lq: torch.Tensor  # (B, m) log barycentre
    g: torch.Tensor  # (B, K, m) log v

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.g_in, self.lu, self.lz, self.lq, self.g)


def _sweep(g: torch.Tensor, parts: _Parts, spec: _Spec, red: Reducer) -> _State:
    """One sweep from ``g = log v`` (``red``: where the two reductions are computed)."""
    lkv = red.rows(g)
    # rows without mass, or (soft input side only) without an allowed column, carry nothing
    live = (parts.log_a > _NEG_INF) & (lkv > _NEG_INF)
    lu = torch.where(live, spec.tau_in * (parts.log_a - lkv), _NEG_INF)
    lz = red.cols(lu)
    if spec.tau_bar == 1.0:  # geometric mean (hard barycentre side); 0 * log 0 = 0
        lq = torch.where(parts.w_pos, parts.weights[:, :, None] * lz, 0.0).sum(1)
    else:  # power mean with exponent 1 - tau_bar = eps / (rho_bar + eps)
        lq = _log_power_mean(lz, parts, 1.0 - spec.tau_bar)
    # columns that plan k cannot reach (only with forbidden pairs) are empty whatever v is
    reach = lz > _NEG_INF
    g_new = torch.where(reach, spec.tau_bar * (lq[:, None, :] - lz), _NEG_INF)
    return _State(g_in=g, lu=lu, lz=lz, lq=lq, g=g_new)


def _log_power_mean(lz: torch.Tensor, parts: _Parts, t: float) -> torch.Tensor:
    """``log (sum_k w_k z_k^t)^(1/t)`` over axis 1 of ``lz = log z`` (``(B, K, m)`` -> ``(B, m)``).

    ``LSE_k(log w_k + t lz_k) / t`` loses ``1e-16 / t`` to cancellation when ``t = eps / (rho + eps)``
    is small (``rho >> eps``). Around the geometric mean ``g = sum_k w_k lz_k`` it is
    ``g + log1p(sum_k w_k expm1(t (lz_k - g))) / t``, accurate for small ``t |lz_k - g|``: used
    there, the log-sum-exp elsewhere (large spreads, or ``z_k = 0`` with ``w_k > 0``).
    """
    w = parts.weights[:, :, None]
    plain = lse(parts.log_w[:, :, None], t * lz, 1) / t
    held = parts.w_pos & (lz > _NEG_INF)  # (B, K, m)
    geo = torch.where(held, w * lz, 0.0).sum(1)
    d = torch.where(held, t * (lz - geo[:, None, :]), 0.0)
    near = (held | ~parts.w_pos).all(1) & (d.abs().amax(1) <= 1.0)
    stable = geo + torch.log1p((w * torch.expm1(d)).sum(1)) / t
    return torch.where(near, stable, plain)


@dataclass
class _Trace:
    errors: torch.Tensor  # (B, n_checks), NaN after a problem stopped
    check_iters: list[int]
    error: torch.Tensor  # (B,)
    n_iters: torch.Tensor  # (B,)
    converged: torch.Tensor  # (B,)
    diverged: torch.Tensor  # (B,)


def _l1_change(x: torch.Tensor, prev: Optional[torch.Tensor]) -> torch.Tensor:
    """``(B,)`` largest L1 change over the middle axes (``x``: ``(B, ..., d)``); inf if no previous."""
    if prev is None:
        return torch.full(x.shape[:1], math.inf, dtype=x.dtype, device=x.device)
    d = (x - prev).abs().sum(-1)
    return d.reshape(x.shape[0], -1).amax(-1)


def _where_active(active: torch.Tensor, new: _State, old: _State) -> _State:
    pick = [
        torch.where(active.reshape((-1,) + (1,) * (a.dim() - 1)), a, b)
        for a, b in zip(new.tensors(), old.tensors())
    ]
    return _State(*pick)


def _step(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """``(B,)`` largest ``|x - prev|`` (0 where both are ``-inf``; inf where undefined otherwise)."""
    both_empty = (x == _NEG_INF) & (prev == _NEG_INF)
    d = torch.where(both_empty, 0.0, (x - prev).abs())
    d = torch.where(torch.isnan(d), math.inf, d)
    return d.reshape(x.shape[0], -1).amax(-1)


def _iterate(
    parts: _Parts,
    spec: _Spec,
    g0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    check_every: int,
    track: bool,
    kernel: bool,
) -> tuple[_State, _Trace]:
    """Sweeps until every problem meets ``tol``, turns non-finite, or ``max_iter`` is reached.

    Error of a problem at a check (see ``docs/barycenters.md``), for the current plans
    ``P_k = diag(u_k) K diag(v_k)`` (whose column marginals equal ``q`` exactly when the
    barycentre side is hard, by the last ``v`` update):

    * hard input side: ``max_k ||P_k 1 - a_k||_1``;
    * soft input side: ``max_k`` L1 change of ``P_k 1`` since the previous check;
    * soft barycentre side: also ``max_k`` L1 change of ``P_k^T 1`` and the L1 change of ``q``.

    ``kernel``: run the intervals between checks in the stabilised kernel domain when the last
    sweep moved the log-scalings by less than ``SAFE_DRIFT / check_every`` (the plans computed
    for the check are the kernel); an interval whose drift exceeded ``2 * SAFE_DRIFT`` or that met
    non-finite values is redone in the log domain.
    """
    B, K, m = g0.shape
    n = parts.log_a.shape[-1]
    dtype, device = g0.dtype, g0.device
    buf = None if track else torch.empty((B, K, n, m), dtype=dtype, device=device)
    log_red = LogReduce(parts.log_k, buf)
    red: Reducer = log_red
    kernel = kernel and not track
    safe = SAFE_DRIFT[dtype]
    hard_in, hard_bar = spec.tau_in == 1.0, spec.tau_bar == 1.0
    a = torch.exp(parts.log_a)

    state: Optional[_State] = None
    prev_lu: Optional[torch.Tensor] = None  # log u one sweep before ``state``
    active = torch.ones(B, dtype=torch.bool, device=device)
    all_active = True
    converged = torch.zeros(B, dtype=torch.bool, device=device)
    diverged = torch.zeros(B, dtype=torch.bool, device=device)
    n_iters = torch.full((B,), max_iter, dtype=torch.long, device=device)
    error = torch.full((B,), math.inf, dtype=dtype, device=device)
    history: list[torch.Tensor] = []
    check_iters: list[int] = []
    snapshot: Optional[_State] = None  # state at the last check
    prev_rows = prev_cols = prev_q = None
    it = 0

    while True:
        start = (it, state, prev_lu)
        stop_at = min((it // check_every + 1) * check_every, max_iter)
        g = g0 if state is None else state.g
        while it < stop_at:
            new = _sweep(g, parts, spec, red)
            prev_lu = None if state is None else state.lu
            state = new if (state is None or all_active) else _where_active(active, new, state)
            g = state.g
            it += 1
        assert state is not None
        with torch.no_grad():
            if red.kernel:
                drift = torch.where(active, red.drift(state.lu.detach(), state.g.detach()), 0.0)
                if not bool(drift.amax() <= 2 * safe):  # redo this interval in the log domain
                    it, state, prev_lu = start
                    red = log_red
                    continue
            lu, lz, lq, gd = state.lu.detach(), state.lz.detach(), state.lq.detach(), state.g.detach()
            if buf is None:
                P = torch.exp(parts.log_k.detach() + lu[:, :, :, None] + gd[:, :, None, :])
            else:
                P = absorb(parts.log_k, lu, gd, buf)
            rows = P.sum(-1)  # (B, K, n) row marginals of the plans
            q = torch.exp(lq)
            finite = (
                torch.isfinite(rows).flatten(1).all(-1)
                & torch.isfinite(q).all(-1)
                & ~torch.isnan(gd).flatten(1).any(-1)
                & ~(gd == math.inf).flatten(1).any(-1)
                & ~torch.isnan(lu).flatten(1).any(-1)
                & ~(lu == math.inf).flatten(1).any(-1)
                & (q.sum(-1) > 0)
            )
            if hard_in:
                err = (rows - a).abs().sum(-1).amax(-1)
            else:
                err = _l1_change(rows, prev_rows)
                prev_rows = rows
            if not hard_bar:
                cols = torch.exp(gd + lz)
                err = torch.maximum(err, _l1_change(cols, prev_cols))
                err = torch.maximum(err, _l1_change(q[:, None], prev_q))
                prev_cols, prev_q = cols, q[:, None]
            elif not hard_in:
                err = torch.maximum(err, _l1_change(q[:, None], prev_q))
                prev_q = q[:, None]
            err = torch.where(finite, err, math.nan)
        bad = active & ~finite
        if bool(bad.any()) and snapshot is not None:  # roll the non-finite problems back to the last check
            state = _where_active(~bad, state, snapshot)
        history.append(torch.where(active, err, math.nan))
        check_iters.append(it)
        ok = active & finite & (err <= tol)
        stop = ok | bad
        converged = converged | ok
        diverged = diverged | bad
        n_iters = torch.where(stop, it, n_iters)
        error = torch.where(active & ~bad, err, error)
        active = active & ~stop
        snapshot = state
        n_active = int(active.sum())
        if n_active == 0 or it >= max_iter:
            break
        all_active = n_active == B
        red = log_red
        if kernel and prev_lu is not None:
            with torch.no_grad():
                step = torch.maximum(_step(lu, prev_lu.detach()), _step(gd, state.g_in.detach()))
                step = torch.where(active, step, 0.0)
                # every entry the log domain keeps must survive in the kernel (no row or column
                # of a plan entirely below the smallest normal float)
                idle = ~active[:, None, None]
                held_rows = ((rows > 0) | (lu == _NEG_INF) | idle).all()
                held = held_rows & ((P.sum(-2) > 0) | (gd == _NEG_INF) | idle).all()
                if bool(check_every * step.amax() <= safe) and bool(held):
                    red = KernelReduce(P, lu, gd)
    trace = _Trace(
        errors=torch.stack(history, dim=1),
        check_iters=check_iters,
        error=error,
        n_iters=n_iters,
        converged=converged,
        diverged=diverged,
    )
    return state, trace


# ---------------------------------------------------------------------------------------------
# Implicit differentiation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Adjoint:
    spec: _Spec
    tol: float
    max_iter: int


class _FixedPoint(torch.autograd.Function):
    """Identity on the fixed point ``g* = T(g*, theta)`` of one sweep; its backward solves the adjoint
    equation ``lam = (dT/dg)^T lam + grad`` by fixed-point iteration on vector-Jacobian products of
    one sweep (memory: one sweep's graph) and returns ``(dT/dtheta)^T lam``.

    Balanced problems have gauge directions (``log v_k + c_k`` with ``sum_k w_k c_k = 0`` leaves
    every plan and the barycentre unchanged) where ``dT/dg`` has the eigenvalue 1. The outputs are
    computed from ``g*`` by one more sweep and are invariant along them, so the incoming gradient
    has no component there and the iteration converges at the rate of the forward iterations.
    """

    @staticmethod
    def forward(ctx, g_star: torch.Tensor, adj: _Adjoint, *theta: torch.Tensor):  # noqa: ANN001, ANN205
        ctx.adj = adj
        ctx.save_for_backward(g_star, *theta)
        return g_star.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        adj: _Adjoint = ctx.adj
        g_star, *theta = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            x = g_star.detach().requires_grad_(True)
            th = [t.detach().requires_grad_(bool(need)) for t, need in zip(theta, needs)]
            # the adjoint loop differentiates w.r.t. g only, through reductions that keep their
            # softmax: each vector-Jacobian product is two batched mat-vecs
            plain = adj.spec.parts(*(t.detach() for t in theta))
            y = _sweep(x, plain, adj.spec, LogReduce(plain.log_k, keep=True)).g
            grad = torch.where(torch.isfinite(grad), grad, 0.0)
            lam = grad
            done = False
            for _ in range(adj.max_iter):
                (vjp,) = torch.autograd.grad(y, x, lam, retain_graph=True)
                new = grad + vjp
                change = (new - lam).abs().flatten(1).amax(-1)
                size = new.abs().flatten(1).amax(-1).clamp_min(torch.finfo(new.dtype).tiny)
                lam = new
                if bool((change <= adj.tol * size).all()):
                    done = True
                    break
            if not done:
                warnings.warn(
                    NonConvergenceWarning(
                        f"barycenter (grad='implicit'): the adjoint iteration did not reach "
                        f"adjoint_tol={adj.tol:g} within {adj.max_iter} iterations; "
                        "the gradient is approximate"
                    ),
                    stacklevel=2,
                )
            del y
            wanted = [t for t in th if t.requires_grad]
            got: Any = iter(())
            if wanted:  # (dT/dtheta)^T lam through one memory-light sweep
                parts = adj.spec.parts(*th)
                y = _sweep(x.detach(), parts, adj.spec, LogReduce(parts.log_k)).g
                got = iter(torch.autograd.grad(y, wanted, lam, allow_unused=True))
        grads = [next(got) if t.requires_grad else None for t in th]
        return (None, None, *grads)


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------
@dataclass(repr=False)
class BarycenterResult:
    """Output of :func:`otalign.barycenter`.

    Per-problem fields have a leading ``B`` for batched inputs and none otherwise. Tensors are in
    the input's dtype and on its device (NumPy arrays when ``histograms`` was a NumPy array).

    Attributes:
        barycenter: ``(m,)`` or ``(B, m)`` the barycentre ``q``.
        n_iters: sweeps performed (per problem).
        converged: the error reached ``tol``; a certificate (see ``docs/barycenters.md``).
        diverged: non-finite values were met (the problem was rolled back to its last finite check).
        error: the last measured error (L1, mass units).
        errors: ``(B, n_checks)`` (or ``(n_checks,)``) error at each check, NaN after the problem
            stopped; ``check_iters`` gives the sweep number of each check.
        epsilon, rho, tol: the parameters of the solve (``rho`` as ``(rho_in, rho_bar)``).
        plans: (property, computed on demand) ``(K, n, m)`` or ``(B, K, n, m)`` transport plans
            ``P_k`` from histogram ``k`` (rows) to the barycentre (columns).
    """

    barycenter: Array
    n_iters: Array
    converged: Array
    diverged: Array
    error: Array
    errors: Array
    check_iters: list[int]
    epsilon: float
    rho: tuple[float, float]
    tol: float
    _lu: torch.Tensor = field(repr=False)  # (B, K, n)
    _g: torch.Tensor = field(repr=False)  # (B, K, m)
    _log_k: torch.Tensor = field(repr=False)  # (Bc, 1, n, m)
    _inputs: Inputs = field(repr=False)
    _track: bool = field(repr=False)

    def _out(self, t: torch.Tensor) -> Array:
        return _convert(t, self._inputs, self._track)

    @cached_property
    def plans(self) -> Array:
        """``(K, n, m)`` / ``(B, K, n, m)``: ``P_k = exp(log u_k + (-C / eps) + log v_k)``."""
        with torch.set_grad_enabled(self._track and torch.is_grad_enabled()):
            log_p = self._lu[:, :, :, None] + self._log_k + self._g[:, :, None, :]
            return self._out(torch.exp(log_p))

    @property
    def potentials(self) -> tuple[Array, Array]:
        """``(f, g)``, shapes ``(B, K, n)`` and ``(B, K, m)`` in cost units (``f = eps log u``,
        ``g = eps log v``): ``P_k = exp((f_k,i + g_k,j - C_ij) / eps)``; ``-inf`` marks rows or
        columns that carry no mass."""
        return self._out(self.epsilon * self._lu), self._out(self.epsilon * self._g)

    def __repr__(self) -> str:
        conv = torch.as_tensor(np.asarray(self.converged) if self._inputs.numpy else self.converged)
        n_it = torch.as_tensor(np.asarray(self.n_iters) if self._inputs.numpy else self.n_iters)
        B, K, n = self._lu.shape
        batch = f"B={B}, " if self._inputs.batched else ""
        return (
            f"BarycenterResult({batch}K={K}, n={n}, m={self._g.shape[-1]}, epsilon={self.epsilon:g}, "
            f"converged={int(conv.sum())}/{conv.numel()}, max n_iters={int(n_it.max())})"
        )


def _convert(t: torch.Tensor, inputs: Inputs, track: bool) -> Array:
    if t.is_floating_point():
        t = t.to(inputs.out_dtype)
    if not track:
        t = t.detach()
    if not inputs.batched:
        t = t[0]
    if inputs.numpy:
        return t.detach().cpu().numpy()
    return t


# ---------------------------------------------------------------------------------------------
# Front door
# ---------------------------------------------------------------------------------------------
def barycenter(
    histograms: Array,
    cost: Array,
    *,
    epsilon: float,
    weights: Optional[Any] = None,
    constraints: Any = None,
    rho: Union[None, float, tuple[float, float]] = None,
    tol: Optional[float] = None,
    max_iter: int = 1000,
    check_every: int = 10,
    init: Optional[BarycenterResult] = None,
    grad: str = "implicit",
    adjoint_tol: Optional[float] = None,
    method: str = "auto",
) -> BarycenterResult:
    """Entropic barycentre of histograms on a fixed support (iterated Bregman projections).

    Solves ``q* = argmin_q sum_k w_k OT(a_k, q)`` where, for each histogram ``a_k`` (rows) and the
    barycentre ``q`` (columns),

        OT(a, q) = min_P <C, P> + epsilon * sum_ij (P_ij log P_ij - P_ij)
                   [+ rho_in KL(P 1 || a) + rho_bar KL(P^T 1 || q)  when ``rho`` is given]

    (Shannon entropy, POT's convention: ``epsilon`` is POT's ``reg``, ``rho`` its ``reg_m``). All
    problems of a batch and all K histograms are updated together, in the log domain.

    Args:
        histograms: ``(K, n)`` or ``(B, K, n)``: K histograms on n bins (finite, >= 0, each with
            positive mass; equal masses within a problem unless ``rho`` is given). A torch tensor or
            a NumPy array (NumPy in, NumPy out).
        cost: ``(n, m)`` or ``(B, n, m)`` finite costs between the histograms' bins (rows) and the
            barycentre's m bins (columns; ``m = n`` for the usual common support).
        epsilon: entropic strength (> 0), in the units of the cost.
        weights: barycentric weights ``(K,)`` or ``(B, K)``, >= 0 and summing to 1 (within 1e-6 in
            float64, 1e-5 otherwise; then divided by their sum); default uniform.
        constraints: None, or :class:`~otalign.constraints.Forbid` constraints (a list or a
            ``ConstraintSet`` of them): forbidden pairs ``(n, m)`` / ``(B, n, m)`` (True =
            forbidden, ``"diagonal"`` allowed), applied to every plan. Other types raise
            ``ValueError``.
        rho: None (balanced: hard marginals), a number > 0 (KL penalty of that strength on both
            marginals of every plan, as POT's ``barycenter_unbalanced``), or a pair
            ``(rho_in, rho_bar)`` for the input-histogram side and the barycentre side
            (``math.inf`` = hard).
        tol: stopping tolerance on the error (L1, mass units; see ``docs/barycenters.md``);
            default ``1e-9`` in float64, ``1e-5`` in float32 (and for float16/bfloat16 inputs).
        max_iter: maximum number of sweeps (>= 1).
        check_every: sweeps between two convergence checks (the only host synchronisation).
        init: warm start from a previous result with the same shapes (its column potentials).
        grad: ``"implicit"`` (default: implicit function theorem at the fixed point; backward
            memory of one sweep, independent of the iteration count), ``"unroll"`` (autograd
            through the iterations: the exact gradient of what was computed; memory O(K (n + m))
            per sweep plus the cost once) or ``"none"``. Used only when an input requires grad.
        adjoint_tol: relative stopping tolerance of the implicit mode's adjoint iteration
            (default ``1e-10`` in float64, ``1e-6`` otherwise; at most ``max_iter`` iterations).
        method: ``"auto"`` (log-domain sweeps, and the stabilised kernel domain between checks
            whenever the log-scalings move slowly enough for it to be exact: two batched
            mat-vecs per sweep instead of two log-sum-exps over ``(B, K, n, m)``) or ``"log"``
            (log domain only). Both give the same iterates up to rounding. Unrolled gradients
            always run in the log domain.

    Returns:
        A :class:`BarycenterResult` (``.barycenter``, ``.plans``, ``.converged``, ``.n_iters``,
        ``.error``). A problem that does not reach ``tol`` (or meets non-finite values) is reported
        there and a :class:`~otalign.warnings.NonConvergenceWarning` is issued.
    """
    eps = check_number("epsilon", epsilon, low=0.0)
    rho_in, rho_bar = parse_rho(rho)
    max_iter = check_int("max_iter", max_iter, low=1)
    check_every = check_int("check_every", check_every, low=1)
    if grad not in GRAD_MODES:
        raise ValueError(f"grad={grad!r}; expected one of {GRAD_MODES}")
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    if adjoint_tol is not None:
        adjoint_tol = check_number("adjoint_tol", adjoint_tol, low=0.0)
    inputs, tol_value = prepare(histograms, cost, weights, constraints, rho=(rho_in, rho_bar), tol=tol)
    spec = _Spec(
        allowed=inputs.allowed,
        eps=eps,
        tau_in=1.0 if math.isinf(rho_in) else rho_in / (rho_in + eps),
        tau_bar=1.0 if math.isinf(rho_bar) else rho_bar / (rho_bar + eps),
    )
    B, K, _ = inputs.hist.shape
    m = inputs.cost.shape[-1]
    dtype, device = inputs.hist.dtype, inputs.hist.device
    track = grad != "none" and torch.is_grad_enabled() and bool(inputs.grad_inputs)
    g0 = _initial(init, (B, K, m), eps, dtype, device)

    theta = (inputs.hist, inputs.weights, inputs.cost)
    run = dict(tol=tol_value, max_iter=max_iter, check_every=check_every)
    if track and grad == "unroll":
        parts = spec.parts(*theta)
        state, trace = _iterate(parts, spec, g0, track=True, kernel=False, **run)
    else:
        with torch.no_grad():
            parts = spec.parts(*theta)
            state, trace = _iterate(parts, spec, g0, track=False, kernel=method == "auto", **run)
        if track:  # grad == "implicit": the outputs are one sweep from the differentiable fixed point
            a_tol = adjoint_tol if adjoint_tol is not None else (1e-10 if dtype == torch.float64 else 1e-6)
            adj = _Adjoint(spec=spec, tol=a_tol, max_iter=max_iter)
            g_star = _FixedPoint.apply(state.g_in.detach(), adj, *theta)
            parts = spec.parts(*theta)
            state = _sweep(g_star, parts, spec, LogReduce(parts.log_k))

    _warn(trace, tol_value, max_iter)
    conv = lambda t: _convert(t, inputs, track)  # noqa: E731
    return BarycenterResult(
        barycenter=conv(torch.exp(state.lq)),
        n_iters=conv(trace.n_iters),
        converged=conv(trace.converged),
        diverged=conv(trace.diverged),
        error=conv(trace.error),
        errors=conv(trace.errors),
        check_iters=trace.check_iters,
        epsilon=eps,
        rho=(rho_in, rho_bar),
        tol=tol_value,
        _lu=state.lu,
        _g=state.g,
        _log_k=parts.log_k,
        _inputs=inputs,
        _track=track,
    )


def _initial(
    init: Optional[BarycenterResult],
    shape: tuple[int, int, int],
    eps: float,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    if init is None:
        return torch.zeros(shape, dtype=dtype, device=device)
    if not isinstance(init, BarycenterResult):
        raise ValueError(f"init is a {type(init).__name__}; expected None or a BarycenterResult")
    g = init._g.detach()
    if tuple(g.shape) != shape:
        raise ValueError(
            f"init has potentials of shape {tuple(g.shape)}; expected {shape} (B, K, m): warm-start "
            "from a result with the same shapes"
        )
    g = g.to(device=device, dtype=dtype) * (init.epsilon / eps)  # cost units -> log v at this epsilon
    return torch.where(torch.isfinite(g), g, 0.0)


def _warn(trace: _Trace, tol: float, max_iter: int) -> None:
    failed = ~trace.converged
    if not bool(failed.any()):
        return
    B = failed.numel()
    n_div = int(trace.diverged.sum())
    parts = []
    if n_div:
        parts.append(
            f"{n_div} of {B} problem(s) met non-finite values (rolled back to the last finite check)"
        )
    n_slow = int((failed & ~trace.diverged).sum())
    if n_slow:
        worst = float(torch.where(failed & ~trace.diverged, trace.error, 0.0).amax())
        parts.append(
            f"{n_slow} of {B} problem(s) did not reach tol={tol:g} within max_iter={max_iter} sweeps "
            f"(largest error {worst:.3g}); increase max_iter or epsilon, or see res.errors"
        )
    warnings.warn(NonConvergenceWarning("barycenter: " + "; ".join(parts)), stacklevel=3)
