"""The measurement protocol: for every problem and every runner configuration,

1. **ms per sweep** (``mode="fixed"``): ``fixed_iters`` sweeps with the tolerance out of reach;
   one warm-up call, which also measures peak memory (for JAX it compiles, reported as
   ``compile_s``, and memory is measured on one more call after the timed ones), then ``repeats``
   timed calls (median); the answer's error is measured too.
2. **time to tolerance** (``mode="tol"``): the library's own stopping knob is swept from loose to
   tight; each answer's error is measured by :func:`otalign.bench.errors.measure_plan`; the first
   knob whose answer meets ``target`` is timed ``repeats`` times (median) and the sweep stops.
   Tighter knobs never run fewer sweeps, so that run is the fastest one meeting the target. The
   sweep also stops when a run hits ``max_iter`` (every tighter one would too) or when the stage
   has used ``budget_s``; the record says why. No knob meeting the target = "not reached".
3. **error-vs-iterations** (``mode="curve"``): one call per sweep count of ``curve_iters``, then of
   ``curve_extend`` while the previous point's error is still above ``target`` (tolerance out of
   reach), each timed once (after a compilation call for JAX) and measured, which gives the
   error-vs-iterations and error-vs-time curves.

Sweep caps and the ms/iter sweep count are per problem (``settings.max_iter_for(spec)``,
``settings.fixed_iters_for(spec)``) unless the command line sets them. Point-cloud problems are
measured from the returned potentials (:func:`otalign.bench.errors.measure_potentials`).

Any exception in a configuration is recorded (``mode="error"``) and the run goes on.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .errors import Measured, marginal_l1, measure_plan, measure_potentials, partial_violation, unbalanced_kkt_residual
from .problems import BenchProblem, build_problem
from .reference import Reference, reference_solution
from .runners import Runner, RunRecord, SolveOutput, make_runners
from .runners.base import Call, json_ready
from .settings import BenchSettings
from .timing import Clock, MemoryMeter, library_versions, machine_info, median

__all__ = ["BenchReport", "run_benchmark", "bench_configuration"]


@dataclass
class BenchReport:
    """Everything a run produced (serialised by :mod:`otalign.bench.report`).

    Attributes:
        settings: the run's settings.
        machine: host / GPU description. versions: library versions.
        notices: libraries skipped and why.
        problems: per problem, its spec and its reference's summary and accuracy.
        records: every :class:`RunRecord`.
        runners: ``"library:config"`` of every configuration that ran.
        wall_s: seconds the whole run took.
    """

    settings: BenchSettings
    machine: dict[str, Any]
    versions: dict[str, Optional[str]]
    notices: list[str]
    problems: list[dict[str, Any]]
    records: list[RunRecord]
    runners: list[str]
    wall_s: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)


def _measure(out: SolveOutput, problem: BenchProblem, ref: Reference) -> Measured:
    spec = problem.spec
    if spec.lazy:
        if out.potentials is None:
            raise ValueError(f"a runner returned no potentials for the point-cloud problem {spec.name}")
        x, y = problem.points
        f, g = out.potentials
        return measure_potentials(f, g, kind=spec.kind, x=x[0], y=y[0], a=problem.a64[0], b=problem.b64[0],
                                  epsilon=spec.epsilon)
    return measure_plan(
        out.plan, kind=spec.kind, a=problem.a64, b=problem.b64, cost=problem.cost64, mass=spec.mass,
        reference_plan=ref.plan, reference_cost=ref.transport_cost,
    )


def _fields(m: Measured) -> dict[str, Any]:
    return {
        "error": m.error,
        "marginal_error": m.marginal_error,
        "plan_error": m.plan_error,
        "cost_rel_error": m.cost_rel_error,
        "mass": m.mass,
        "finite": m.finite,
    }


def _warm(runner: Runner, call: Call) -> bool:
    """Whether ``call`` compiles on its first use (then it gets an untimed warm-up call)."""
    return runner.compiles and bool(getattr(call, "needs_warmup", True))


def bench_configuration(
    runner: Runner, problem: BenchProblem, ref: Reference, settings: BenchSettings,
    on_stage: Optional[Callable[[str], None]] = None,
) -> list[RunRecord]:
    """Run the three measurements of the module docstring for one configuration on one problem."""
    spec = problem.spec
    device = settings.torch_device
    clock = Clock(device, cuda_events=runner.backend == "torch")
    meter = MemoryMeter(device, backend=runner.backend)
    stage = on_stage or (lambda _s: None)
    base = {"problem": spec.name, "library": runner.library, "config": runner.config}
    records: list[RunRecord] = []
    prepared = runner.prepare(problem)
    budget = settings.budget_s
    cap = settings.max_iter_for(spec)

    # 1. ms per sweep at a fixed sweep count ------------------------------------------------------
    stage("ms/iter")
    K = max(settings.fixed_iters_for(spec), runner.min_iters(prepared))
    call = runner.fixed(prepared, K)
    if runner.compiles:  # the first call compiles: memory is measured on a later one
        out, first = clock.time(call)
    else:  # the warm-up call is also the memory call
        (out, first), mem = meter.measure(lambda: clock.time(call))
    n_rep = settings.repeats if first * settings.repeats <= budget else max(1, int(budget // max(first, 1e-9)))
    if first > budget and not runner.compiles:
        n_rep = 0  # one call longer than the whole budget: the warm-up call is the only sample
    times = [] if n_rep else [first]
    for _ in range(n_rep):
        del out
        out, t = clock.time(call)
        times.append(t)
    if runner.compiles:
        del out
        out, mem = meter.measure(call)
    med = median(times)
    if n_rep == settings.repeats:
        note = "ok"
    elif n_rep:
        note = f"ok (repeats cut to {n_rep} by budget_s)"
    else:
        note = "ok (one call: the warm-up call took longer than budget_s)"
    records.append(
        RunRecord(
            **base, mode="fixed", knob="n_iter", knob_value=K, n_iters=out.n_iters, times_s=times,
            time_s=med, first_call_s=first, compile_s=(first - med) if runner.compiles else None,
            ms_per_iter=None if not out.n_iters else 1e3 * med / out.n_iters,
            peak_mem_bytes=mem, mem_method=meter.method, status=note, **_fields(_measure(out, problem, ref)),
        )
    )
    del out

    # 2. time to tolerance ------------------------------------------------------------------------
    stage("to tol")
    spent = 0.0
    for knob in runner.knobs(spec):
        call = runner.to_tolerance(prepared, knob, cap)
        first = None
        if _warm(runner, call):
            _, first = clock.time(call)
        out, t = clock.time(call)
        m = _measure(out, problem, ref)
        met = m.error <= settings.target
        times = [t]
        if met:
            for _ in range(settings.repeats - 1):
                if sum(times) > budget:
                    break
                out, t = clock.time(call)
                times.append(t)
        spent += sum(times) + (first or 0.0)
        capped = out.n_iters is not None and out.n_iters >= cap
        status = "ok"
        if not met and capped:
            status = "stopped: max_iter reached"
        elif not met and spent > budget:
            status = "stopped: budget_s used"
        med = median(times)
        records.append(
            RunRecord(
                **base, mode="tol", knob=runner.knob_name, knob_value=float(knob), n_iters=out.n_iters,
                times_s=times, time_s=med, first_call_s=first,
                compile_s=(first - t) if first is not None else None,
                met_target=met, status=status, **_fields(m),
            )
        )
        del out
        if met or status != "ok":
            break

    # 3. error vs iterations ----------------------------------------------------------------------
    stage("curve")
    spent = 0.0
    base_grid = tuple(settings.curve_iters)
    for k in base_grid + tuple(k for k in settings.curve_extend if k > max(base_grid)):
        if k < runner.min_iters(prepared) or k > cap:
            continue
        if k > max(base_grid) and records[-1].mode == "curve" and records[-1].error is not None \
                and records[-1].error <= settings.target:
            break  # the extension runs only while the error is above the target
        call = runner.fixed(prepared, k)
        first = None
        if _warm(runner, call):
            _, first = clock.time(call)
        out, t = clock.time(call)
        spent += t + (first or 0.0)
        records.append(
            RunRecord(
                **base, mode="curve", knob="n_iter", knob_value=float(k), n_iters=out.n_iters,
                times_s=[t], time_s=t, first_call_s=first,
                compile_s=(first - t) if first is not None else None,
                **_fields(_measure(out, problem, ref)),
            )
        )
        del out
        if spent > budget:
            records[-1].status = "ok (grid stopped here: budget_s used)"
            break
    return records


def _reference_quality(problem: BenchProblem, ref: Reference) -> dict[str, Any]:
    spec = problem.spec
    q: dict[str, Any] = {}
    if spec.lazy:
        return {"note": "point cloud: no reference (the error is the marginal error of the potentials)"}
    if spec.kind == "balanced":
        q["marginal_error"] = float(marginal_l1(ref.plan, problem.a64, problem.b64).max())
    elif spec.kind == "partial":
        q["partial_violation"] = float(partial_violation(ref.plan, problem.a64, problem.b64, spec.mass).max())
    else:
        q["kkt_residual"] = float(
            unbalanced_kkt_residual(ref.plan, problem.a64, problem.b64, problem.cost64, spec.epsilon, spec.rho).max()
        )
    return q


def _write_partial(path: Path, settings: BenchSettings, problems: list[dict[str, Any]], records: list[RunRecord]) -> None:
    """Records so far (a long run that stops early keeps them); replaced by ``bench.json`` at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"partial": True, "settings": settings.to_dict(), "problems": problems, "records": [r.to_dict() for r in records]}
    path.write_text(json.dumps(json_ready(payload), allow_nan=False, default=str))


