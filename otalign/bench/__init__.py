"""``otalign bench``: otalign side by side with POT, GeomLoss and OTT-JAX.

>>> from otalign import bench
>>> settings = bench.BenchSettings.create(quick=True, out="results/bench")
>>> report = bench.run_benchmark(settings)
>>> print(bench.format_table(report))
>>> paths = bench.write_outputs(report)          # bench.json + plots/<problem>.png

Modules (one responsibility each):

* :mod:`~otalign.bench.problems`: seeded problems (:class:`ProblemSpec`, :func:`build_problem`).
* :mod:`~otalign.bench.datasets`: the data of the real-use families (clustered clouds, colour
  histograms).
* :mod:`~otalign.bench.configs`: ``OTALIGN_CONFIGS``, the otalign configurations (one place).
* :mod:`~otalign.bench.runners`: one runner per library, one common result record.
* :mod:`~otalign.bench.errors`: the one independent float64 error measurement.
* :mod:`~otalign.bench.reference`: float64 reference solutions (cached), computed by
  :mod:`~otalign.bench.dual_ascent` (the benchmark's own float64 solver).
* :mod:`~otalign.bench.timing`: clocks, peak memory, machine and versions.
* :mod:`~otalign.bench.harness`: the measurement protocol.
* :mod:`~otalign.bench.report`: summary, table, JSON, plots.
* :mod:`~otalign.bench.selfcheck`: the convention check of every runner.
"""

from .configs import OTALIGN_CONFIGS
from .errors import Measured, marginal_l1, measure_plan, partial_violation, plan_l1, unbalanced_kkt_residual
from .harness import BenchReport, bench_configuration, run_benchmark
from .problems import (
    BenchProblem,
    ProblemSpec,
    all_problems,
    build_problem,
    default_problems,
    point_problems,
    quick_problems,
    select_problems,
)
from .reference import Reference, reference_solution
from .report import format_table, summarize, to_json, write_outputs
from .runners import RUNNERS, Runner, RunRecord, SolveOutput, make_runners, parse_libraries
from .selfcheck import ConventionCheck, check_conventions, format_checks
from .settings import DTYPES, BenchSettings

__all__ = [
    "OTALIGN_CONFIGS",
    "BenchSettings",
    "DTYPES",
    "run_benchmark",
    "bench_configuration",
    "BenchReport",
    "format_table",
    "summarize",
    "to_json",
    "write_outputs",
    "ProblemSpec",
    "BenchProblem",
    "all_problems",
    "default_problems",
    "point_problems",
    "quick_problems",
    "select_problems",
    "build_problem",
    "Measured",
    "measure_plan",
    "marginal_l1",
    "partial_violation",
    "plan_l1",
    "unbalanced_kkt_residual",
    "Reference",
    "reference_solution",
    "RUNNERS",
    "Runner",
    "RunRecord",
    "SolveOutput",
    "make_runners",
    "parse_libraries",
    "ConventionCheck",
    "check_conventions",
    "format_checks",
]
