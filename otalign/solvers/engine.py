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
from .plan import SAFE_DRIFT, LogPlan
from .registry import Projector

__all__ = ["Trace", "Acceleration", "iterate", "sweep", "measure_errors", "center_potentials"]


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


def sweep(
    plan: LogPlan,
    projectors: list[Projector],
    ids: list[int],
    active: Optional[torch.Tensor],
    omega: Optional[torch.Tensor] = None,
) -> None:
    """Update every dual once, in order; problems outside ``active`` (if given) keep theirs.

    ``omega`` (``(B,)``, or None for 1) over-relaxes the duals of relaxable projectors:
    ``d <- d + omega * (update(d) - d)``.
    """
    for k in ids:
        proj = projectors[k]
        old = plan.duals[k]
        new = proj.update(old, plan.log_marginal(proj.footprint), plan.eps)
        if omega is not None and proj.relaxable:
            new = old + _mask(omega, new) * (new - old)
        if active is not None:
            new = torch.where(_mask(active, new), new, old)
        plan.set_dual(k, new)


@dataclass
class Acceleration:
    """Options of the loop beyond plain sweeps (see ``docs/concepts.md``, "Speed").

    * ``kernel``: use the stabilised kernel domain when it is safe (decided at every check).
    * ``overrelax``: None, a fixed ``omega`` in [1, 2), or ``"adaptive"`` (:func:`_adapt_omega`).
    * ``schedule``: epsilons (decreasing, above the target) to run ``stage_iters`` sweeps at before
      the target epsilon (epsilon scaling); the ordinary stopping test then runs at the target.
    """

    kernel: bool = False
    overrelax: Optional[object] = None
    omega_max: float = 1.8
    schedule: tuple[float, ...] = ()
    stage_iters: int = 10


