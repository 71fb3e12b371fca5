"""Backward peak memory and time vs iteration count: otalign's gradient modes next to POT's.

For each configuration fresh processes build the problem (float32, points on the unit sphere in
R^128, squared Euclidean cost, epsilon = 0.05, a fixed number of iterations), then run forward +
backward of ``value`` w.r.t. the cost. Peak memory is the growth of the process's peak resident set
size (``ru_maxrss``) from the moment the inputs exist: every byte the solve and its backward
allocate, torch or not, at page granularity. It is measured in its own process with
``MALLOC_MMAP_THRESHOLD_=65536``, so that glibc returns every freed large block at once (with its
default dynamic threshold, freed temporaries stay in the heap and the high-water mark then
depends on fragmentation, not on what is alive). Time is wall clock of forward + backward, median
of repeats, in a process with the default allocator.

    python benchmarks/grad_memory.py [--iters 10 100 1000] [--repeats 3] [--max-gb 12]

Configurations whose extrapolated memory exceeds ``--max-gb`` (unrolled autodiff at 1000
iterations) are skipped and reported with the extrapolation.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(spec: dict, queue) -> None:
    import ot
    import torch

    import otalign as ota

    torch.manual_seed(0)
    B, n, iters = spec["B"], spec["n"], spec["iters"]
    x = torch.nn.functional.normalize(torch.randn(B, n, 128), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(B, n, 128), dim=-1)
    base_cost = (torch.cdist(x, y) ** 2).contiguous()
    if B == 1:
        base_cost = base_cost[0]
    times = []
    start_rss = None
    for _ in range(spec["repeats"]):
        cost = base_cost.clone().requires_grad_(True)
        if start_rss is None:
            start_rss = _rss_mb()
        t0 = time.perf_counter()
        if spec["lib"] == "otalign":
            res = ota.solve(cost, epsilon=0.05, tol=0, max_iter=iters, grad=spec["mode"])
            loss = res.value.sum()
        elif B == 1:
            u = torch.full((n,), 1.0 / n)
            res = ot.solve(cost, u, u, reg=0.05, max_iter=iters, tol=0.0, grad=spec["mode"])
            loss = res.value.sum()
        else:
            res = ot.batch.solve_batch(cost, reg=0.05, max_iter=iters, tol=0.0, grad=spec["mode"], reg_type="kl")
            loss = res.value.sum()
        loss.backward()
        times.append(time.perf_counter() - t0)
        assert torch.isfinite(cost.grad).all()
        del res, loss, cost
    queue.put({"seconds": statistics.median(times), "peak_mb": _rss_mb() - start_rss})


def _spawn(spec: dict, env: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = ctx.Process(target=_worker, args=(spec, queue))
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    proc.join()
    if proc.exitcode != 0:
        return {"error": f"worker exited with {proc.exitcode}"}
    return queue.get()


def measure(spec: dict) -> dict:
    """Time with the default allocator; memory with large blocks returned to the system at once."""
    timed = _spawn(spec, {})
    if "error" in timed:
        return timed
    mem = _spawn(dict(spec, repeats=1), {"MALLOC_MMAP_THRESHOLD_": "65536"})
    if "error" in mem:
        return mem
    return {"seconds": timed["seconds"], "peak_mb": mem["peak_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-gb", type=float, default=12.0)
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    configs = [("otalign", "implicit"), ("otalign", "envelope"), ("otalign", "unroll"),
               ("POT", "envelope"), ("POT", "autodiff")]
    rows = []
    print(f"{'problem':14s} {'library':8s} {'mode':9s} " + " ".join(f"{f'{k} it: MB / s':>20s}" for k in args.iters))
    for B, n in ((1, 1024), (16, 512)):
        for lib, mode in configs:
            cells, per_iter_mb = [], None
            for k in args.iters:
                if per_iter_mb is not None and per_iter_mb * k / 1024 > args.max_gb:
                    cells.append(f"skip (~{per_iter_mb * k / 1024:.0f} GB)")
                    rows.append(dict(B=B, n=n, lib=lib, mode=mode, iters=k, skipped=True, estimate_gb=per_iter_mb * k / 1024))
                    continue
                out = measure(dict(B=B, n=n, iters=k, lib=lib, mode=mode, repeats=args.repeats))
                rows.append(dict(B=B, n=n, lib=lib, mode=mode, iters=k, **out))
                if "error" in out:
                    cells.append(out["error"])
                    continue
                cells.append(f"{out['peak_mb']:9.0f} / {out['seconds']:6.2f}")
                if mode in ("unroll", "autodiff"):
                    per_iter_mb = max(out["peak_mb"], 1.0) / k
            name = f"n={n}" if B == 1 else f"B={B}xn={n}"
            print(f"{name:14s} {lib:8s} {mode:9s} " + " ".join(f"{c:>20s}" for c in cells), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
