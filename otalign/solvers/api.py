"""Front door of the solver layer: :func:`solve` and the named wrappers."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import torch

from ..constraints import factories
from ..warnings import NonConvergenceWarning
from .distributed import make_reducer
from .engine import Acceleration, Trace, center_potentials, iterate
from .exact import solve_exact
from .gradients import dual_value, implicit_duals
from .plan import make_log_plan
from .result import OTResult
from .setup import MAX_ITER, Prepared, check_scalar, prepare

__all__ = ["solve", "sinkhorn", "unbalanced", "partial", "GRAD_MODES", "DEFAULT_TOL", "default_tol"]

GRAD_MODES = ("implicit", "unroll", "envelope", "none")
METHODS = ("auto", "log")

Init = Union[OTResult, Sequence[Optional[torch.Tensor]], None]

#: default ``tol`` per compute dtype (L1 error in mass units). float32 resolves marginal errors
#: down to ~1e-6 at small epsilon (the log-domain arithmetic's resolution), so its default sits a
#: factor 10 above. In float64 1e-10: the envelope gradient of ``value`` w.r.t. the weights is the
#: potential up to ``epsilon * error / weight``, so this keeps it within ~1e-10 of ``f`` on small
#: problems (POT's ``stopThr`` default is 1e-9, on the L2 norm of one marginal).
DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


#: default ``adjoint_tol``: relative residual of the implicit backward's linear system
DEFAULT_ADJOINT_TOL = {torch.float64: 1e-10, torch.float32: 1e-6}


def default_tol(dtype: torch.dtype) -> float:
    """The default ``tol`` of a compute dtype (:data:`DEFAULT_TOL`; 1e-5 for any other)."""
    return DEFAULT_TOL.get(dtype, 1e-5)


def _initial_duals(prep: Prepared, init: Init) -> list[Optional[torch.Tensor]]:
    duals = [p.init_dual() for p in prep.projectors]
    if init is None:
        return duals
    if isinstance(init, OTResult):
        given = [None if d is None else d.detach() for d in init._state.duals]
        if len(given) != len(duals):
            raise ValueError(
                f"init is an OTResult with {len(given)} constraints; expected {len(duals)} "
                "(warm-start from a solve with the same constraint set)"
            )
        pairs = list(enumerate(given))
    else:
        try:
            f, g = init  # type: ignore[misc]
        except (TypeError, ValueError) as exc:
            raise ValueError("init must be an OTResult or a pair of potentials (f, g)") from exc
        from .footprint import COL, ROW

        pairs = []
        for fp, value in ((ROW, f), (COL, g)):
            k = next((k for k, p in enumerate(prep.projectors) if p.footprint is fp), None)
            if value is not None and k is not None:
                pairs.append((k, value))
    for k, value in pairs:
        if value is None or duals[k] is None:
            continue
        t = torch.as_tensor(value).detach().to(device=duals[k].device, dtype=duals[k].dtype)
        if t.shape == duals[k].shape[1:]:
            t = t.expand_as(duals[k])
        if t.shape != duals[k].shape:
            raise ValueError(
                f"init for constraints[{k}] has shape {tuple(t.shape)}; expected "
                f"{tuple(duals[k].shape)} or {tuple(duals[k].shape[1:])}"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"init for constraints[{k}] has non-finite entries; expected finite potentials")
        duals[k] = t.clone()
    return duals


def _input_tensors(prep: Prepared) -> list[tuple[str, torch.Tensor]]:
    """The caller's tensors, named: the geometry's (the cost, or the points) and every tensor
    field of a constraint."""
    named = list(prep.geometry.tensors())
    for k, c in enumerate(prep.constraints):
        named += [(f"constraints[{k}].{name}", v) for name, v in c.__dict__.items() if isinstance(v, torch.Tensor)]
    return named


def _grad_inputs(prep: Prepared) -> list[torch.Tensor]:
    """The inputs that require grad: the geometry's tensors and any tensor field of a constraint."""
    return [t for _, t in _input_tensors(prep) if t.requires_grad]