def _omega(acc: Acceleration, B: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    if acc.overrelax is None:
        return None
    start = 1.0 if acc.overrelax == "adaptive" else float(acc.overrelax)
    return torch.full((B,), start, dtype=like.dtype, device=like.device)


def iterate(
    plan: LogPlan,
    projectors: list[Projector],
    *,
    tol: float,
    max_iter: int,
    check_every: int,
    acceleration: Optional[Acceleration] = None,
) -> Trace:
    """Run sweeps until every problem meets ``tol``, diverges, or ``max_iter`` is reached."""
    acc = acceleration or Acceleration()
    B = plan.batch
    device = plan.log_ra.device
    dtype = plan.log_ra.dtype
    ids = [k for k, p in enumerate(projectors) if p.footprint is not None]
    active = torch.ones(B, dtype=torch.bool, device=device)
    all_active = True
    converged = torch.zeros(B, dtype=torch.bool, device=device)
    diverged = torch.zeros(B, dtype=torch.bool, device=device)
    n_iters = torch.full((B,), max_iter, dtype=torch.long, device=device)
    error = torch.full((B,), math.inf, dtype=dtype, device=device)
    history: list[torch.Tensor] = []
    check_iters: list[int] = []
    previous: list[Optional[torch.Tensor]] = [None] * len(projectors)  # duals at the last check
    marginals: list[Optional[torch.Tensor]] = [None] * len(projectors)  # tracked marginals there
    omega = _omega(acc, B, error)
    blocked = torch.zeros(B, dtype=torch.bool, device=device)
    ratio = torch.full((B,), math.nan, dtype=dtype, device=device)
    just_set = torch.zeros(B, dtype=torch.bool, device=device)
    kernel = acc.kernel and plan.kernel_capable
    safe = SAFE_DRIFT.get(dtype, 30.0)
    target_eps = plan.eps
    it = 0

    # epsilon scaling: fixed sweeps at each epsilon of the schedule (no stopping test there)
    for eps in acc.schedule:
        plan.set_epsilon(eps)
        for _ in range(min(acc.stage_iters, max_iter - it)):
            sweep(plan, projectors, ids, None)
            it += 1
    if acc.schedule:
        plan.set_epsilon(target_eps)
    before_last = (plan.F, plan.G)  # potentials before the last sweep (duals are replaced, not mutated)

    while True:
        if (it % check_every == 0 or it == max_iter) and (not check_iters or it != check_iters[-1]):
            finite = _finite(plan, ids)
            if not bool(finite.all()):
                if plan.mode == "kernel":  # not a divergence: redo the interval in the log domain
                    for k in ids:
                        plan.set_dual(k, previous[k])
                    plan.leave_kernel()
                    kernel = False
                    it = check_iters[-1]
                    continue
                bad = active & ~finite
                for k in ids:  # roll back to the last check
                    if previous[k] is not None:
                        plan.set_dual(k, torch.where(_mask(bad, previous[k]), previous[k], plan.duals[k]))
            if kernel and not check_iters and plan.mode != "kernel":
                # no movement measured yet: enter the kernel domain now if nothing significant
                # underflows, so that even this first check reads the marginals by mat-vec products
                plan.absorb_if_safe_at_start(safe)
            elif plan.mode == "kernel" and _largest(plan.kernel_drift(), active) > safe:
                plan.absorb()  # the stopping test always reads an exact kernel
            err, marginals = measure_errors(plan, projectors, marginals)
            err = torch.where(finite, err, torch.full_like(err, math.nan))
            if omega is not None and acc.overrelax == "adaptive" and history:
                omega, blocked, ratio, just_set = _adapt_omega(
                    omega, blocked, ratio, just_set, err, history[-1], check_every, acc.omega_max)
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
            if kernel and len(check_iters) > 1:  # the last sweep's movement decides
                _choose_domain(plan, before_last, active, safe, check_every)
        before_last = (plan.F, plan.G)
        sweep(plan, projectors, ids, None if all_active else active, omega)
        it += 1

    if plan.mode == "kernel":
        plan.leave_kernel(keep=True)  # the final plan can be scaled from this kernel
    return Trace(
        errors=torch.stack(history, dim=1),
        check_iters=check_iters,
        error=error,
        n_iters=n_iters,
        converged=converged,
        diverged=diverged,
    )


def _adapt_omega(omega, blocked, ratio, just_set, err, last, check_every, omega_max):
    """Adaptive over-relaxation, per problem.

    While ``omega == 1`` the error ratio between checks is recorded; once two consecutive ratios
    agree within 2% and are above 0.8 (the slow, asymptotic regime, where over-relaxation pays
    off and the linearisation holds), ``omega`` is set from the measured rate ``r`` per sweep:
    ``1 + 0.75 * (2 / (1 + sqrt(1 - r)) - 1)`` (the optimal over-relaxation of the linearised
    iteration, damped for the non-linear regime), capped at ``omega_max``. Safeguard: a problem
    whose error grows at a check (other than the one right after ``omega`` was set, where a
    transient bump is normal) goes back to ``omega = 1`` for good.
    Returns ``(omega, blocked, ratio, just_set)``.
    """
    grew = (err > last) & (omega > 1) & ~just_set
    blocked = blocked | grew
    omega = torch.where(blocked, torch.ones_like(omega), omega)
    new_ratio = torch.where(last > 0, err / last, torch.full_like(err, math.nan))
    plain = (omega == 1.0) & ~blocked
    stable = plain & (new_ratio < 1) & (new_ratio > 0.8) & ((new_ratio - ratio).abs() <= 0.02 * new_ratio)
    rate = torch.clamp(new_ratio, min=0.0, max=0.9999) ** (1.0 / check_every)
    target = 1.0 + 0.75 * (2.0 / (1.0 + torch.sqrt(1.0 - rate)) - 1.0)
    omega = torch.where(stable, torch.clamp(target, max=omega_max), omega)
    return omega, blocked, torch.where(plain, new_ratio, ratio), stable


def _largest(values: torch.Tensor, active: torch.Tensor) -> float:
    return float(torch.where(active, values, torch.zeros_like(values)).amax())


def _choose_domain(plan: LogPlan, before_last, active: torch.Tensor, safe: float, check_every: int) -> None:
    """Pick the domain of the next interval. The kernel domain unless ``check_every`` sweeps
    moving as much as the last one could drift the scalings past ``2 * safe`` log units (where
    the products could overflow); within ``safe`` the kernel is exact, beyond it only entries that
    were negligible at absorption are misrepresented, and the next check re-absorbs before it
    measures the error."""
    F0, G0 = before_last
    step = torch.maximum((plan.F - F0).abs().amax(-1), (plan.G - G0).abs().amax(-1)) / plan.eps
    projected = check_every * _largest(step, active)
    if not math.isfinite(projected) or projected > 2 * safe:
        plan.leave_kernel()
    elif plan.mode == "log":
        plan.absorb()


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
