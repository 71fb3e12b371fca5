"""Peak memory of a point-cloud solve without an n x m matrix (issue 11's memory criterion).

    python benchmarks/geometry_memory.py                # n = m = 40,000, d = 3, float32, online
    python benchmarks/geometry_memory.py --n 20000 --backend tensorized

Builds two clouds, solves ``sweeps`` balanced sweeps with ``PointCloud(..., backend)``, then
reads ``value``, ``f``, ``g`` and ``res.apply(y)``, and prints the growth of the process's peak
resident memory (``VmHWM``, Linux) over its resident memory before the solve, next to the size of
the dense cost it never builds. Run it in a fresh process (the peak is per process).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import otalign as ota
from otalign import constraints as C
from otalign.bench.timing import proc_status
from otalign import geometry as G



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40_000)
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--sweeps", type=int, default=20)
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--backend", default="online", choices=["online", "tensorized", "keops"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=g)
    y = torch.randn(args.n, args.d, generator=g) + 0.5
    geom = G.PointCloud(x, y, backend=args.backend)
    before = proc_status("VmRSS", required=True)
    t0 = time.perf_counter()
    res = ota.solve(geom, C.balanced(), epsilon=args.epsilon, tol=0, max_iter=args.sweeps, check_every=args.sweeps)
    solved = time.perf_counter() - t0
    value, f, gg = res.value, res.f, res.g
    mapped = res.apply(y)
    total = time.perf_counter() - t0
    peak = proc_status("VmHWM", required=True)
    dense = args.n * args.n * 4
    out = {
        "n": args.n, "d": args.d, "sweeps": args.sweeps, "backend": args.backend,
        "peak_growth_MB": round((peak - before) / 2**20, 1),
        "dense_cost_MB": round(dense / 2**20, 1),
        "solve_s": round(solved, 2), "total_s": round(total, 2),
        "value": float(value), "finite": bool(torch.isfinite(f).all() and torch.isfinite(gg).all()
                                              and torch.isfinite(mapped).all()),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
