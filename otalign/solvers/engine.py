"""The iteration loop: cyclic dual updates, per-problem stopping, error history.

One *sweep* updates every dual once, in the order of the constraint set (for ``balanced`` that is
rows then columns: log-domain Sinkhorn; with caps it is Dykstra's algorithm in dual form). Every
``check_every`` sweeps (and at 0 and at ``max_iter``) the engine measures, per problem,

* the largest violation of the hard constraints (L1 marginal errors, mass and block errors), and
* for penalised or inequality constraints, how much their duals still move the plan: the L1
  change, since the previous check, of the marginal ``mu`` that the dual controls,
  ``sum_i |mu_i - mu_i_prev|`` (mass units). Measuring the movement through the marginal rather
  than the raw dual ignores the gauge drift ``(f + c, g - c)`` of nearly balanced problems (large
  ``rho``), which leaves the plan unchanged but converges at a rate ``1 - O(eps / rho)``,

and takes the max of the two as the problem's error. A problem whose error is ``<= tol`` stops
changing (its duals are frozen with a mask; no Python loop over problems). A problem whose duals
become non-finite is rolled back to its last finite check and stops with ``converged = False``.
The host synchronises only at checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .footprint import COL, ROW
from .plan import LogPlan
from .registry import Projector

__all__ = ["Trace", "iterate", "measure_errors", "center_potentials"]


@dataclass
class Trace:
    """What the loop did, per problem (all tensors have a leading batch dimension B)."""

    errors: torch.Tensor  # (B, n_checks); NaN after the problem stopped
    check_iters: list[int]  # iteration number of each check
    error: torch.Tensor  # (B,) last measured error
    n_iters: torch.Tensor  # (B,) sweeps performed before the problem stopped
    converged: torch.Tensor  # (B,) error <= tol
    diverged: torch.Tensor  # (B,) non-finite values met (rolled back)


def measure_errors(
    plan: LogPlan, projectors: list[Projector], previous: list[Optional[torch.Tensor]]
) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
    """``(B,)`` stopping error of the current iterate (see the module docstring).

    ``previous`` holds the marginals of the tracked constraints at the last check (None: no
    check yet); the current ones are returned for the next call.
    """
    B = plan.batch
    err = torch.zeros(B, dtype=plan.log_ra.dtype, device=plan.log_ra.device)
    current: list[Optional[torch.Tensor]] = [None] * len(projectors)
    for k, proj in enumerate(projectors):
        if proj.footprint is None:
            continue
        log_mu = plan.log_marginal(proj.footprint)
        if proj.hard:
            err = torch.maximum(err, proj.violation(log_mu))
        if proj.tracks_dual_change:
            mu = torch.exp(log_mu)
            current[k] = mu
            if previous[k] is None:
                moved = torch.full_like(err, math.inf)
            else:
                moved = (mu - previous[k]).abs().reshape(B, -1).sum(-1)
            err = torch.maximum(err, moved)
    return err, current


def _finite(plan: LogPlan, ids: list[int]) -> torch.Tensor:
    ok = torch.ones(plan.batch, dtype=torch.bool, device=plan.log_ra.device)
    for k in ids:
        ok = ok & torch.isfinite(plan.duals[k]).reshape(plan.batch, -1).all(-1)
    return ok


def _mask(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flags.reshape(flags.shape + (1,) * (like.dim() - 1))


def sweep(plan: LogPlan, projectors: list[Projector], ids: list[int], active: Optional[torch.Tensor]) -> None:
    """Update every dual once, in order; problems outside ``active`` (if given) keep theirs."""
    for k in ids:
        proj = projectors[k]
        old = plan.duals[k]
        new = proj.update(old, plan.log_marginal(proj.footprint), plan.eps)
        if active is not None:
            new = torch.where(_mask(active, new), new, old)
        plan.set_dual(k, new)


def iterate(
    plan: LogPlan,
    projectors: list[Projector],
    *,
    tol: float,
    max_iter: int,
    check_every: int,
) -> Trace:
    """Run sweeps until every problem meets ``tol``, diverges, or ``max_iter`` is reached."""
    B = plan.batch
    device = plan.log_ra.device
    ids = [k for k, p in enumerate(projectors) if p.footprint is not None]
    active = torch.ones(B, dtype=torch.bool, device=device)
    all_active = True
    converged = torch.zeros(B, dtype=torch.bool, device=device)
    diverged = torch.zeros(B, dtype=torch.bool, device=device)
    n_iters = torch.full((B,), max_iter, dtype=torch.long, device=device)
    error = torch.full((B,), math.inf, dtype=plan.log_ra.dtype, device=device)
    history: list[torch.Tensor] = []
    check_iters: list[int] = []
    previous: list[Optional[torch.Tensor]] = [None] * len(projectors)  # duals at the last check
    marginals: list[Optional[torch.Tensor]] = [None] * len(projectors)  # tracked marginals there

    it = 0
    while True:
        if it % check_every == 0 or it == max_iter:
            finite = _finite(plan, ids)
            if not bool(finite.all()):  # roll back to the last finite check
                bad = active & ~finite
                for k in ids:
                    if previous[k] is not None:
                        plan.set_dual(k, torch.where(_mask(bad, previous[k]), previous[k], plan.duals[k]))
            err, marginals = measure_errors(plan, projectors, marginals)
            err = torch.where(finite, err, torch.full_like(err, math.nan))
            history.append(torch.where(active, err, torch.full_like(err, math.nan)))
            check_iters.append(it)
            ok = active & finite & (err <= tol)
            stop = ok | (active & ~finite)
            converged = converged | ok
            diverged = diverged | (active & ~finite)
            n_iters = torch.where(stop, torch.full_like(n_iters, it), n_iters)
            error = torch.where(active, err, error)
            active = active & ~stop
            previous = list(plan.duals)  # duals are replaced, never modified in place
            n_active = int(active.sum())
            if it >= max_iter or n_active == 0:
                break
            all_active = n_active == B
        sweep(plan, projectors, ids, None if all_active else active)
        it += 1

    return Trace(
        errors=torch.stack(history, dim=1),
        check_iters=check_iters,
        error=error,
        n_iters=n_iters,
        converged=converged,
        diverged=diverged,
    )


def center_potentials(plan: LogPlan, projectors: list[Projector]) -> None:
    """Fix the gauge of balanced problems: ``(f + c, g - c)`` leaves the plan unchanged, so choose
    ``c`` with ``<f, a> = <g, b>``. Applied only when the duals are exactly one hard row equality
    and one hard column equality (elsewhere the duals are unique or the gauge is richer)."""
    ids = [k for k, p in enumerate(projectors) if p.footprint is not None]
    if len(ids) != 2:
        return
    kr, kc = ids if projectors[ids[0]].footprint is ROW else ids[::-1]
    pr, pc = projectors[kr], projectors[kc]
    if not (pr.footprint is ROW and pc.footprint is COL):
        return
    if not (pr.is_hard_equality and pc.is_hard_equality):
        return
    # zero weights are padding: mask them so that they receive no gradient through the centring
    a = torch.where(pr.weights > 0, pr.weights, torch.zeros_like(pr.weights))
    b = torch.where(pc.weights > 0, pc.weights, torch.zeros_like(pc.weights))
    f, g = plan.duals[kr], plan.duals[kc]
    c = ((g * b).sum(-1) - (f * a).sum(-1)) / (a.sum(-1) + b.sum(-1))
    plan.set_dual(kr, f + c[:, None])
    plan.set_dual(kc, g - c[:, None])
