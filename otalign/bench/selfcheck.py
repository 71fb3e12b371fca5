"""Convention check: every runner, run tight on tiny problems, must give the reference plan.

A wrong unit convention (GeomLoss's halved cost, OTT's epsilon or entropy, POT's ``reg_m``)
moves the plan by far more than the tolerances here, so this checks that every library is asked
the same question. Used by the tests (CPU, float64) and by ``otalign bench --check`` (e.g. on a
GPU, see ``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Optional, Sequence

import torch

from .errors import measure_plan, to_numpy64
from .problems import BenchProblem, ProblemSpec, build_problem
from .reference import reference_solution
from .runners import RUNNERS, Runner, SolveOutput, make_runners, parse_libraries

__all__ = ["ConventionCheck", "check_specs", "check_conventions", "format_checks", "FLOAT32_TOL"]

#: pass threshold of ``||P - P*||_1`` when the libraries run in a dtype other than float64
FLOAT32_TOL = 1e-4


@dataclass
class ConventionCheck:
    """Result of one runner configuration on one tiny problem.

    Attributes:
        problem, runner: what ran.
        plan_error: ``||P - P*||_1`` to the float64 reference (worst problem of the batch).
        error: headline error (:mod:`otalign.bench.errors`).
        tolerance: the pass threshold for ``plan_error``.
        ok: ``plan_error <= tolerance``.
        status: ``"ok"``, ``"FAIL"``, ``"skipped: ..."`` or ``"error: ..."``.
    """

    problem: str
    runner: str
    plan_error: Optional[float]
    error: Optional[float]
    tolerance: float
    ok: bool
    status: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_specs(n: int = 32, batch: int = 3, epsilon: float = 0.1) -> list[ProblemSpec]:
    """Tiny problems of every kind, single and batched (points in R^8, so costs spread out), one
    with the real-use families' non-uniform weights and unequal masses per kind, and one point
    cloud (for the online configurations)."""
    specs = []
    for kind, extra in (
        ("balanced", {"entropy": "kl"}),
        ("unbalanced", {"rho": 0.5, "entropy": "kl"}),
        ("partial", {"mass": 0.8, "entropy": "shannon"}),
    ):
        for B in (1, batch):
            specs.append(
                ProblemSpec(
                    name=f"check-{kind}-B{B}-n{n}", family="sphere", kind=kind, batch=B, n=n, m=n + 3,
                    epsilon=epsilon, dim=8, seed=3, **extra,
                )
            )
        real = dict(extra, b_mass=1.2) if kind == "unbalanced" else extra
        specs.append(
            ProblemSpec(
                name=f"check-{kind}-clusters-n{n}", family="clusters", kind=kind, batch=1, n=n, m=n + 3,
                epsilon=epsilon, dim=2, seed=3, **real,
            )
        )
    specs.append(
        ProblemSpec(
            name=f"check-points-n{n}", family="points", kind="balanced", batch=1, n=n, m=n + 3, epsilon=epsilon,
            dim=3, seed=3, default=False, entropy="kl",
        )
    )
    return specs


def dense_twin(problem: BenchProblem) -> BenchProblem:
    """A point-cloud problem with its dense cost ``|x - y|^2`` built (tiny problems only), so that
    a reference plan can be computed for it."""
    x, y = problem.points
    cost64 = ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
    return BenchProblem(spec=replace(problem.spec, family="clusters", default=True), cost=cost64.to(problem.a),
                        a=problem.a, b=problem.b, cost64=cost64, a64=problem.a64, b64=problem.b64, points=problem.points)


def plan_from_potentials(out: SolveOutput, problem: BenchProblem) -> torch.Tensor:
    """``(1, n, m)`` plan ``a_i b_j exp((f_i + g_j - C_ij) / eps)`` of a point-cloud answer (tiny problems)."""
    assert out.potentials is not None and problem.cost64 is not None
    f, g = (torch.as_tensor(to_numpy64(t)).reshape(-1) for t in out.potentials)
    eps = problem.spec.epsilon
    return (problem.a64[0][:, None] * problem.b64[0][None, :] * torch.exp((f[:, None] + g[None, :] - problem.cost64[0]) / eps))[None]


def check_conventions(
    *,
    device: Any = "cpu",
    dtype: torch.dtype = torch.float64,
    libraries: Optional[Sequence[str]] = None,
    specs: Optional[Sequence[ProblemSpec]] = None,
) -> list[ConventionCheck]:
    """Run every available runner configuration tight on :func:`check_specs` problems.

    Args:
        device: where the libraries run. dtype: their dtype (float64: each runner's tight
            ``check_tol``; other dtypes: at least :data:`FLOAT32_TOL`).
        libraries: ``--libraries`` items (default: every library, every configuration).
        specs: problems (default: :func:`check_specs`).
    """
    if libraries:
        selection = parse_libraries(libraries)
    else:
        selection = [(lib, cfg) for lib, cls in RUNNERS.items() for cfg in cls.CONFIGS]
    runners, notices = make_runners(selection, device=device, dtype=dtype)
    results: list[ConventionCheck] = [
        ConventionCheck("-", note.split(" skipped")[0], None, None, 0.0, False, f"skipped: {note}") for note in notices
    ]
    for spec in specs or check_specs():
        problem = build_problem(spec, dtype=dtype, device=device)
        dense = dense_twin(problem) if spec.lazy else problem
        ref = reference_solution(dense)
        for runner in runners:
            tol = float(runner.check_tol) if dtype == torch.float64 else max(float(runner.check_tol), FLOAT32_TOL)
            if (reason := runner.supports(spec)) is not None:
                results.append(ConventionCheck(spec.name, runner.name, None, None, tol, False, f"skipped: {reason}"))
                continue
            try:
                out = _tight(runner, problem)
                plan = plan_from_potentials(out, dense) if spec.lazy else out.plan
                m = measure_plan(
                    plan, kind=spec.kind, a=dense.a64, b=dense.b64, cost=dense.cost64,
                    mass=spec.mass, reference_plan=ref.plan,
                )
                ok = m.plan_error <= tol
                results.append(
                    ConventionCheck(spec.name, runner.name, m.plan_error, m.error, tol, ok, "ok" if ok else "FAIL")
                )
            except Exception as exc:  # noqa: BLE001 - report, do not stop
                results.append(ConventionCheck(spec.name, runner.name, None, None, tol, False, f"error: {exc!r}"))
    return results


def _tight(runner: Runner, problem: Any) -> Any:
    return runner.tight(runner.prepare(problem))()


def format_checks(results: Sequence[ConventionCheck]) -> str:
    """A small table of the checks."""
    lines = [f"{'problem':30s} {'runner':30s} {'||P-P*||_1':>11s} {'tolerance':>10s}  status"]
    for r in results:
        pe = "-" if r.plan_error is None else f"{r.plan_error:.2e}"
        lines.append(f"{r.problem:30s} {r.runner:30s} {pe:>11s} {r.tolerance:10.1e}  {r.status}")
    return "\n".join(lines)