def solve(
    cost: torch.Tensor,
    constraints: Any = None,
    *,
    epsilon: float,
    tol: Optional[float] = None,
    max_iter: int = 1000,
    check_every: int = 10,
    entropy: str = "kl",
    init: Init = None,
    grad: str = "implicit",
    adjoint_tol: Optional[float] = None,
    adjoint_max_iter: Optional[int] = None,
    center: bool = True,
    method: str = "auto",
    overrelax: Union[None, str, float] = "adaptive",
    overrelax_start: Any = None,
    anneal: Optional[float] = None,
    translation: bool = True,
    warn: bool = True,
    shard: Optional[str] = None,
    group: Any = None,
) -> OTResult:
    """Solve a batch of entropic OT problems under declarative constraints.

    ``min_P <C, P> + epsilon * Omega(P) + sum_k penalty_k(P)`` subject to every hard constraint,
    with ``Omega = KL(P || a (x) b)`` (``entropy="kl"``) or ``sum P log P - P`` (``"shannon"``).

    Args:
        cost: ``(n, m)`` or ``(B, n, m)`` finite costs, any float dtype, any device.
        constraints: a constraint, a list of them or a :class:`~otalign.constraints.ConstraintSet`
            (default: :func:`otalign.constraints.balanced` with uniform weights).
        epsilon: entropic strength (> 0), in the units of the cost; ``0`` solves the exact
            problem with POT's network simplex (balanced) or exact partial solver (partial),
            returning an :class:`~otalign.solvers.exact.ExactResult` (see that module).
        tol: stopping tolerance on the error, in mass units (L1 marginal violation; for penalties
            and caps, the distance to the optimal plan certified by the duality gap or their
            complementarity residual; ``docs/concepts.md``, "Stopping"). ``None`` (default):
            :data:`DEFAULT_TOL` of the compute dtype, ``1e-10`` in float64 and ``1e-5`` in float32
            (a factor 10 above the float32 floor of ~1e-6 at small epsilon). ``0`` runs exactly
            ``max_iter`` sweeps.
        max_iter: maximum number of sweeps (one sweep updates every dual once).
        check_every: sweeps between two convergence checks (the only host synchronisation).
        entropy: ``"kl"`` or ``"shannon"`` (identical plans for balanced problems).
        init: warm start: a previous :class:`OTResult` with the same constraints, or ``(f, g)``.
        grad: how gradients reach the cost and the constraint tensors that require grad
            (``docs/gradients.md``): ``"implicit"`` (default: the gradient of ``value`` by the
            envelope theorem, exact at the optimum with no adjoint solve; every other output by
            the implicit function theorem, its adjoint system solved by GMRES; backward memory
            independent of the iteration count), ``"unroll"`` (autograd through the iterations:
            the derivative of what was computed, e.g. a fixed number of sweeps), ``"envelope"``
            (gradient of ``value`` only), ``"none"``.
        adjoint_tol, adjoint_max_iter: stopping rule of the implicit mode's adjoint solve
            (relative residual of the linear system; defaults ``1e-10`` in float64, ``1e-6``
            otherwise, and ``max(max_iter, 100)`` vector-Jacobian products). Its outcome is in
            ``res.adjoint`` after a backward pass (and warned about when it falls short).
        method: ``"auto"`` (log-domain sweeps, switching to the stabilised kernel domain whenever
            the scalings move slowly enough for it to be exact) or ``"log"`` (log domain only).
        overrelax: ``"adaptive"`` (default: per-problem ``omega`` from the measured contraction
            rate once the error falls geometrically, back to 1 and retried more damped when the
            error grows), a fixed ``omega`` in ``[1, 2)``, or None for plain sweeps (e.g. a fixed
            number of Sinkhorn iterations that a loss is defined by).
        overrelax_start: with ``overrelax="adaptive"``: the ``omega`` to start from (a number or
            a ``(B,)`` tensor in ``[1, 2)``; default 1), e.g. ``res.omega`` of the previous solve
            of a similar problem, as a warm start of the over-relaxation (the rule otherwise
            needs a few checks to measure a rate before it raises ``omega``); it is reset to 1
            like an ``omega`` the rule set if the error grows.
        anneal: epsilon scaling: a factor in (0, 1); sweeps run at ``eps0, eps0 * anneal, ...``
            (``check_every`` sweeps each, ``eps0`` the largest cost range of the batch) down to
            ``epsilon``, where the ordinary stopping test runs. Counted in ``n_iters``.
        translation: end every sweep with the closed-form translation step ``(f + t, g - t)``
            of unbalanced problems (a row and a column marginal, hard or KL-penalised, not both
            hard): it removes the slow convergence of the total mass when ``rho >> epsilon``
            (``docs/concepts.md``). ``False`` runs plain sweeps (e.g. a fixed number of Sinkhorn
            iterations that a loss is defined by).
        warn: issue a :class:`~otalign.NonConvergenceWarning` when a problem of the call did not
            converge (it is reported in ``res.converged`` either way).
        center: centre the potentials of balanced problems (``<f, a> = <g, b>``); ``False``
            returns the duals exactly as iterated from ``init`` (e.g. the scalings ``u, v`` of
            Sinkhorn started from ``v = 1``).
        shard: None (one process) or ``"rows"``: solve one global problem across the ranks of
            the ``torch.distributed`` process group ``group`` (default group when None). Each
            rank passes ITS rows: a cost block ``(n_r, m)`` / ``(B, n_r, m)`` or a point cloud
            whose ``x`` is its shard, and constraints whose row-side tensors are its slices
            (``weights=None`` is uniform over the global rows). ``plan``, ``log_plan``, ``f`` are
            the local rows; ``g``, ``value``, ``n_iters``, ``converged`` are global
            (``docs/distributed.md``). Every rank must call the solve (and backpropagate).

    Returns:
        An :class:`OTResult`; per-problem ``converged`` says whether ``tol`` was met.
    """
    if tol is not None:
        tol = check_scalar("tol", tol, low=0.0, strict=False)
    max_iter = check_scalar("max_iter", max_iter, low=0, strict=False, integer=True, high=MAX_ITER)
    check_every = check_scalar("check_every", check_every, low=1, strict=False, integer=True, high=MAX_ITER)
    if grad not in GRAD_MODES:
        raise ValueError(f"grad={grad!r}; expected one of {GRAD_MODES}")
    if adjoint_tol is not None:
        adjoint_tol = check_scalar("adjoint_tol", adjoint_tol, low=0.0)
    if adjoint_max_iter is not None:
        adjoint_max_iter = check_scalar("adjoint_max_iter", adjoint_max_iter, low=1, strict=False, integer=True,
                                        high=MAX_ITER)
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    if overrelax is not None and overrelax != "adaptive":
        if isinstance(overrelax, str):
            raise ValueError(f"overrelax={overrelax!r}; expected None, 'adaptive' or a number in [1, 2)")
        overrelax = check_scalar("overrelax", overrelax, low=1.0, strict=False)
        if overrelax >= 2:
            raise ValueError(f"overrelax={overrelax!r}; expected None, 'adaptive' or a number in [1, 2)")
    if overrelax_start is not None:
        if overrelax != "adaptive":
            raise ValueError(f"overrelax_start is given with overrelax={overrelax!r}; expected overrelax='adaptive'")
        start = torch.as_tensor(overrelax_start).detach()
        if start.dim() > 1 or not bool(torch.isfinite(start).all()) or bool(((start < 1) | (start >= 2)).any()):
            raise ValueError(f"overrelax_start={overrelax_start!r}; expected a number or a (B,) tensor in [1, 2)")
        overrelax_start = start
    if anneal is not None:
        anneal = check_scalar("anneal", anneal, low=0.0)
        if anneal >= 1:
            raise ValueError(f"anneal={anneal!r}; expected None or a factor in (0, 1)")
    reducer = make_reducer(shard, group)
    if constraints is None:
        constraints = factories.balanced()
    if epsilon is None:
        raise ValueError("epsilon=None; expected a finite number >= 0 (0: exact OT)")
    if _is_zero(epsilon) and reducer.sharded:
        raise ValueError("epsilon=0 with shard='rows'; the exact solver runs on one process (expected epsilon > 0)")
    if _is_zero(epsilon):
        if init is not None:
            raise ValueError("init is given with epsilon=0; the exact solver (network simplex) takes no warm start")
        return solve_exact(prepare(cost, constraints, epsilon=None, entropy=entropy), cost)
    prep = prepare(cost, constraints, epsilon=epsilon, entropy=entropy, reducer=reducer)
    epsilon = float(epsilon)
    if overrelax_start is not None and overrelax_start.numel() not in (1, prep.problem.batch):
        raise ValueError(f"overrelax_start has {overrelax_start.numel()} values for a batch of {prep.problem.batch}; "
                         "expected one number or one per problem")
    if tol is None:
        tol = default_tol(prep.problem.dtype)
    grad_inputs = _grad_inputs(prep) if torch.is_grad_enabled() else []
    track = grad != "none" and bool(grad_inputs)
    footprints = [p.footprint for p in prep.projectors]

    def make_plan(duals, inplace=False):
        return make_log_plan(prep.geometry, epsilon, prep.log_ra, prep.log_rb, prep.terms, footprints, duals,
                             inplace=inplace, reducer=reducer)

    with torch.no_grad():
        duals = _initial_duals(prep, init)
    envelope = anchor = adjoint = None
    acc = Acceleration(
        kernel=method == "auto",
        overrelax=overrelax,
        omega_start=overrelax_start,
        anneal=None if anneal is None else (reducer.max_float(prep.geometry.extent()[1]), anneal),
        stage_iters=check_every,
        translation=translation,
    )
    run = dict(tol=tol, max_iter=max_iter, check_every=check_every, acceleration=acc)
    if track and grad == "unroll":
        state = make_plan(duals)
        trace = iterate(state, prep.projectors, **run)
    else:
        with torch.no_grad():
            state = make_plan(duals, inplace=True)
            trace = iterate(state, prep.projectors, **run)
        final = [None if d is None else d.detach() for d in state.duals]
        if not track:
            state.inplace = False  # keep the solved state; results are computed functionally
        else:
            envelope = _envelope_value(make_plan, final, prep, trace, epsilon=epsilon, entropy=entropy, tol=tol)
        if track and grad == "implicit":
            final, adjoint = implicit_duals(
                make_plan, prep.projectors, final,
                tol=DEFAULT_ADJOINT_TOL.get(prep.problem.dtype, 1e-6) if adjoint_tol is None else adjoint_tol,
                max_iter=max(max_iter, 100) if adjoint_max_iter is None else adjoint_max_iter,
                warn=warn,
            )
        if track:
            state = make_plan(final)
        if track and grad == "envelope":
            anchor = grad_inputs[0]  # a tensor that requires grad, to hang the output guards on
    if center:
        center_potentials(state, prep.projectors)
    if warn:
        warn_unconverged(trace, tol=tol, max_iter=max_iter, dtype=prep.problem.dtype)
    return OTResult(
        state,
        prep.projectors,
        prep.constraints,
        trace,
        epsilon=epsilon,
        entropy=entropy,
        tol=tol,
        batched=prep.batched,
        out_dtype=prep.out_dtype,
        grad=grad if track else "none",
        envelope_value=envelope,
        anchor=anchor,
        adjoint=adjoint,
        inputs=_input_tensors(prep),
    )


