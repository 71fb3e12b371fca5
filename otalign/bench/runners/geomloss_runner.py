"""GeomLoss's runner: ``SamplesLoss("sinkhorn", backend="tensorized", potentials=True, debias=False)``.

Conventions (checked by ``tests/test_bench.py``):

* The benchmark's cost matrix ``C`` itself is passed through GeomLoss's ``cost=`` argument (a
  function returning ``C`` for ``(x, y)`` and ``C^T`` for ``(y, x)``; the "points" are dummies),
  so GeomLoss sees the same numbers as every other library and there is no halving: with
  ``p = 2``, ``epsilon = blur**2`` and ``rho = reach**2``.
  (With points and GeomLoss's own cost ``|x - y|^2 / 2`` one would pass
  ``blur = sqrt(epsilon / 2)``, ``reach = sqrt(rho / 2)`` and double the potentials.)
* The entropic term is ``KL(P || a (x) b)`` and the plan is rebuilt from the potentials as
  ``P_ij = a_i b_j exp((F_i + G_j - C_ij) / epsilon)`` (inside the timed call).
* GeomLoss has no tolerance: its loop runs an epsilon schedule from ``diameter**2`` down to
  ``blur**2`` with ratio ``scaling**2`` per sweep, then one extrapolation sweep. Its sweep count is
  ``len(schedule) + 2`` (the initialisation, the schedule, the extrapolation), each sweep updating
  both potentials (symmetric, averaged updates).

Configurations:

* ``anneal`` (default): ``diameter = sqrt(max C)`` (the schedule starts at the largest cost); the
  time-to-tolerance knob is ``scaling``; a fixed sweep count ``K`` uses the ``scaling`` that makes
  the schedule ``K`` sweeps long (so the error-vs-iterations curve is the annealed one).
* ``fixed_eps``: ``diameter = blur * (1 + 1e-9)``, so every sweep runs at the target epsilon
  (plain symmetric Sinkhorn); the knob is the sweep count. Used by the convention checks.
* ``online`` (point-cloud problems only): ``SamplesLoss(..., backend="online")`` on the points
  themselves (KeOps ``LazyTensor`` reductions, no ``n x m`` array; needs pykeops, skipped with a
  notice without it). GeomLoss's own cost ``|x - y|^2 / 2`` is half the benchmark's, so
  ``blur = sqrt(epsilon / 2)``, ``diameter = sqrt(max C / 2)`` (the same schedule as ``anneal``)
  and the potentials are doubled; the answer is the potentials (no plan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch

from ..problems import BenchProblem, ProblemSpec
from .base import Call, Runner, SolveOutput

__all__ = ["GeomlossRunner", "schedule_sweeps"]

SCALINGS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
SWEEPS: tuple[float, ...] = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_DELTA = 1e-9  # fixed_eps: relative gap between diameter and blur


def schedule_sweeps(diameter: float, blur: float, scaling: float) -> int:
    """Sweeps GeomLoss runs for ``p = 2``: ``len(epsilon_schedule) + 2`` (see module docstring)."""
    try:
        from geomloss._legacy.sinkhorn_divergence import epsilon_schedule  # private, exact

        return len(epsilon_schedule(2, diameter, blur, scaling)) + 2
    except ImportError:  # same formula as GeomLoss 0.3.1
        return 1 + len(np.arange(2 * np.log(diameter), 2 * np.log(blur), 2 * np.log(scaling))) + 1 + 2


def _scaling_for(diameter: float, blur: float, sweeps: int) -> float:
    """The ``scaling`` whose schedule is ``sweeps`` long (``sweeps >= 5`` and diameter > blur)."""
    steps = sweeps - 4  # entries of the geometric part of the schedule
    # ceil(log(D / blur) / log(1 / s)) = steps; aim at steps - 0.5 so rounding cannot move it
    return float(math.exp(-math.log(diameter / blur) / (steps - 0.5)))


@dataclass
class _Prepared:
    spec: ProblemSpec
    cost: torch.Tensor  # (B, n, m)
    cost_t: torch.Tensor  # (B, m, n), contiguous
    a: torch.Tensor  # (B, n)
    b: torch.Tensor  # (B, m)
    log_ab: torch.Tensor  # (B, n, m) log a_i + log b_j
    x: torch.Tensor  # (B, n, 1) dummy points (distinct storage from y)
    y: torch.Tensor  # (B, m, 1)
    blur: float
    reach: Optional[float]
    diameter: float
    cost_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GeomlossRunner(Runner):
    """GeomLoss's tensorized Sinkhorn (see the module docstring)."""

    library: ClassVar[str] = "geomloss"
    label: ClassVar[str] = "GeomLoss"
    module: ClassVar[str] = "geomloss"
    knob: ClassVar[str] = "scaling"
    CONFIGS: ClassVar[dict[str, dict[str, Any]]] = {
        "anneal": {"anneal": True},
        "fixed_eps": {"anneal": False},
        "online": {"anneal": True, "backend": "online"},
    }
    DEFAULT: ClassVar[tuple[str, ...]] = ("anneal", "online")
    ONLINE_CONFIGS: ClassVar[tuple[str, ...]] = ("online",)

    def unavailable_config(self) -> Optional[str]:
        if self.config != "online":
            return None
        try:
            import pykeops  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
            return f"GeomLoss's online backend needs pykeops, which is not importable here ({type(exc).__name__}: {exc})"
        return None

    @property
    def knob_name(self) -> str:
        return "scaling" if self.options["anneal"] else "n_iter"

    def supports_kind(self, spec: ProblemSpec) -> Optional[str]:
        if spec.kind == "partial":
            return "GeomLoss has no partial transport"
        return None

    def _prepare_points(self, problem: BenchProblem) -> _Prepared:
        spec = problem.spec
        x, y = (t.to(device=problem.device, dtype=problem.dtype).contiguous() for t in problem.points)
        max_cost = 1.0  # point-cloud problems are scaled so that max |x - y|^2 = 1
        blur = math.sqrt(spec.epsilon / 2)
        reach = None if spec.kind == "balanced" else math.sqrt(spec.rho / 2)
        empty = torch.empty(0)

        def no_cost(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("the online configuration uses GeomLoss's own cost")

        return _Prepared(spec, empty, empty, problem.a, problem.b, empty, x, y, blur, reach,
                         math.sqrt(max_cost / 2), no_cost)

    def knobs(self, spec: ProblemSpec) -> list[float]:
        return list(SCALINGS if self.options["anneal"] else SWEEPS)

    def prepare(self, problem: BenchProblem) -> _Prepared:
        if self.config == "online":
            return self._prepare_points(problem)
        spec = problem.spec
        cost = problem.cost
        cost_t = cost.transpose(1, 2).contiguous()
        x = torch.zeros(spec.batch, spec.n, 1, dtype=cost.dtype, device=cost.device)
        y = torch.zeros(spec.batch, spec.m, 1, dtype=cost.dtype, device=cost.device)
        x_ptr, y_ptr = x.data_ptr(), y.data_ptr()

        def cost_fn(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if u.data_ptr() == x_ptr and v.data_ptr() == y_ptr:
                return cost
            if u.data_ptr() == y_ptr and v.data_ptr() == x_ptr:
                return cost_t
            raise RuntimeError("GeomLoss asked for a cost between unexpected point sets (debias must be False)")

        blur = math.sqrt(spec.epsilon)
        reach = None if spec.kind == "balanced" else math.sqrt(spec.rho)
        if self.options["anneal"]:
            diameter = math.sqrt(float(problem.cost64.max()))
        else:
            diameter = blur * (1.0 + _DELTA)
        log_ab = torch.log(problem.a)[:, :, None] + torch.log(problem.b)[:, None, :]
        return _Prepared(spec, cost, cost_t, problem.a, problem.b, log_ab, x, y, blur, reach, diameter, cost_fn)

    def min_iters(self, prepared: _Prepared) -> int:
        return 5 if prepared.diameter > prepared.blur else 4

    def _call(self, p: _Prepared, scaling: float) -> Call:
        from geomloss import SamplesLoss

        loss = SamplesLoss(
            "sinkhorn", p=2, blur=p.blur, reach=p.reach, diameter=p.diameter, scaling=scaling,
            debias=False, potentials=True, backend="tensorized", cost=p.cost_fn,
        )
        sweeps = schedule_sweeps(p.diameter, p.blur, scaling)
        eps = p.spec.epsilon
        if self.config == "online":
            loss = SamplesLoss(
                "sinkhorn", p=2, blur=p.blur, reach=p.reach, diameter=p.diameter, scaling=scaling,
                debias=False, potentials=True, backend="online",
            )

            def call_online() -> SolveOutput:
                F, G = loss(p.a, p.x, p.b, p.y)  # (B, n), (B, m) in GeomLoss's halved cost units
                return SolveOutput(plan=None, n_iters=sweeps, potentials=(2 * F.reshape(-1), 2 * G.reshape(-1)))

            return call_online

        def call() -> SolveOutput:
            F, G = loss(p.a, p.x, p.b, p.y)  # (B, n), (B, m)
            plan = torch.exp(p.log_ab + (F[:, :, None] + G[:, None, :] - p.cost) / eps)
            return SolveOutput(plan=plan, n_iters=sweeps)

        return call

    def _scaling_for_sweeps(self, p: _Prepared, n_iter: int) -> float:
        if p.diameter <= p.blur or n_iter < 5:
            # diameter <= blur: the schedule is [diameter^2, blur^2] whatever the scaling; fewer
            # than 5 sweeps cannot be asked for; the sweeps actually run are reported
            return 0.5
        return _scaling_for(p.diameter, p.blur, n_iter)

    @property
    def check_tol(self) -> float:  # type: ignore[override]
        # annealing has no tolerance: at scaling 0.995 the answer is close (~2e-2), not exact
        return 5e-2 if self.options["anneal"] else 1e-7

    def tight(self, prepared: _Prepared) -> Call:
        if self.options["anneal"]:
            return self._call(prepared, 0.995)
        # symmetric averaged sweeps converge slowly on the clustered problems' small group imbalance
        return self._call(prepared, self._scaling_for_sweeps(prepared, 20_000))

    def fixed(self, prepared: _Prepared, n_iter: int) -> Call:
        return self._call(prepared, self._scaling_for_sweeps(prepared, n_iter))

    def to_tolerance(self, prepared: _Prepared, knob: float, max_iter: int) -> Call:
        if self.options["anneal"]:
            if schedule_sweeps(prepared.diameter, prepared.blur, float(knob)) > max_iter:  # the cap
                return self._call(prepared, self._scaling_for_sweeps(prepared, max_iter))
            return self._call(prepared, float(knob))
        return self._call(prepared, self._scaling_for_sweeps(prepared, min(int(knob), max_iter)))