def _prime(runners: list[Runner], specs: list[Any], *, dtype: torch.dtype, device: torch.device) -> None:
    """Run every runner once on a tiny problem of each kind it will meet, so that one-time costs
    (imports, backend start-up, thread pools) fall outside every measurement."""
    from .problems import ProblemSpec

    kinds = {(s.kind, s.batched, s.lazy) for s in specs}
    for kind, batched, lazy in sorted(kinds):
        extra = {"rho": 0.5} if kind == "unbalanced" else {"mass": 0.8, "entropy": "shannon"} if kind == "partial" else {}
        family, dim, n = ("points", 3, 32) if lazy else ("clusters", 2, 16)
        tiny = ProblemSpec(name=f"prime-{kind}", family=family, kind=kind, batch=2 if batched else 1, n=n, m=n,
                           epsilon=0.5, dim=dim, default=not lazy, **extra)
        problem = build_problem(tiny, dtype=dtype, device=device)
        for runner in runners:
            if runner.supports(tiny) is not None:
                continue
            try:
                prepared = runner.prepare(problem)
                runner.fixed(prepared, max(2, runner.min_iters(prepared)))()
            except Exception:  # noqa: BLE001 - a real failure is reported by the measured run
                pass


def run_benchmark(
    settings: BenchSettings, *, progress: bool = True, echo: Callable[[str], None] = print
) -> BenchReport:
    """Run the benchmark described by ``settings`` (validated here).

    Args:
        settings: what to run.
        progress: show a tqdm progress bar (on stderr).
        echo: where notices go (skipped libraries, failures).

    Returns:
        A :class:`BenchReport`; write it with :func:`otalign.bench.report.write_outputs`.
    """
    settings.validate()
    t_start = time.perf_counter()
    device, dtype = settings.torch_device, settings.torch_dtype
    threads_before = torch.get_num_threads()
    thread_notes = _set_threads(settings.cpu_threads)
    try:
        return _run(settings, device, dtype, t_start, thread_notes, progress, echo)
    finally:
        torch.set_num_threads(threads_before)