def _envelope_value(make_plan, duals, prep: Prepared, trace: Trace, *, epsilon: float, entropy: str, tol: float):
    """A zero-argument callable returning ``(B,)`` values whose gradient is Danskin's: the value
    (the primal objective of the solved duals) plus ``D(d, theta) - D(d, theta).detach()`` with
    the duals ``d`` held fixed, so that ``dvalue/dtheta = dD/dtheta`` (``dvalue/dC`` is the plan,
    the weights get the potentials): exact at the optimum, no adjoint solve. Evaluated on the
    first read of ``res.value``."""

    def value() -> torch.Tensor:
        state = make_plan(duals)
        with torch.no_grad():
            primal = OTResult(state, prep.projectors, prep.constraints, trace, epsilon=epsilon, entropy=entropy,
                              tol=tol, batched=True, out_dtype=prep.problem.dtype)._value
        with torch.enable_grad():
            dual = dual_value(state, prep.projectors, entropy)
        return primal + (dual - dual.detach())

    return value


def _is_zero(epsilon: Any) -> bool:
    """``epsilon == 0`` for a number (not a bool); anything else is validated by :func:`prepare`."""
    if isinstance(epsilon, torch.Tensor) and epsilon.numel() == 1:
        epsilon = epsilon.item()
    return isinstance(epsilon, numbers.Real) and not isinstance(epsilon, (bool, np.bool_)) and epsilon == 0


