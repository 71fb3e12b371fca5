"""Reporting: the summary (best configuration per library and measure, ratio otalign / best other),
the terminal table, the JSON file and the PNG plots."""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .harness import BenchReport
from .runners import RUNNERS, RunRecord
from .runners.base import json_ready

__all__ = ["MEASURES", "summarize", "format_table", "to_json", "write_outputs", "plot_problem", "SCHEMA"]

SCHEMA = "otalign-bench/1"


@dataclass(frozen=True)
class Measure:
    """One row of the table: how to read a configuration's figure from its records."""

    key: str
    label: str  # may contain {target} and {iters}
    ratio: bool  # report otalign / best other (lower is better)
    fmt: Callable[[float], str]


def _g3(x: float) -> str:
    return f"{x:.3g}"


MEASURES: tuple[Measure, ...] = (
    Measure("ms_per_iter", "ms/iter", True, _g3),
    Measure("ms_to_target", "ms to {target:g}", True, _g3),
    Measure("iters_to_target", "iters to {target:g}", False, lambda x: f"{x:.0f}"),
    Measure("error_fixed", "error @{iters} it", False, lambda x: f"{x:.1e}"),
    Measure("peak_mb", "peak MB", True, lambda x: f"{x:.1f}"),
    Measure("compile_s", "compile s", False, lambda x: f"{x:.2f}"),
)


def _ok(r: RunRecord) -> bool:
    return r.status.startswith("ok") or r.status.startswith("stopped")


def _config_value(measure: str, recs: list[RunRecord]) -> tuple[Optional[float], str]:
    """Figure of one configuration on one problem, and the text shown when it is missing."""
    if any(r.mode == "error" for r in recs):
        return None, "error"
    fixed = next((r for r in recs if r.mode == "fixed"), None)
    tol_met = next((r for r in recs if r.mode == "tol" and r.met_target), None)
    if measure == "ms_per_iter":
        return (fixed.ms_per_iter if fixed else None), "-"
    if measure in ("ms_to_target", "iters_to_target"):
        if tol_met is None:
            tol = [r for r in recs if r.mode == "tol"]
            if not tol:
                return None, "-"
            why = tol[-1].status
            if "max_iter" in why:
                return None, "not reached (max_iter)"
            if "budget" in why:
                return None, "not reached (budget)"
            return None, "not reached"
        if measure == "ms_to_target":
            return (None if tol_met.time_s is None else 1e3 * tol_met.time_s), "-"
        return (None if tol_met.n_iters is None else float(tol_met.n_iters)), "?"
    if measure == "error_fixed":
        if fixed is None:
            return None, "-"
        return (fixed.error if fixed.error is not None else None), ("non-finite" if fixed.finite is False else "-")
    if measure == "peak_mb":
        if fixed is None or fixed.peak_mem_bytes is None:
            return None, "-"
        return fixed.peak_mem_bytes / 2**20, "-"
    if measure == "compile_s":
        return (fixed.compile_s if fixed and fixed.compile_s is not None else None), "-"
    raise ValueError(f"unknown measure {measure!r}")


def _fixed_sweeps(recs: list[RunRecord], settings: Any) -> str:
    """The sweep count of a problem's ms/iter measurement (per problem: see the settings)."""
    counts = sorted({int(r.knob_value) for r in recs if r.mode == "fixed" and r.knob_value is not None})
    if not counts:
        return "?" if settings.fixed_iters is None else str(settings.fixed_iters)
    return "/".join(str(k) for k in counts)


