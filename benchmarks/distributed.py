"""Row-sharded solves (``shard="rows"``): per-rank peak memory and time per sweep for W ranks.

    python benchmarks/distributed.py                       # W = 1, 2, 4 spawned gloo ranks on CPU
    python benchmarks/distributed.py --spawn 2 --rows 8192    # one world size
    torchrun --nproc_per_node 4 benchmarks/distributed.py  # under torchrun (NCCL when CUDA is present)

Every rank builds ITS rows of one global problem (points ``x`` (n, d), ``y`` (m, d), squared
Euclidean cost): a dense ``(n / W, m)`` cost block (``--backend dense``) or a point cloud whose
``x`` is its shard (``--backend online``), and runs ``--sweeps`` balanced sweeps (``tol=0``, one
check at the end) with ``shard="rows"``. It reports, per rank, the growth of the process's peak
resident memory (``VmHWM``, reset after a small warm-up solve) over its resident memory before
building its block of the problem (CPU), or
``torch.cuda.max_memory_allocated`` (CUDA), and milliseconds per sweep. Rank 0 prints one JSON
line per world size with the largest per-rank peak and the slowest rank's time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist

import otalign as ota
from otalign import constraints as C
from otalign.bench.timing import proc_status, reset_peak_rss
from otalign import geometry as G



def _rows(n: int, world: int, rank: int) -> slice:
    """Rank ``rank``'s contiguous block of ``n`` rows (the first ``n % world`` ranks get one more)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def measure(args: argparse.Namespace) -> dict:
    """One rank's measurement (the process group is initialised)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    cuda = torch.cuda.is_available() and dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=g)
    y = torch.randn(args.m, args.d, generator=g) + 0.5
    rows = _rows(args.n, world, rank)
    x_local, y = x[rows].to(device), y.to(device)
    del x
    # warm-up on a small problem (lazy imports, allocator pools, gloo connections), then measure
    # the growth of the peak from here: /proc/self/clear_refs "5" resets VmHWM to the current RSS
    ota.solve(ota.costs.sqeuclidean(x_local[:8], y[:8]), C.balanced(), epsilon=args.epsilon, max_iter=2,
              shard="rows", warn=False)
    dist.barrier()
    if not cuda:
        if not reset_peak_rss():
            raise RuntimeError("/proc/self/clear_refs is not writable: the peak cannot be reset (Linux only)")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = proc_status("VmRSS", required=True)
    if args.backend == "dense":
        problem = ota.costs.sqeuclidean(x_local, y)
    else:
        problem = G.PointCloud(x_local, y, backend="online")
    cons = C.balanced()
    kw = dict(epsilon=args.epsilon, tol=0, check_every=args.sweeps, shard="rows", warn=False, method=args.method)
    dist.barrier()
    t0 = time.perf_counter()
    res = ota.solve(problem, cons, max_iter=args.sweeps, **kw)
    value = float(res.value)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if cuda else proc_status("VmHWM", required=True)) - before
    return {
        "rank": rank, "rows": rows.stop - rows.start, "peak_MB": peak / 2**20,
        "ms_per_sweep": 1e3 * elapsed / args.sweeps, "value": value,
    }


def run(args: argparse.Namespace) -> None:
    """Measure on this rank and print the summary on rank 0."""
    world = dist.get_world_size()
    mine = measure(args)
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    if dist.get_rank() == 0:
        block = args.n / world * args.m * 4
        summary = {
            "world": world, "backend": args.backend, "comm": dist.get_backend(), "n": args.n, "m": args.m,
            "sweeps": args.sweeps, "method": args.method,
            "dense_block_MB": round(block / 2**20, 1) if args.backend == "dense" else None,
            "peak_MB_max_rank": round(max(p["peak_MB"] for p in parts), 1),
            "peak_MB_per_rank": [round(p["peak_MB"], 1) for p in parts],
            "ms_per_sweep": round(max(p["ms_per_sweep"] for p in parts), 2),
            "value": parts[0]["value"],
        }
        print(json.dumps(summary), flush=True)


def _spawned(rank: int, world: int, store: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        run(args)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip the interpreter teardown that can race gloo's threads


def spawn(world: int, args: argparse.Namespace) -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_spawned, args=(world, os.path.join(tmp, "store"), args), nprocs=world, join=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # (--rows/--cols, not --n/--m: torchrun would take those for abbreviations of its own options)
    p.add_argument("--rows", dest="n", type=int, default=4096, help="global rows n")
    p.add_argument("--cols", dest="m", type=int, default=4096, help="columns m")
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--sweeps", type=int, default=50)
    p.add_argument("--epsilon", type=float, default=0.5)
    p.add_argument("--backend", default="dense", choices=["dense", "online"])
    p.add_argument("--method", default="auto", choices=["auto", "log"])
    p.add_argument("--threads", type=int, default=1, help="torch threads per spawned rank")
    p.add_argument("--spawn", type=int, default=0, help="spawn W gloo ranks (default: W = 1, 2, 4 in turn)")
    args = p.parse_args()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        try:
            run(args)
        finally:
            dist.destroy_process_group()
        return
    for world in ([args.spawn] if args.spawn else [1, 2, 4]):
        spawn(world, args)


if __name__ == "__main__":
    main()