def warn_unconverged(trace: Trace, *, tol: float, max_iter: int, dtype: torch.dtype) -> None:
    """One :class:`NonConvergenceWarning` naming how many problems missed ``tol`` and why."""
    missed = ~trace.converged
    count = int(missed.sum())
    if count == 0 or tol == 0:
        return
    B = missed.numel()
    diverged = int((missed & trace.diverged).sum())
    stalled = int((missed & trace.stalled).sum())
    finite = trace.error.detach()[missed & torch.isfinite(trace.error.detach())]
    worst = f"{float(finite.max()):.3g}" if finite.numel() else "nan"
    reasons = []
    if diverged:
        reasons.append(f"{diverged} met non-finite values")
    if stalled:
        floor = " (in float32 the floor is ~1e-6 at small epsilon: use float64)" if dtype == torch.float32 else ""
        reasons.append(f"{stalled} stalled: more sweeps would not help; raise tol{floor} or epsilon")
    if count - diverged - stalled:
        reasons.append(f"{count - diverged - stalled} still improving at max_iter={max_iter}: raise max_iter")
    warnings.warn(
        f"{count} of {B} problem(s) did not converge to tol={tol:g} (largest error {worst}): "
        + "; ".join(reasons) + ". See res.converged, res.error, res.stalled.",
        NonConvergenceWarning,
        stacklevel=3,
    )


def sinkhorn(cost: torch.Tensor, a: Any = None, b: Any = None, *, epsilon: float, **kwargs: Any) -> OTResult:
    """Balanced entropic OT (log-domain Sinkhorn): rows sum to ``a``, columns to ``b``."""
    return solve(cost, factories.balanced(a, b), epsilon=epsilon, **kwargs)


def unbalanced(
    cost: torch.Tensor,
    a: Any = None,
    b: Any = None,
    *,
    epsilon: float,
    rho: Union[float, Sequence[float]],
    **kwargs: Any,
) -> OTResult:
    """KL-relaxed marginals with strength ``rho`` (a pair for per-side values; ``inf`` = hard)."""
    return solve(cost, factories.unbalanced(rho, a, b), epsilon=epsilon, **kwargs)


def partial(
    cost: torch.Tensor,
    a: Any = None,
    b: Any = None,
    *,
    epsilon: float,
    mass: float,
    **kwargs: Any,
) -> OTResult:
    """Partial transport of ``mass`` with rows ``<= a`` and columns ``<= b``."""
    return solve(cost, factories.partial(mass, a, b), epsilon=epsilon, **kwargs)
