"""Float64 reference solutions, computed once per problem (and cached on disk).

The reference is computed by POT in float64 (a dependency of otalign, and a different code path
from otalign's engine), run to a tight threshold:

* balanced: ``ot.sinkhorn(method="sinkhorn_log", stopThr=1e-13)`` (one problem of the batch at a
  time);
* unbalanced: ``ot.unbalanced.sinkhorn_unbalanced(method="sinkhorn", reg_type="kl",
  stopThr=1e-14)`` (scaling domain; safe in float64 for these costs, whose ``exp(-C/eps)`` stays
  far above 1e-300);
* partial: ``ot.partial.entropic_partial_wasserstein_logscale(stopThr=1e-13)``.

The cache key holds the problem spec, the solver settings and the POT version, so a change to any
of them recomputes the reference.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .problems import BenchProblem

__all__ = ["Reference", "reference_solution", "REFERENCE_SETTINGS"]

#: Thresholds and iteration caps of the reference solves (part of the cache key).
REFERENCE_SETTINGS: dict[str, dict[str, float]] = {
    "balanced": {"stopThr": 1e-13, "numItermax": 200_000},
    "unbalanced": {"stopThr": 1e-14, "numItermax": 200_000},
    "partial": {"stopThr": 1e-13, "numItermax": 200_000},
}


@dataclass
class Reference:
    """A float64 reference solution.

    Attributes:
        plan: ``(B, n, m)`` float64 NumPy plan.
        transport_cost: ``(B,)`` ``<C, P*>``.
        solver: what computed it.
        n_iters: ``(B,)`` iterations used (as far as the solver reports them).
        seconds: time the solve took (0 when read from the cache).
        cached: read from the cache.
    """

    plan: np.ndarray
    transport_cost: np.ndarray
    solver: str
    n_iters: list[Optional[int]]
    seconds: float
    cached: bool = False

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (without the plan)."""
        return {
            "solver": self.solver,
            "n_iters": self.n_iters,
            "seconds": self.seconds,
            "cached": self.cached,
            "transport_cost": [float(c) for c in self.transport_cost],
        }


def _solve_one(kind: str, C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, spec: Any) -> tuple[torch.Tensor, Optional[int], str]:
    import ot

    s = REFERENCE_SETTINGS[kind]
    eps = spec.epsilon
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "balanced":
            P, log = ot.sinkhorn(
                a, b, C, eps, method="sinkhorn_log", stopThr=s["stopThr"],
                numItermax=int(s["numItermax"]), log=True, warn=False,
            )
            return P, int(log.get("niter", -1)), "POT ot.sinkhorn(method='sinkhorn_log') float64"
        if kind == "unbalanced":
            P, log = ot.unbalanced.sinkhorn_unbalanced(
                a, b, C, eps, spec.rho, method="sinkhorn", reg_type="kl", stopThr=s["stopThr"],
                numItermax=int(s["numItermax"]), log=True,
            )
            return P, len(log["err"]), "POT ot.unbalanced.sinkhorn_unbalanced(method='sinkhorn', reg_type='kl') float64"
        if kind == "partial":
            mass = torch.tensor(spec.mass, dtype=C.dtype, device=C.device)
            P, log = ot.partial.entropic_partial_wasserstein_logscale(
                a, b, C, eps, m=mass, stopThr=s["stopThr"], numItermax=int(s["numItermax"]), log=True,
            )
            return P, 10 * (len(log["err"]) - 1) + 1, "POT ot.partial.entropic_partial_wasserstein_logscale float64"
    raise ValueError(f"kind={kind!r}; expected 'balanced', 'unbalanced' or 'partial'")


def _cache_key(problem: BenchProblem) -> str:
    import ot

    payload = {
        "spec": problem.spec.to_dict(),
        "settings": REFERENCE_SETTINGS[problem.spec.kind],
        "pot": ot.__version__,
        "format": 1,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def reference_solution(
    problem: BenchProblem, *, cache_dir: Optional[Path] = None, device: Any = "cpu"
) -> Reference:
    """Float64 reference plan of ``problem`` (read from ``cache_dir`` when present there).

    Args:
        problem: the benchmark problem (its float64 CPU data is used).
        cache_dir: directory of ``.npz`` caches (None: no cache).
        device: where POT runs the float64 solve (``"cuda"`` speeds up the large problems).
    """
    spec = problem.spec
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{spec.name}-{_cache_key(problem)}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                n_iters = [None if int(k) < 0 else int(k) for k in data["n_iters"]]
                return Reference(
                    plan=data["plan"],
                    transport_cost=data["transport_cost"],
                    solver=str(data["solver"]),
                    n_iters=n_iters,
                    seconds=0.0,
                    cached=True,
                )
    dev = torch.device(device)
    t0 = time.perf_counter()
    plans, iters, solver = [], [], ""
    for k in range(spec.batch):
        C = problem.cost64[k].to(dev)
        a = problem.a64[k].to(dev)
        b = problem.b64[k].to(dev)
        P, it, solver = _solve_one(spec.kind, C, a, b, spec)
        plans.append(P.detach().cpu().numpy())
        iters.append(it)
    seconds = time.perf_counter() - t0
    plan = np.stack(plans).astype(np.float64)
    cost = (plan * problem.cost64.numpy()).sum((1, 2))
    ref = Reference(plan=plan, transport_cost=cost, solver=solver, n_iters=iters, seconds=seconds)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            plan=plan,
            transport_cost=cost,
            solver=np.array(solver),
            n_iters=np.array([-1 if i is None else i for i in iters], dtype=np.int64),
        )
        tmp.replace(path)
    return ref
