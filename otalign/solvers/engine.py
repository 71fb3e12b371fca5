"""The iteration loop: cyclic dual updates, per-problem stopping, error history.

One *sweep* updates every dual once, in the order of the constraint set (for ``balanced`` that is
rows then columns: log-domain Sinkhorn; with caps it is Dykstra's algorithm in dual form). When a
row marginal and a column marginal are equalities that are hard or KL-penalised (not both hard),
every sweep ends with a *translation step*: ``(f + t, g - t)`` leaves the plan unchanged, and the
``t`` that maximises the dual objective has a closed form (Sejourne, Vialard, Peyre 2022,
"translation invariant Sinkhorn"); it removes the slow mode of unbalanced problems with a large
``rho / epsilon``, whose mass otherwise converges at the rate ``1 - O(epsilon / rho)``.

Every ``check_every`` sweeps (and at 0 and at ``max_iter``) the engine measures, per problem,

* the largest violation of the hard constraints (L1 marginal errors, mass and block errors), and
* when a constraint is a penalty or an inequality (``needs_certificate``), what its share of
  the duality gap certifies (:meth:`Projector.certificate`; the gap is the primal objective of
  the current plan minus the dual objective of the current duals, a sum of one Fenchel-Young gap
  per constraint):

  - the smooth parts (KL penalties) bound the L1 distance to the optimal plan: strong convexity
    of the entropic objective gives ``epsilon KL(P* || P) <= gap`` when the hard constraints
    hold, hence (Pinsker's inequality for measures of mass ``m``)
    ``||P - P*||_1 <= g/3 + sqrt(g^2/9 + 2 m g)``, ``g = gap / epsilon``;
  - the first-order parts (caps, TV penalties, whose gap is linear in rounding errors, so that a
    distance bound from it could not go below ~1e-8 in float64 and ~1e-3 in float32) give a
    complementarity residual in mass units: the L1 change of the targets that would make the
    current plan exactly optimal, the same backward error as a hard marginal's violation,

and takes the max of the two as the problem's error. A problem whose error is ``<= tol`` stops
changing (its duals are frozen with a mask; no Python loop over problems). A problem whose duals
become non-finite is rolled back to its last finite check and stops with ``converged = False``.
The host synchronises only at checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from .footprint import COL, ROW, SCALAR
from .fused import build_fused
from .plan import SAFE_DRIFT, LogPlan
from .registry import Projector, translation_shift

__all__ = ["Trace", "Acceleration", "iterate", "sweep", "measure_errors", "measure_gap", "center_potentials"]


@dataclass
class Trace:
    """What the loop did, per problem (all tensors have a leading batch dimension B)."""

    errors: torch.Tensor  # (B, n_checks); NaN after the problem stopped
    check_iters: list[int]  # iteration number of each check
    error: torch.Tensor  # (B,) last measured error
    n_iters: torch.Tensor  # (B,) sweeps performed before the problem stopped
    converged: torch.Tensor  # (B,) error <= tol
    diverged: torch.Tensor  # (B,) non-finite values met (rolled back)
    gap: torch.Tensor  # (B,) duality gap (primal minus dual objective) at the last check
    stalled: torch.Tensor  # (B,) stopped early: no progress over the stall window (see iterate)
    omega: Optional[torch.Tensor] = None  # (B,) over-relaxation at the end (None: plain sweeps)


def certified_distance(gap: torch.Tensor, mass: torch.Tensor, eps: float) -> torch.Tensor:
    """``(B,)`` bound on ``||P - P*||_1`` from a duality gap: ``g/3 + sqrt(g^2/9 + 2 m g)``.

    ``eps KL(P* || P) <= gap`` and ``||p - q||_1^2 <= (2/3 m_p + 4/3 m_q) KL(p || q)`` with
    ``m_p <= m + ||p - q||_1``.
    """
    g = gap / eps
    return g / 3 + torch.sqrt(g * g / 9 + 2 * mass * g)


def measure_errors(plan: LogPlan, projectors: list[Projector]) -> torch.Tensor:
    """``(B,)`` stopping error of the current iterate (module docstring): the largest of the hard
    violations, the complementarity residuals of the first-order constraints and the distance to
    the optimal plan certified by the smooth part of the duality gap
    (:meth:`Projector.certificate`). The whole gap is :func:`measure_gap` (read at a problem's
    last check only).
    """
    err: Optional[torch.Tensor] = None
    smooth: Optional[torch.Tensor] = None

    def worst(a: Optional[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        return b if a is None else torch.maximum(a, b)

    for k, proj in enumerate(projectors):
        if proj.footprint is None:
            continue
        log_mu = plan.log_marginal(proj.footprint)
        # a row constraint's terms are sums over the rows: add up the ranks' parts (row sharding)
        total = plan.reducer.sum if proj.footprint is ROW else _same
        if proj.hard:
            err = worst(err, total(proj.violation(log_mu)))
        if proj.needs_certificate:
            part, residual = (total(t) for t in proj.certificate(plan.duals[k], log_mu))
            part = torch.clamp(part, min=0.0)  # negative: rounding
            smooth = part if smooth is None else smooth + part
            err = worst(err, residual)
    if smooth is not None:
        mass = torch.exp(plan.log_marginal(SCALAR))
        err = worst(err, certified_distance(smooth, mass, plan.eps))
    if err is None:
        return torch.zeros(plan.batch, dtype=plan.log_ra.dtype, device=plan.log_ra.device)
    return err if err.shape == (plan.batch,) else err.expand(plan.batch)


def measure_gap(plan: LogPlan, projectors: list[Projector]) -> torch.Tensor:
    """``(B,)`` duality gap of the current iterate: the primal objective of the current plan minus
    the dual objective of the current duals, the sum of the constraints' shares (hard equalities
    contribute their signed ``<dual, marginal - target>``)."""
    gap = torch.zeros(plan.batch, dtype=plan.log_ra.dtype, device=plan.log_ra.device)
    for k, proj in enumerate(projectors):
        if proj.footprint is not None:
            total = plan.reducer.sum if proj.footprint is ROW else _same
            gap = gap + total(proj.gap(plan.duals[k], plan.log_marginal(proj.footprint)))
    return gap


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _finite(plan: LogPlan, ids: list[int]) -> Optional[torch.Tensor]:
    """``(B,)`` whether every dual of each problem is finite, or None when all are (the common
    case, read from one sum: a sum of finite values is finite unless it overflows, and one NaN or
    infinity makes it non-finite; when it is not, the per-problem flags are computed)."""
    if not plan.reducer.sharded and ids:  # (a sharded solve's ranks must take the same branch)
        total = plan.duals[ids[0]].detach().sum()
        for k in ids[1:]:
            total = total + plan.duals[k].detach().sum()
        if math.isfinite(float(total)):
            return None
    ok = torch.ones(plan.batch, dtype=torch.bool, device=plan.log_ra.device)
    for k in ids:
        ok = ok & torch.isfinite(plan.duals[k]).reshape(plan.batch, -1).all(-1)
    ok = plan.reducer.all(ok)
    return None if bool(ok.all()) else ok


def _mask(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flags.reshape(flags.shape + (1,) * (like.dim() - 1))


Translation = Optional[tuple[int, int]]


def translation_pair(projectors: list[Projector]) -> Translation:
    """The (row, column) constraints whose duals the translation step moves, or None.

    A ROW-footprint and a COL-footprint projector that both describe their dual objective along a
    translation (:meth:`MarginalProjector.translation`, whose form ``translation_kind`` names),
    not both linear (two hard equalities: the translation is the balanced gauge, which leaves the
    dual objective unchanged).
    """
    from .footprint import COL as _COL, ROW as _ROW

    def first(fp):  # (index, kind of model) of the first projector on this footprint that has one
        for k, p in enumerate(projectors):
            kind = getattr(p, "translation_kind", None)
            if p.footprint is fp and kind is not None:
                return k, kind
        return None, None

    (kr, kind_r), (kc, kind_c) = first(_ROW), first(_COL)
    if kr is None or kc is None or kind_r == "linear" == kind_c:
        return None
    return kr, kc


def translate(plan: LogPlan, projectors: list[Projector], pair: tuple[int, int],
              active: Optional[torch.Tensor]) -> None:
    """Move ``(f, g)`` to ``(f + t, g - t)`` with the ``t`` that maximises the dual objective.

    The plan does not change (nor do its marginals); with ``log S`` and ``rho`` from each side's
    :meth:`translation` model, ``d/dt [-rho_a S_a e^{-t/rho_a} - rho_b S_b e^{t/rho_b}] = 0`` gives
    ``t = (log S_a - log S_b) / (1/rho_a + 1/rho_b)``; a hard side contributes ``W t`` (``W`` its
    total weight) instead: ``t = rho_b (log W_a - log S_b)`` or ``rho_a (log S_a - log W_b)``.
    """
    kr, kc = pair
    kind_a, log_a, rho_a = projectors[kr].translation(plan.duals[kr])
    log_a = plan.reducer.lse(log_a)  # a log of a sum over the rows
    t = translation_shift((kind_a, log_a, rho_a), projectors[kc].translation(plan.duals[kc]), active)
    plan.translate(kr, kc, t)


def sweep(
    plan: LogPlan,
    projectors: list[Projector],
    ids: list[int],
    active: Optional[torch.Tensor],
    omega: Optional[torch.Tensor] = None,
    pair: Translation = None,
) -> None:
    """Update every dual once, in order; problems outside ``active`` (if given) keep theirs.

    ``omega`` (``(B,)``, or None for 1) over-relaxes the duals of relaxable projectors:
    ``d <- d + omega * (update(d) - d)``. ``pair`` (from :func:`translation_pair`) ends the sweep
    with the translation step.
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
    if pair is not None:
        translate(plan, projectors, pair, active)


