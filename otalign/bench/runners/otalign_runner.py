"""otalign's runner: ``ota.solve`` with the options of one entry of ``OTALIGN_CONFIGS``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from ..configs import OTALIGN_CONFIGS
from ..problems import BenchProblem, ProblemSpec
from .base import Call, Runner, SolveOutput

__all__ = ["OtalignRunner"]

#: ``tol`` for fixed-iteration runs: never reached by a non-zero error.
UNREACHABLE_TOL = 1e-30


@dataclass
class _Prepared:
    cost: torch.Tensor  # (n, m) for a single problem, (B, n, m) for a batch
    constraints: Any
    epsilon: float
    entropy: str


class OtalignRunner(Runner):
    """``ota.solve(cost, constraints, epsilon=..., tol=..., max_iter=..., entropy=..., grad="none",
    **OTALIGN_CONFIGS[config])``; the plan is ``res.plan`` (materialised inside the call)."""

    library: ClassVar[str] = "otalign"
    label: ClassVar[str] = "otalign"
    module: ClassVar[str] = "otalign"
    knob: ClassVar[str] = "tol"
    CONFIGS = OTALIGN_CONFIGS  # the same dict object: entries added there appear here
    DEFAULT: ClassVar[tuple[str, ...]] = ()  # unused: every entry of OTALIGN_CONFIGS runs

    @classmethod
    def default_configs(cls) -> tuple[str, ...]:
        return tuple(OTALIGN_CONFIGS)

    def supports(self, spec: ProblemSpec) -> Optional[str]:
        return None

    def prepare(self, problem: BenchProblem) -> _Prepared:
        from ... import constraints as C

        spec = problem.spec
        if spec.kind == "balanced":
            cons = C.balanced()
        elif spec.kind == "unbalanced":
            cons = C.unbalanced(spec.rho)
        else:
            cons = C.partial(spec.mass)
        cost = problem.cost if spec.batched else problem.cost[0]
        return _Prepared(cost=cost, constraints=cons, epsilon=spec.epsilon, entropy=spec.entropy)

    def _call(self, p: _Prepared, tol: float, max_iter: int) -> Call:
        import otalign as ota

        options = self.options

        def call() -> SolveOutput:
            res = ota.solve(
                p.cost, p.constraints, epsilon=p.epsilon, tol=tol, max_iter=max_iter,
                entropy=p.entropy, grad="none", **options,
            )
            plan = res.plan
            if plan.dim() == 2:
                plan = plan[None]
            return SolveOutput(plan=plan, n_iters=int(res.n_iters.max()))

        return call

    def fixed(self, prepared: _Prepared, n_iter: int) -> Call:
        return self._call(prepared, UNREACHABLE_TOL, n_iter)

    def to_tolerance(self, prepared: _Prepared, knob: float, max_iter: int) -> Call:
        return self._call(prepared, knob, max_iter)