def _xla_started() -> bool:
    """Whether JAX's backends exist already (XLA reads ``XLA_FLAGS`` when it starts them)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge  # private; the public API has no "started?" query

        return bool(xla_bridge._backends)
    except (ImportError, AttributeError):
        return True


def _set_threads(threads: Optional[int]) -> list[str]:
    """Apply ``--threads`` to torch and (if JAX is not loaded yet) to XLA; return notices."""
    if threads is None:
        return []
    torch.set_num_threads(threads)
    if _xla_started():
        return [f"--threads {threads}: JAX's backend was already started, its CPU thread pool is unchanged"]
    eigen = "false" if threads == 1 else "true"
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={threads}".strip()
    return []


def _run(
    settings: BenchSettings, device: torch.device, dtype: torch.dtype, t_start: float, thread_notes: list[str],
    progress: bool, echo: Callable[[str], None],
) -> BenchReport:
    runners, notices = make_runners(settings.library_selection, device=device, dtype=dtype)
    notices = thread_notes + notices
    for notice in notices:
        echo(f"notice: {notice}")
    _prime(runners, settings.problem_specs, dtype=dtype, device=device)
    specs = settings.problem_specs
    cache = Path(settings.out) / "references"
    records: list[RunRecord] = []
    problems_meta: list[dict[str, Any]] = []

    from tqdm.auto import tqdm

    tasks = sum(1 for s in specs for r in runners if r.supports(s) is None) + len(specs)
    bar = tqdm(total=tasks, disable=not progress, unit="task", dynamic_ncols=True)
    partial_path = Path(settings.out) / "bench.partial.json"
    try:
        for spec in specs:
            t_problem = time.perf_counter()
            bar.set_description(f"{spec.name} reference")
            problem = build_problem(spec, dtype=dtype, device=device)
            ref = reference_solution(problem, cache_dir=cache, device=settings.torch_reference_device)
            problems_meta.append(
                {"spec": spec.to_dict(), "reference": ref.summary(), "reference_quality": _reference_quality(problem, ref)}
            )
            bar.update()
            for runner in runners:
                reason = runner.supports(spec)
                base = {"problem": spec.name, "library": runner.library, "config": runner.config}
                if reason is not None:
                    records.append(RunRecord(**base, mode="skip", status=f"skipped: {reason}"))
                    continue

                def on_stage(s: str, _r: Runner = runner) -> None:
                    bar.set_description(f"{spec.name} {_r.name} {s}")

                try:
                    records += bench_configuration(runner, problem, ref, settings, on_stage)
                except Exception as exc:  # noqa: BLE001 - one failing library must not stop the run
                    msg = f"error: {type(exc).__name__}: {exc}"
                    records.append(RunRecord(**base, mode="error", status=msg))
                    bar.write(f"{spec.name} {runner.name}: {msg}")
                    if settings.quick is False and progress:
                        bar.write(traceback.format_exc(limit=3))
                bar.update()
            del problem, ref
            _write_partial(partial_path, settings, problems_meta, records)
            if progress:
                bar.write(f"{spec.name}: done in {time.perf_counter() - t_problem:.1f} s")
    finally:
        bar.close()
    machine = machine_info(device)
    machine["xla_flags"] = os.environ.get("XLA_FLAGS")
    return BenchReport(
        settings=settings,
        machine=machine,
        versions=library_versions(),
        notices=notices,
        problems=problems_meta,
        records=records,
        runners=[r.name for r in runners],
        wall_s=time.perf_counter() - t_start,
        labels={r.library: r.label for r in runners},
    )