@dataclass
class Acceleration:
    """Options of the loop beyond plain sweeps (see ``docs/concepts.md``, "Speed").

    * ``kernel``: use the stabilised kernel domain when it is safe (decided at every check).
    * ``overrelax``: None, a fixed ``omega`` in [1, 2), or ``"adaptive"`` (:class:`_Adaptive`).
    * ``omega_start``: adaptive only: the starting ``omega`` (a number or ``(B,)``; default 1),
      e.g. the final ``omega`` of the previous solve of a similar problem (a warm start); clamped
      to ``[1, omega_max]``, and subject to the same safeguard as an ``omega`` the rule sets.
    * ``anneal``: epsilon scaling, ``(eps0, factor)``: ``stage_iters`` sweeps at each of ``eps0,
      eps0 * factor, ...`` while above the target epsilon (generated lazily, and never past
      ``max_iter``); the ordinary stopping test then runs at the target.
    * ``translation``: end each sweep with the translation step where it applies.
    """

    kernel: bool = False
    overrelax: Optional[object] = None
    omega_start: Optional[object] = None
    omega_max: float = 1.8
    anneal: Optional[tuple[float, float]] = None
    stage_iters: int = 10
    translation: bool = True


def _omega(acc: Acceleration, B: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    """The fixed over-relaxation factor ``(B,)`` (None for plain sweeps)."""
    if acc.overrelax is None:
        return None
    return torch.full((B,), float(acc.overrelax), dtype=like.dtype, device=like.device)


def _annealing(anneal: Optional[tuple[float, float]], target: float) -> Iterator[float]:
    """``eps0, eps0 * factor, ...`` while above ``target`` (lazily)."""
    if anneal is None:
        return
    eps, factor = anneal
    while eps > target:
        yield eps
        eps *= factor


#: an unconverged problem whose error did not fall by STALL_DROP over its last STALL_SWEEPS
#: sweeps (and STALL_CHECKS checks) is reported ``stalled``: more sweeps would not help (a float
#: floor above ``tol``, or an epsilon too small for the iteration). Informative only: plateaus
#: that end after hundreds of sweeps are common at small epsilon, so no problem stops early.
STALL_SWEEPS, STALL_CHECKS, STALL_DROP = 200, 20, 0.01


def _stalled(history: list[torch.Tensor], err: torch.Tensor, check_every: int) -> torch.Tensor:
    window = max(STALL_CHECKS, -(-STALL_SWEEPS // check_every))
    if len(history) < window:
        return torch.zeros_like(err, dtype=torch.bool)
    before = history[-window]
    return torch.isfinite(before) & ~(err < (1 - STALL_DROP) * before)


def iterate(
    plan: LogPlan,
    projectors: list[Projector],
    *,
    tol: float,
    max_iter: int,
    check_every: int,
    acceleration: Optional[Acceleration] = None,
) -> Trace:
    """Run sweeps until every problem meets ``tol``, diverges, or ``max_iter`` is reached.

    An unconverged problem is reported *stalled* when its error fell by less than 1% over its last
    ``STALL_SWEEPS`` sweeps (and ``STALL_CHECKS`` checks).
    """
    acc = acceleration or Acceleration()
    B = plan.batch
    device = plan.log_ra.device
    dtype = plan.log_ra.dtype
    ids = [k for k, p in enumerate(projectors) if p.footprint is not None]
    pair = translation_pair(projectors) if acc.translation else None
    active = torch.ones(B, dtype=torch.bool, device=device)
    all_active, n_active = True, B
    converged = torch.zeros(B, dtype=torch.bool, device=device)
    diverged = torch.zeros(B, dtype=torch.bool, device=device)
    stalled = torch.zeros(B, dtype=torch.bool, device=device)
    n_iters = torch.full((B,), max_iter, dtype=torch.long, device=device)
    error = torch.full((B,), math.inf, dtype=dtype, device=device)
    gap = torch.full((B,), math.nan, dtype=dtype, device=device)
    history: list[torch.Tensor] = []
    last_host: Optional[list[float]] = None  # history[-1] on the host (small batches, when known)
    check_iters: list[int] = []
    previous: list[Optional[torch.Tensor]] = [None] * len(projectors)  # duals at the last check
    adaptive = (_Adaptive(B, error, check_every, acc.omega_max, acc.omega_start)
                if acc.overrelax == "adaptive" else None)
    omega = adaptive.omega if adaptive is not None else _omega(acc, B, error)
    kernel = acc.kernel and plan.kernel_capable
    fused = build_fused(plan, projectors, ids, pair is not None) if kernel else None
    safe = SAFE_DRIFT.get(dtype, 30.0)
    target_eps = plan.eps
    it = 0

    # epsilon scaling: fixed sweeps at each epsilon of the schedule (no stopping test there)
    annealed = False
    for eps in _annealing(acc.anneal, target_eps):
        if it >= max_iter:
            break
        plan.set_epsilon(eps)
        annealed = True
        for _ in range(min(acc.stage_iters, max_iter - it)):
            sweep(plan, projectors, ids, None, None, pair)
            it += 1
    if annealed:
        plan.set_epsilon(target_eps)
    moved = _movement(plan)  # how far the last sweep moved the potentials (read at checks)

    while True:
        if (it % check_every == 0 or it == max_iter) and (not check_iters or it != check_iters[-1]):
            # the common case (every problem active, every dual finite, none stopping) takes no
            # per-problem masking: small problems are dominated by these checks
            live = None if all_active else active
            drift = None  # the largest drift of the kernel's scalings, when read first
            if fused is not None and fused.duals_in_drift and plan.mode == "kernel" and check_iters:
                drift = _largest_drift(plan, live)
            # where the duals are the scalings' logs (fused.duals_in_drift), a finite drift says
            # that every dual is finite; the per-problem flags are computed only otherwise
            finite = None if drift is not None and math.isfinite(drift) else _finite(plan, ids)  # None: all finite
            if finite is not None:
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
            elif plan.mode == "kernel" and (_largest_drift(plan, live) if drift is None else drift) > safe:
                plan.absorb()  # the stopping test always reads an exact kernel
            err = measure_errors(plan, projectors)
            failed = None
            if finite is not None:  # NaN error (never <= tol) where a dual is not finite
                err = torch.where(finite, err, torch.full_like(err, math.nan))
                failed = active & ~finite
            # small batches read the errors on the host once (the adaptive rule and, in the common
            # case, the stopping test use them there)
            host = err.detach().tolist() if B <= ADAPT_SCALAR_MAX else None
            if adaptive is not None and history:
                # omega is piecewise constant in the data: no gradient flows through it (unroll)
                adaptive.update(err.detach() if host is None else host,
                                history[-1].detach() if last_host is None else last_host)
                omega = adaptive.omega
            history.append(err if live is None else torch.where(live, err, torch.full_like(err, math.nan)))
            last_host = host if live is None else None  # the errors just recorded, on the host
            check_iters.append(it)
            stopping = None
            if host is not None and live is None and failed is None and it < max_iter:
                stopping = tol > 0 and any(e <= tol for e in host)  # tol = 0: see below
            if stopping is not False:
                ok = err <= tol if live is None else live & (err <= tol)
                if tol == 0 and it < max_iter:  # tol = 0: exactly max_iter sweeps (POT's stopThr=0)
                    ok = torch.zeros_like(ok)
                stop = ok if failed is None else ok | failed
                if it >= max_iter:  # the last check: say whether more sweeps would have helped
                    stalled = active & ~ok & _stalled(history[:-1], err, check_every)
                    if finite is not None:
                        stalled = stalled & finite
                stopping = bool(stop.any())
            if stopping or it >= max_iter:  # the gap is reported at a problem's last check
                now = measure_gap(plan, projectors)
                gap = now if live is None else torch.where(live, now, gap)
            error = err if live is None else torch.where(live, err, error)
            if failed is not None:
                diverged = diverged | failed
            if stopping:
                converged = converged | ok
                n_iters = torch.where(stop, torch.full_like(n_iters, it), n_iters)
                active = active & ~stop
                n_active = int(active.sum())
            previous = list(plan.duals)  # duals are replaced, never modified in place
            if it >= max_iter or n_active == 0:
                break
            all_active = n_active == B
            if kernel and len(check_iters) > 1:  # the last sweep's movement decides
                _choose_domain(plan, moved(), None if all_active else active, safe, check_every)
        if fused is not None and plan.mode == "kernel":
            # every sweep up to the next check in scalings (fused.py); the same updates
            count = min((it // check_every + 1) * check_every, max_iter) - it
            moved = fused.sweeps(plan, count, None if all_active else active, omega)
            it += count
            continue
        moved = _movement(plan)
        sweep(plan, projectors, ids, None if all_active else active, omega, pair)
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
        gap=gap,
        stalled=stalled,
        omega=adaptive.final if adaptive is not None else omega,
    )


#: adaptive over-relaxation: the error ratio between checks must lie in (ADAPT_LOW, ADAPT_HIGH)
#: for omega to be set (the asymptotic, linear regime; a ratio of ~1 is a plateau, not a rate),
#: and a problem whose error grows under omega > 1 retries with a more damped omega, at most
#: ADAPT_TRIES times in all
ADAPT_LOW, ADAPT_HIGH, ADAPT_TRIES = 0.8, 0.999, 3


#: batches up to this size run the adaptive rule on Python floats (one host transfer instead of
#: some thirty small tensor operations per check); larger ones on tensors. The same rule.
ADAPT_SCALAR_MAX = 32


class _Adaptive:
    """The state of the adaptive over-relaxation of a batch (:func:`_adapt_omega_tensor`'s rule).

    Batches of up to ``ADAPT_SCALAR_MAX`` problems keep it as Python floats (:func:`_adapt_one`:
    two host reads per check instead of some thirty small tensor operations), larger ones as
    tensors. :attr:`omega` is the ``(B,)`` factor for the sweeps, None while every problem sweeps
    plainly (``omega == 1``).
    """

    def __init__(self, B: int, like: torch.Tensor, check_every: int, omega_max: float, start=None) -> None:
        self.small = B <= ADAPT_SCALAR_MAX
        self.like = dict(dtype=like.dtype, device=like.device)
        self.check_every, self.omega_max = check_every, omega_max
        omega0 = torch.ones(B, **self.like)
        if start is not None:  # a warm start: clamped to [1, omega_max]
            start = torch.as_tensor(start, **self.like).reshape(-1)
            omega0 = torch.clamp(start.expand(B).clone(), min=1.0, max=omega_max)
        # a started omega > 1 counts as just set: the first check after it may show a transient bump
        just0 = omega0 > 1
        if self.small:
            omegas = omega0.tolist()
            self.state = [(o, 0.0, math.nan, bool(j)) for o, j in zip(omegas, just0.tolist())]
            self._omegas = omegas  # the factors self.omega holds
            self.omega: Optional[torch.Tensor] = None if all(o == 1.0 for o in omegas) else omega0
        else:
            self.state = (omega0, torch.zeros(B, **self.like), torch.full((B,), math.nan, **self.like), just0)
            self.omega = self.state[0]

    @property
    def final(self) -> torch.Tensor:
        """``(B,)`` the factors of the last sweeps."""
        if not self.small:
            return self.state[0]
        return torch.tensor(self._omegas, **self.like)

    def update(self, err, last) -> None:
        """One check: ``err`` the errors now, ``last`` at the previous check (NaN: stopped);
        ``(B,)`` tensors, or lists of floats for a small batch."""
        if not self.small:
            self.state = _adapt_omega_tensor(*self.state, err, last, self.check_every, self.omega_max)
            self.omega = self.state[0]
            return
        err = err if isinstance(err, list) else err.tolist()
        last = last if isinstance(last, list) else last.tolist()
        self.state = [_adapt_one(*row, now, before, self.check_every, self.omega_max)
                      for row, now, before in zip(self.state, err, last)]
        omegas = [row[0] for row in self.state]
        if omegas != self._omegas:  # a new tensor only when a factor changed
            self._omegas = omegas
            self.omega = None if all(o == 1.0 for o in omegas) else torch.tensor(omegas, **self.like)


def _adapt_one(omega: float, failures: float, ratio: float, just_set: bool, err: float, last: float,
               check_every: int, omega_max: float) -> tuple[float, float, float, bool]:
    """:func:`_adapt_omega_tensor`'s rule for one problem, on floats (NaN compares False there
    as here)."""
    if err > last and omega > 1 and not just_set:
        failures, omega = failures + 1, 1.0
    new_ratio = err / last if last > 0 else math.nan
    plain = omega == 1.0 and failures < ADAPT_TRIES
    stable = plain and ADAPT_HIGH > new_ratio > ADAPT_LOW and abs(new_ratio - ratio) <= 0.02 * new_ratio
    if stable:
        rate = min(max(new_ratio, 0.0), 0.9999) ** (1.0 / check_every)
        damping = 0.75 * 0.5 ** failures
        omega = min(1.0 + damping * (2.0 / (1.0 + math.sqrt(1.0 - rate)) - 1.0), omega_max)
    return omega, failures, new_ratio if plain else ratio, stable


def _adapt_omega_tensor(omega, failures, ratio, just_set, err, last, check_every, omega_max):
    """Adaptive over-relaxation, per problem.

    While ``omega == 1`` the error ratio between checks is recorded; once two consecutive ratios
    agree within 2% and lie in ``(ADAPT_LOW, ADAPT_HIGH)`` (the slow, asymptotic regime, where
    over-relaxation pays off and the linearisation holds; a ratio of ~1 is a plateau of the
    non-linear regime, whose "rate" means nothing), ``omega`` is set from the measured rate ``r``
    per sweep: ``1 + damping * (2 / (1 + sqrt(1 - r)) - 1)`` (the optimal over-relaxation of the
    linearised iteration, damped for the non-linear regime: ``damping = 0.75 / 2^failures``),
    capped at ``omega_max``. Safeguard: a problem whose error grows at a check (other than the one
    right after ``omega`` was set, where a transient bump is normal) goes back to ``omega = 1``
    and counts a failure; after ``ADAPT_TRIES`` failures it stays at 1.
    Returns ``(omega, failures, ratio, just_set)``.
    """
    grew = (err > last) & (omega > 1) & ~just_set
    failures = failures + grew.to(failures.dtype)
    omega = torch.where(grew, torch.ones_like(omega), omega)
    new_ratio = torch.where(last > 0, err / last, torch.full_like(err, math.nan))
    plain = (omega == 1.0) & (failures < ADAPT_TRIES)
    stable = (plain & (new_ratio < ADAPT_HIGH) & (new_ratio > ADAPT_LOW)
              & ((new_ratio - ratio).abs() <= 0.02 * new_ratio))
    rate = torch.clamp(new_ratio, min=0.0, max=0.9999) ** (1.0 / check_every)
    damping = 0.75 * torch.pow(0.5, failures)
    target = 1.0 + damping * (2.0 / (1.0 + torch.sqrt(1.0 - rate)) - 1.0)
    omega = torch.where(stable, torch.clamp(target, max=omega_max), omega)
    return omega, failures, torch.where(plain, new_ratio, ratio), stable


def _largest(values: torch.Tensor, active: Optional[torch.Tensor]) -> float:
    """The largest value over the active problems (``active`` None: all)."""
    if active is None:
        return float(values) if values.numel() == 1 else float(values.amax())
    return float(torch.where(active, values, torch.zeros_like(values)).amax())


def _largest_drift(plan: LogPlan, active: Optional[torch.Tensor]) -> float:
    """The largest :meth:`~DenseLogPlan.kernel_drift` over the active problems (and the ranks)."""
    return plan.reducer.max_float(_largest(plan.kernel_drift(), active))


def _movement(plan: LogPlan):
    """A function giving ``(B,)``: how far the potentials will have moved from now to when it is
    called, in units of epsilon (the largest ``|F - F_now| / eps``, ``|G - G_now| / eps``); taken
    before the last sweep of an interval (duals are replaced, never mutated in place)."""
    F0, G0 = plan.F, plan.G
    return lambda: torch.maximum((plan.F - F0).abs().amax(-1), (plan.G - G0).abs().amax(-1)) / plan.eps


def _choose_domain(plan: LogPlan, step: torch.Tensor, active: Optional[torch.Tensor], safe: float,
                   check_every: int) -> None:
    """Pick the domain of the next interval. The kernel domain unless ``check_every`` sweeps
    moving as much as the last one (``step``, ``(B,)`` from :func:`_movement`) could drift the
    scalings past ``2 * safe`` log units (where the products could overflow); within ``safe``
    the kernel is exact, beyond it only entries that were negligible at absorption are
    misrepresented, and the next check re-absorbs before it measures the error."""
    projected = check_every * plan.reducer.max_float(_largest(step, active))
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
    a, b = pr.weights, pc.weights
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        # zero weights are padding: mask them so that they receive no gradient through the centring
        a = torch.where(a > 0, a, torch.zeros_like(a))
        b = torch.where(b > 0, b, torch.zeros_like(b))
    f, g = plan.duals[kr], plan.duals[kc]
    total = plan.reducer.sum(a.sum(-1)) + b.sum(-1)  # 0 for a problem of zero mass, whose potentials are all padding
    positive = total > 0
    c = ((g * b).sum(-1) - plan.reducer.sum((f * a).sum(-1))) / torch.where(positive, total, torch.ones_like(total))
    c = torch.where(positive, c, torch.zeros_like(c))[:, None]
    plan.shift_gauge(kr, kc, f + c, g - c)
