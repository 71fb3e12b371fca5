"""Per-configuration table of an ``otalign bench`` run: sweeps and time to the target, ms/sweep.

``otalign bench`` prints each library's best configuration per measure; this prints every
configuration (e.g. otalign's default, ``log``, ``overrelax``, ``anneal`` side by side), read from
the run's ``bench.json``::

    python benchmarks/sweeps_table.py results/bench/bench.json
    python benchmarks/sweeps_table.py results/bench/bench.json --problems clusters --markdown

Columns: ``ms/sweep`` (the ms/iter measurement), ``sweeps`` and ``ms`` of the fastest stopping-knob
run that met the target (``knob``: the value that did), or why none did, and the error after the
ms/iter measurement's sweeps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional


def _why_not(tol: list[dict[str, Any]]) -> str:
    if not tol:
        return "-"
    status = tol[-1].get("status", "")
    if "max_iter" in status:
        return "not reached (max_iter)"
    if "budget" in status:
        return "not reached (budget)"
    if tol[-1].get("finite") is False:
        return "not reached (non-finite)"
    return "not reached"


def rows(data: dict[str, Any], patterns: Optional[list[str]] = None) -> list[list[str]]:
    """One row per (problem, configuration) of the run, in run order."""
    out: list[list[str]] = []
    problems = [p["spec"]["name"] for p in data["problems"]]
    if patterns:
        problems = [p for p in problems if any(pat in p for pat in patterns)]
    for problem in problems:
        recs = [r for r in data["records"] if r["problem"] == problem]
        configs: list[str] = []
        for r in recs:
            name = f"{r['library']}:{r['config']}"
            if r["mode"] != "skip" and name not in configs:
                configs.append(name)
        for name in configs:
            mine = [r for r in recs if f"{r['library']}:{r['config']}" == name]
            if any(r["mode"] == "error" for r in mine):
                msg = next(r["status"] for r in mine if r["mode"] == "error")
                out.append([problem, name, "error", "", "", "", msg[:60]])
                continue
            fixed = next((r for r in mine if r["mode"] == "fixed"), None)
            tol = [r for r in mine if r["mode"] == "tol"]
            met = next((r for r in tol if r.get("met_target")), None)
            ms_iter = "-" if not fixed or fixed.get("ms_per_iter") is None else f"{fixed['ms_per_iter']:.3g}"
            if met is not None:
                sweeps = "?" if met.get("n_iters") is None else str(met["n_iters"])
                ms = f"{1e3 * met['time_s']:.4g}"
                knob = f"{met['knob']}={met['knob_value']:g}"
            else:
                sweeps, ms, knob = _why_not(tol), "", ""
            err = "-"
            if fixed is not None:
                err = "non-finite" if fixed.get("finite") is False else (
                    "-" if fixed.get("error") is None else f"{fixed['error']:.1e} @{int(fixed['knob_value'])}")
            out.append([problem, name, ms_iter, sweeps, ms, knob, err])
    return out


HEADER = ["problem", "configuration", "ms/sweep", "sweeps to target", "ms to target", "knob", "error @K"]


def format_rows(table: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        last = None
        for r in table:
            cells = [r[0] if r[0] != last else ""] + r[1:]
            last = r[0]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths))]
    last = None
    for r in table:
        if r[0] != last and last is not None:
            lines.append("")
        cells = [r[0] if r[0] != last else ""] + r[1:]
        last = r[0]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="bench.json (or bench.partial.json) of a run")
    parser.add_argument("--problems", help="comma-separated substrings of problem names")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"json={str(args.json)!r}: {exc}")
    target = data.get("settings", {}).get("target")
    table = rows(data, args.problems.split(",") if args.problems else None)
    print(format_rows(table, args.markdown))
    if target is not None:
        print(f"\ntarget: error <= {target:g}; times from a run on: {data.get('machine', {}).get('cpu', '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
