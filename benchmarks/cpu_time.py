"""CPU time of otalign's bench configurations on bench problems, best of several runs.

    python benchmarks/cpu_time.py --problems balanced-n1024-eps0.05,unbalanced-n1024-eps0.05
    PYTHONPATH=/path/to/other/checkout python benchmarks/cpu_time.py ...   # the same for another version

``otalign bench`` reports medians of wall-clock times, which on a shared virtual machine move by
+-30% (and more) between identical runs. To compare two versions of otalign, this script times
the same calls as ``otalign bench`` (its otalign runner: ``ota.solve`` with ``grad="none"``, the
plan read back) in CPU time of this process (``time.process_time``, one thread), the best of
``--repeats`` runs, the two measures interleaved (``otalign.bench.timing.best_cpu_time``):

* ``ms/iter``: exactly ``--iters`` sweeps (``tol=0``), divided by ``--iters``;
* ``ms to TARGET``: the default stopping rule at ``tol=--target`` (the engine's own error; the
  bench's independent float64 error is not recomputed here), and the sweeps it took.

Run it once per checkout (``PYTHONPATH`` first on the path) and alternate the checkouts.
"""

from __future__ import annotations

import argparse
import json

import torch

import otalign
from otalign.bench.problems import build_problem, select_problems
from otalign.bench.runners.otalign_runner import OtalignRunner
from otalign.bench.timing import best_cpu_time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", required=True, help="comma-separated bench problem patterns (otalign bench --list)")
    p.add_argument("--config", default="default", help="otalign bench configuration (default: default)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--target", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    runner = OtalignRunner(args.config)
    for spec in select_problems(args.problems.split(",")):
        prepared = runner.prepare(build_problem(spec))
        to_tol = runner.to_tolerance(prepared, args.target, args.max_iter)
        best = best_cpu_time({"fixed": runner.fixed(prepared, args.iters), "tol": to_tol}, args.repeats)
        fixed_s, tol_s, out = best["fixed"], best["tol"], to_tol()
        print(json.dumps({"otalign": otalign.__file__.rsplit("/otalign/", 1)[0], "problem": spec.name,
                          "config": args.config, "ms_per_iter": round(fixed_s * 1e3 / args.iters, 4),
                          f"ms_to_{args.target:g}": round(tol_s * 1e3, 2), "iters": out.n_iters}), flush=True)


if __name__ == "__main__":
    main()