def summarize(report: BenchReport) -> list[dict[str, Any]]:
    """Per problem and measure: each library's best configuration and figure, and the ratio.

    Returns:
        A list of ``{"problem", "measure", "label", "values": {library: {"value", "config",
        "text"}}, "ratio", "best_other"}``. ``ratio`` is otalign's best figure over the best
        figure of the other libraries (lower is better for every ratio measure), or None.
    """
    settings = report.settings
    libraries = [lib for lib in RUNNERS if any(name.split(":")[0] == lib for name in report.runners)]
    rows: list[dict[str, Any]] = []
    for meta in report.problems:
        pname = meta["spec"]["name"]
        recs = [r for r in report.records if r.problem == pname]
        for measure in MEASURES:
            values: dict[str, dict[str, Any]] = {}
            for lib in libraries:
                lib_recs = [r for r in recs if r.library == lib]
                configs = sorted({r.config for r in lib_recs if r.mode != "skip"})
                if not configs:
                    values[lib] = {"value": None, "config": None, "text": "n/a"}
                    continue
                best: tuple[Optional[float], Optional[str]] = (None, None)
                texts = []
                for cfg in configs:
                    value, text = _config_value(measure.key, [r for r in lib_recs if r.config == cfg])
                    texts.append(text)
                    if measure.key == "iters_to_target":
                        continue
                    if value is not None and math.isfinite(value) and (best[0] is None or value < best[0]):
                        best = (value, cfg)
                if measure.key == "iters_to_target":  # iterations of the fastest configuration
                    times = {
                        cfg: _config_value("ms_to_target", [r for r in lib_recs if r.config == cfg])[0] for cfg in configs
                    }
                    timed = {c: t for c, t in times.items() if t is not None}
                    if timed:
                        cfg = min(timed, key=timed.get)  # type: ignore[arg-type]
                        best = (_config_value("iters_to_target", [r for r in lib_recs if r.config == cfg])[0], cfg)
                if best[0] is None:
                    reached = [t for t in texts if t.startswith("not reached")]
                    text = reached[0] if reached else ("error" if "error" in texts else texts[0])
                    values[lib] = {"value": None, "config": None, "text": text}
                else:
                    tag = f" ({best[1]})" if len(configs) > 1 else ""
                    values[lib] = {"value": best[0], "config": best[1], "text": measure.fmt(best[0]) + tag}
            if measure.key == "compile_s" and all(v["value"] is None for v in values.values()):
                continue
            ratio, best_other = None, None
            if measure.ratio and values.get("otalign", {}).get("value") is not None:
                others = {lib: v["value"] for lib, v in values.items() if lib != "otalign" and v["value"] is not None}
                if others:
                    best_other = min(others, key=others.get)  # type: ignore[arg-type]
                    if others[best_other] > 0:
                        ratio = values["otalign"]["value"] / others[best_other]
            rows.append(
                {
                    "problem": pname,
                    "measure": measure.key,
                    "label": measure.label.format(target=settings.target, iters=_fixed_sweeps(recs, settings)),
                    "values": values,
                    "ratio": ratio,
                    "best_other": best_other,
                }
            )
    return rows


def format_table(report: BenchReport, summary: Optional[list[dict[str, Any]]] = None) -> str:
    """The terminal table: one row per problem and measure, one column per library."""
    summary = summarize(report) if summary is None else summary
    libraries = [lib for lib in RUNNERS if any(name.split(":")[0] == lib for name in report.runners)]
    labels = {lib: RUNNERS[lib].label for lib in libraries}
    header = ["problem", "measure"] + [labels[lib] for lib in libraries] + ["otalign/best"]
    body: list[list[str]] = []
    last = None
    for row in summary:
        ratio = row["ratio"]
        rtext = "-" if ratio is None else f"{ratio:.2f} (vs {labels[row['best_other']]})"
        body.append(
            [row["problem"] if row["problem"] != last else "", row["label"]]
            + [row["values"][lib]["text"] for lib in libraries]
            + [rtext]
        )
        last = row["problem"]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    for r in body:
        if r[0] and len(lines) > 2:
            lines.append("")
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    s = report.settings
    foot = (
        f"{s.dtype} on {report.machine.get('device')}; ms/iter over the sweeps named in 'error @K it', median of {s.repeats}; "
        f"errors measured independently in float64 (balanced: L1 marginal error; unbalanced/partial: "
        f"||P - P*||_1 to a float64 reference); ratio < 1: otalign is faster / smaller."
    )
    return "\n".join(lines + ["", foot])


