"""Float64 reference solutions, computed once per problem (and cached on disk).

The reference is computed by the benchmark's own float64 solver
(:func:`otalign.bench.dual_ascent.solve_dual_ascent`: epsilon scaling, then dual coordinate
ascent with a stabilised kernel), which shares no code with otalign's engine and is tested
against POT's float64 solvers (``ot.sinkhorn(method="sinkhorn_log")``,
``ot.unbalanced.sinkhorn_unbalanced(reg_type="kl")``,
``ot.partial.entropic_partial_wasserstein_logscale``) and against otalign in float64
(``tests/test_bench*.py``). It runs to the float64 floor (:data:`REFERENCE_SETTINGS`): an L1
marginal error of 1e-13 for balanced problems, a relative change of the plan's entries of 1e-14
per sweep for unbalanced and partial ones. POT's own float64 solvers were the reference before;
they are too slow here (the log-domain ones) or underflow (the scaling-domain ones at
``epsilon = 0.001`` of the cost range) on the real-use problems.

Point-cloud problems (``spec.lazy``) have no reference: their error (balanced) is the L1
marginal error of the returned potentials, which needs none.

The cache key holds the problem spec, the solver settings and the format version, so a change
to any of them recomputes the reference.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .dual_ascent import solve_dual_ascent
from .problems import BenchProblem

__all__ = ["Reference", "reference_solution", "REFERENCE_SETTINGS", "SOLVER"]

#: stopping rule of the reference solves (part of the cache key; see dual_ascent)
REFERENCE_SETTINGS: dict[str, dict[str, float]] = {
    "balanced": {"tol": 1e-13, "max_sweeps": 2_000_000},
    "unbalanced": {"tol": 1e-14, "max_sweeps": 2_000_000},
    "partial": {"tol": 1e-14, "max_sweeps": 2_000_000},
}
SOLVER = "otalign.bench.dual_ascent float64 (epsilon scaling + stabilised dual coordinate ascent)"
_FORMAT = 2


@dataclass
class Reference:
    """A float64 reference solution.

    Attributes:
        plan: ``(B, n, m)`` float64 NumPy plan (None for point-cloud problems).
        transport_cost: ``(B,)`` ``<C, P*>`` (None for point-cloud problems).
        solver: what computed it.
        n_iters: ``(B,)`` sweeps at the target epsilon.
        seconds: time the solve took (0 when read from the cache).
        cached: read from the cache.
        stops: ``(B,)`` why each solve stopped (``"tol"``, ``"stalled"``: float64 floor,
            ``"max_sweeps"``).
    """

    plan: Optional[np.ndarray]
    transport_cost: Optional[np.ndarray]
    solver: str
    n_iters: list[Optional[int]]
    seconds: float
    cached: bool = False
    stops: Optional[list[str]] = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (without the plan)."""
        return {
            "solver": self.solver,
            "n_iters": self.n_iters,
            "stops": self.stops,
            "seconds": self.seconds,
            "cached": self.cached,
            "transport_cost": None if self.transport_cost is None else [float(c) for c in self.transport_cost],
        }


def _cache_key(problem: BenchProblem) -> str:
    payload = {
        "spec": problem.spec.to_dict(),
        "settings": REFERENCE_SETTINGS[problem.spec.kind],
        "solver": SOLVER,
        "format": _FORMAT,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def reference_solution(
    problem: BenchProblem, *, cache_dir: Optional[Path] = None, device: Any = "cpu"
) -> Reference:
    """Float64 reference plan of ``problem`` (read from ``cache_dir`` when present there).

    Args:
        problem: the benchmark problem (its float64 CPU data is used).
        cache_dir: directory of ``.npz`` caches (None: no cache).
        device: where the float64 solve runs (``"cuda"`` speeds up the large problems).
    """
    spec = problem.spec
    if spec.lazy:
        return Reference(plan=None, transport_cost=None, solver="none (point cloud: error from the marginals)",
                         n_iters=[], seconds=0.0)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{spec.name}-{_cache_key(problem)}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                return Reference(
                    plan=data["plan"],
                    transport_cost=data["transport_cost"],
                    solver=str(data["solver"]),
                    n_iters=[int(k) for k in data["n_iters"]],
                    seconds=0.0,
                    cached=True,
                    stops=[str(s) for s in data["stops"]],
                )
    dev = torch.device(device)
    settings = REFERENCE_SETTINGS[spec.kind]
    t0 = time.perf_counter()
    plans, iters, stops = [], [], []
    assert problem.cost64 is not None
    for k in range(spec.batch):
        res = solve_dual_ascent(
            spec.kind, problem.cost64[k].to(dev), problem.a64[k].to(dev), problem.b64[k].to(dev),
            epsilon=spec.epsilon, rho=spec.rho, mass=spec.mass, entropy=spec.entropy,
            tol=settings["tol"], max_sweeps=int(settings["max_sweeps"]),
        )
        plans.append(res.plan.cpu().numpy())
        iters.append(res.sweeps)
        stops.append(res.stop)
    seconds = time.perf_counter() - t0
    plan = np.stack(plans).astype(np.float64)
    cost = (plan * problem.cost64.numpy()).sum((1, 2))
    ref = Reference(plan=plan, transport_cost=cost, solver=SOLVER, n_iters=iters, seconds=seconds, stops=stops)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, plan=plan, transport_cost=cost, solver=np.array(SOLVER),
                 n_iters=np.array(iters, dtype=np.int64), stops=np.array(stops))
        tmp.replace(path)
    return ref
