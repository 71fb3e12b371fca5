"""Front door of the solver layer: :func:`solve` and the named wrappers."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch

from ..constraints import factories
from .engine import center_potentials, iterate
from .plan import LogPlan
from .result import OTResult
from .setup import Prepared, check_scalar, prepare

__all__ = ["solve", "sinkhorn", "unbalanced", "partial", "GRAD_MODES"]

GRAD_MODES = ("unroll", "none")

Init = Union[OTResult, Sequence[Optional[torch.Tensor]], None]


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


def _needs_graph(cost: torch.Tensor, prep: Prepared) -> bool:
    if not torch.is_grad_enabled():
        return False
    tensors = [cost]
    for c in prep.constraints:
        tensors += [v for v in c.__dict__.values() if isinstance(v, torch.Tensor)]
    return any(t.requires_grad for t in tensors)


def solve(
    cost: torch.Tensor,
    constraints: Any = None,
    *,
    epsilon: float,
    tol: float = 1e-6,
    max_iter: int = 1000,
    check_every: int = 10,
    entropy: str = "kl",
    init: Init = None,
    grad: str = "unroll",
) -> OTResult:
    """Solve a batch of entropic OT problems under declarative constraints.

    ``min_P <C, P> + epsilon * Omega(P) + sum_k penalty_k(P)`` subject to every hard constraint,
    with ``Omega = KL(P || a (x) b)`` (``entropy="kl"``) or ``sum P log P - P`` (``"shannon"``).

    Args:
        cost: ``(n, m)`` or ``(B, n, m)`` finite costs, any float dtype, any device.
        constraints: a constraint, a list of them or a :class:`~otalign.constraints.ConstraintSet`
            (default: :func:`otalign.constraints.balanced` with uniform weights).
        epsilon: entropic strength (> 0), in the units of the cost.
        tol: stopping tolerance on the error (L1 marginal violation and, for penalties and caps,
            the mass-weighted change of the duals between checks); see ``docs/concepts.md``.
        max_iter: maximum number of sweeps (one sweep updates every dual once).
        check_every: sweeps between two convergence checks (the only host synchronisation).
        entropy: ``"kl"`` or ``"shannon"`` (identical plans for balanced problems).
        init: warm start: a previous :class:`OTResult` with the same constraints, or ``(f, g)``.
        grad: ``"unroll"`` (autograd through the iterations) or ``"none"`` (detached outputs).

    Returns:
        An :class:`OTResult`; per-problem ``converged`` says whether ``tol`` was met.
    """
    check_scalar("tol", tol, low=0.0)
    check_scalar("max_iter", max_iter, low=0, strict=False, integer=True)
    check_scalar("check_every", check_every, low=1, strict=False, integer=True)
    if grad not in GRAD_MODES:
        raise ValueError(f"grad={grad!r}; expected one of {GRAD_MODES}")
    if constraints is None:
        constraints = factories.balanced()
    prep = prepare(cost, constraints, epsilon=epsilon, entropy=entropy)
    track = grad == "unroll" and _needs_graph(cost, prep)
    ctx = contextlib.nullcontext() if track else torch.no_grad()
    with ctx:
        duals = _initial_duals(prep, init)
        state = LogPlan(
            prep.cost,
            epsilon,
            prep.log_ra,
            prep.log_rb,
            prep.allowed,
            [p.footprint for p in prep.projectors],
            duals,
            inplace=not track,
        )
        trace = iterate(state, prep.projectors, tol=tol, max_iter=max_iter, check_every=check_every)
        center_potentials(state, prep.projectors)
        state.inplace = False  # results are computed functionally (differentiable)
        result = OTResult(
            state,
            prep.projectors,
            prep.constraints,
            trace,
            epsilon=epsilon,
            entropy=entropy,
            tol=tol,
            batched=prep.batched,
            out_dtype=prep.out_dtype,
        )
    return result


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
