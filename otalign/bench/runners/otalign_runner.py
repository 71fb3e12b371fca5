"""otalign's runner: ``ota.solve`` with the options of one entry of ``OTALIGN_CONFIGS`` (dense
costs) or of ``OTALIGN_POINTCLOUD_CONFIGS`` (point clouds through ``otalign.geometry.PointCloud``).

* Dense problems: ``ota.solve(cost, constraints, epsilon, tol, max_iter, entropy, grad="none",
  **OTALIGN_CONFIGS[config])``; the plan is ``res.plan`` (materialised inside the call). The
  constraints carry the problem's weights (``None``, i.e. uniform, when they are uniform and sum
  to 1, as in the sphere and contrastive families).
* Point-cloud problems: ``ota.solve(otalign.geometry.PointCloud(x, y, cost="sqeuclidean",
  backend=...), C.balanced(a, b), ...)``; the answer is ``(res.f, res.g)`` (no plan is formed).
  Where ``otalign.geometry`` is not importable these configurations are skipped with the notice
  "needs otalign.geometry" (a dense matrix is never substituted).
* Warnings raised inside a call (e.g. non-convergence of a fixed-sweep run, whose tolerance is
  out of reach on purpose) are silenced; convergence is judged by the independent measurement.
"""

from __future__ import annotations

import importlib
import warnings
from collections import ChainMap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch

from ..configs import OTALIGN_CONFIGS, OTALIGN_POINTCLOUD_CONFIGS
from ..problems import BenchProblem, ProblemSpec
from .base import Call, Runner, SolveOutput

__all__ = ["OtalignRunner", "UNREACHABLE_TOL", "geometry_unavailable"]

#: ``tol`` for fixed-iteration runs: ``0`` runs exactly ``max_iter`` sweeps (a tiny positive
#: ``tol`` is met when the solver's own float32 error estimate reaches exactly 0, which the fused
#: kernel-domain sweeps do on easy problems: a fixed run would then stop early)
UNREACHABLE_TOL = 0.0


@dataclass
class _Prepared:
    cost: Optional[torch.Tensor]  # (n, m) for a single problem, (B, n, m) for a batch; None: points
    constraints: Any
    epsilon: float
    entropy: str
    points: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (n, d), (m, d)


def _weights(w: torch.Tensor, batched: bool) -> Optional[torch.Tensor]:
    """``w`` as the constraints take it: None when uniform with total 1 (otalign's default)."""
    uniform = bool((w == w[..., :1]).all()) and bool(torch.allclose(w.sum(-1), torch.ones((), dtype=w.dtype)))
    if uniform:
        return None
    return w if batched else w[0]


def geometry_unavailable(backend: str) -> Optional[str]:
    """Why ``otalign.geometry.PointCloud(..., backend=backend)`` cannot run here, or None.

    The geometry layer must belong to the same checkout as the ``otalign`` package in use (with an
    editable install, a worktree without it could otherwise pick up another checkout's), and the
    ``keops`` backend needs pykeops.
    """
    import otalign

    try:
        geometry = importlib.import_module("otalign.geometry")
    except ImportError as exc:
        return f"needs otalign.geometry ({exc})"
    package = Path(next(iter(otalign.__path__))).resolve()
    where = Path(getattr(geometry, "__file__", "") or "").resolve()
    if package not in where.parents:
        return f"needs otalign.geometry (this otalign, {package}, has none; not using the one at {where.parent})"
    if not hasattr(geometry, "PointCloud"):
        return "needs otalign.geometry.PointCloud"
    if backend == "keops":
        try:
            importlib.import_module("pykeops")
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
            return f"the keops backend needs pykeops ({type(exc).__name__}: {exc})"
    return None


class OtalignRunner(Runner):
    """``ota.solve`` in one configuration (see the module docstring)."""

    library: ClassVar[str] = "otalign"
    label: ClassVar[str] = "otalign"
    module: ClassVar[str] = "otalign"
    knob: ClassVar[str] = "tol"
    # live views of the two dicts: entries added there appear here
    CONFIGS = ChainMap(OTALIGN_POINTCLOUD_CONFIGS, OTALIGN_CONFIGS)  # type: ignore[assignment]  # lists dense ones first
    DEFAULT: ClassVar[tuple[str, ...]] = ()  # unused: every entry of both dicts runs

    @classmethod
    def default_configs(cls) -> tuple[str, ...]:
        return tuple(OTALIGN_CONFIGS) + tuple(OTALIGN_POINTCLOUD_CONFIGS)

    @property
    def is_online(self) -> bool:
        return self.config in OTALIGN_POINTCLOUD_CONFIGS and self.config not in OTALIGN_CONFIGS

    def unavailable_config(self) -> Optional[str]:
        if not self.is_online:
            return None
        return geometry_unavailable(self.options["backend"])

    def supports_kind(self, spec: ProblemSpec) -> Optional[str]:
        return None

    def prepare(self, problem: BenchProblem) -> _Prepared:
        from ... import constraints as C

        spec = problem.spec
        a = _weights(problem.a, spec.batched)
        b = _weights(problem.b, spec.batched)
        if spec.kind == "balanced":
            cons = C.balanced(a, b)
        elif spec.kind == "unbalanced":
            cons = C.unbalanced(spec.rho, a=a, b=b)
        else:
            cons = C.partial(spec.mass, a=a, b=b)
        if spec.lazy:
            x, y = (t[0].to(device=problem.device, dtype=problem.dtype).contiguous() for t in problem.points)
            return _Prepared(cost=None, constraints=cons, epsilon=spec.epsilon, entropy=spec.entropy, points=(x, y))
        assert problem.cost is not None
        cost = problem.cost if spec.batched else problem.cost[0]
        return _Prepared(cost=cost, constraints=cons, epsilon=spec.epsilon, entropy=spec.entropy)

    def _call(self, p: _Prepared, tol: float, max_iter: int) -> Call:
        import otalign as ota

        if self.is_online:
            return self._point_call(p, tol, max_iter)
        options = self.options

        def call() -> SolveOutput:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = ota.solve(
                    p.cost, p.constraints, epsilon=p.epsilon, tol=tol, max_iter=max_iter,
                    entropy=p.entropy, grad="none", **options,
                )
                plan = res.plan
            if plan.dim() == 2:
                plan = plan[None]
            return SolveOutput(plan=plan, n_iters=int(res.n_iters.max()))

        return call

    def _point_call(self, p: _Prepared, tol: float, max_iter: int) -> Call:
        import otalign as ota

        geometry = importlib.import_module("otalign.geometry")
        backend, solve_options = self.options["backend"], dict(self.options.get("solve", {}))
        assert p.points is not None
        x, y = p.points

        def call() -> SolveOutput:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                geom = geometry.PointCloud(x, y, cost="sqeuclidean", backend=backend)
                res = ota.solve(
                    geom, p.constraints, epsilon=p.epsilon, tol=tol, max_iter=max_iter,
                    entropy=p.entropy, grad="none", **solve_options,
                )
            return SolveOutput(plan=None, n_iters=int(res.n_iters.max()), potentials=(res.f.reshape(-1), res.g.reshape(-1)))

        return call

    def fixed(self, prepared: _Prepared, n_iter: int) -> Call:
        return self._call(prepared, UNREACHABLE_TOL, n_iter)

    def to_tolerance(self, prepared: _Prepared, knob: float, max_iter: int) -> Call:
        return self._call(prepared, knob, max_iter)