def to_json(report: BenchReport, summary: Optional[list[dict[str, Any]]] = None, plots: Optional[list[str]] = None) -> dict[str, Any]:
    """Everything as a JSON-ready dict (non-finite numbers become null)."""
    from .timing import Clock, MemoryMeter

    device = report.settings.torch_device
    return json_ready(
        {
            "schema": SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_s": report.wall_s,
            "settings": report.settings.to_dict(),
            "machine": report.machine,
            "versions": report.versions,
            "notices": report.notices,
            "runners": report.runners,
            "methods": {
                "timing_torch": Clock(device).method,
                "timing_jax": "perf_counter around a call ending with block_until_ready",
                "memory_torch": MemoryMeter(device, "torch").method,
                "memory_jax": MemoryMeter(device, "jax").method,
                "error": "otalign.bench.errors.measure_plan (float64): balanced: ||P1-a||_1 + ||P^T1-b||_1; "
                "unbalanced and partial: ||P - P*||_1 to the float64 reference; worst problem of a batch",
                "iteration": "one sweep = one update of every dual (both potentials; partial: caps and mass)",
            },
            "problems": report.problems,
            "records": [r.to_dict() for r in report.records],
            "summary": summarize(report) if summary is None else summary,
            "plots": plots or [],
        }
    )


def plot_problem(report: BenchReport, problem: str, path: Path) -> Optional[Path]:
    """Error vs iterations and error vs time of every configuration on ``problem`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in report.records if r.problem == problem]
    series: dict[str, list[RunRecord]] = {}
    for r in recs:
        if r.mode == "curve" and r.error is not None and math.isfinite(r.error):
            series.setdefault(f"{r.library}:{r.config}", []).append(r)
    tol_points: dict[str, list[RunRecord]] = {}
    for r in recs:
        if r.mode == "tol" and r.error is not None and math.isfinite(r.error) and r.time_s is not None:
            tol_points.setdefault(f"{r.library}:{r.config}", []).append(r)
    if not series and not tol_points:
        return None
    meta = next(m for m in report.problems if m["spec"]["name"] == problem)
    kind = meta["spec"]["kind"]
    ylabel = "L1 marginal error" if kind == "balanced" else "||P - P*||_1"
    fig, (ax_it, ax_t) = plt.subplots(1, 2, figsize=(14, 4.8))
    cmap = plt.get_cmap("tab20")
    names = sorted(set(series) | set(tol_points))
    for i, name in enumerate(names):
        color = cmap(i % 20)
        pts = sorted(series.get(name, []), key=lambda r: (r.n_iters or r.knob_value or 0))
        if pts:
            its = [r.n_iters if r.n_iters is not None else r.knob_value for r in pts]
            errs = [max(r.error, 1e-17) for r in pts]
            ax_it.plot(its, errs, "o-", color=color, label=name, ms=4)
            ax_t.plot([1e3 * r.time_s for r in pts], errs, "o-", color=color, label=name, ms=4)
        tp = tol_points.get(name, [])
        if tp:
            ax_t.plot([1e3 * r.time_s for r in tp], [max(r.error, 1e-17) for r in tp], "x", color=color, ms=7,
                      label=f"{name} (stopping knob)")
    for ax in (ax_it, ax_t):
        ax.axhline(report.settings.target, color="gray", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_it.set_xscale("log")
    ax_it.set_xlabel("sweeps")
    ax_t.set_xscale("log")
    ax_t.set_xlabel("time (ms)")
    ax_it.set_title(f"{problem}: error vs iterations")
    ax_t.set_title(f"{problem}: error vs time ({report.settings.dtype}, {report.machine.get('device')})")
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right", frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(report: BenchReport, out: Optional[Path] = None) -> dict[str, Any]:
    """Write ``bench.json`` and ``plots/<problem>.png`` under ``out`` (default: settings.out).

    Returns:
        ``{"json": path, "plots": [paths], "summary": rows}``.
    """
    out = Path(report.settings.out if out is None else out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(report)
    plots = []
    for meta in report.problems:
        name = meta["spec"]["name"]
        p = plot_problem(report, name, out / "plots" / f"{name}.png")
        if p is not None:
            plots.append(str(p))
    path = out / "bench.json"
    path.write_text(json.dumps(to_json(report, summary, plots), indent=1, allow_nan=False))
    (out / "bench.partial.json").unlink(missing_ok=True)
    return {"json": str(path), "plots": plots, "summary": summary}
