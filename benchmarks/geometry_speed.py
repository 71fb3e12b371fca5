"""Time per sweep of point-cloud solves, otalign's backends next to POT and GeomLoss (issue 11).

    python benchmarks/geometry_speed.py                       # n = 4,096 and 50,000, d = 3, float32
    python benchmarks/geometry_speed.py --sizes 4096 --repeats 5

Every library runs balanced entropic OT between the same two clouds (``x ~ N(0, I)``,
``y ~ N(0.5, I)`` in 3-D, squared Euclidean cost, ``epsilon = 0.1``, uniform weights) for a
fixed number of sweeps, one thread by default; the table gives the median time per sweep over
``--repeats`` runs, and the ratio to otalign's dense log-domain solve (or to otalign online where
the dense cost does not fit). Configurations:

* otalign ``Dense`` (the cost as a tensor) with ``method="log"`` and ``"auto"``;
* otalign ``PointCloud`` ``"online"`` and ``"keops"`` (when pykeops is installed);
* POT ``ot.bregman.empirical_sinkhorn(..., isLazy=True, batchSize=...)`` (its lazy, batched path;
  float32 torch tensors, so it runs on POT's torch backend);
* GeomLoss ``SamplesLoss("sinkhorn", backend="online", debias=False)`` (KeOps); its sweeps are the
  steps of its epsilon-scaling schedule down to the same epsilon (``blur = sqrt(epsilon / 2)`` on
  its halved cost), counted as ``otalign bench`` does (``schedule_sweeps``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Callable, Optional

import torch

import otalign as ota
from otalign import constraints as C
from otalign import geometry as G


def _median_time(fn: Callable[[], int], repeats: int) -> Optional[float]:
    """Median seconds per sweep of ``fn`` (which returns the sweeps it ran); None if it fails."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sweeps = fn()
        times.append((time.perf_counter() - t0) / sweeps)
    return statistics.median(times)


def otalign_dense(x, y, eps, sweeps, method):
    cost = ota.costs.sqeuclidean(x, y)

    def run():
        ota.solve(cost, C.balanced(), epsilon=eps, tol=0, max_iter=sweeps, check_every=sweeps, method=method)
        return sweeps
    return run


def otalign_cloud(x, y, eps, sweeps, backend):
    geom = G.PointCloud(x, y, backend=backend)

    def run():
        ota.solve(geom, C.balanced(), epsilon=eps, tol=0, max_iter=sweeps, check_every=sweeps)
        return sweeps
    return run


def pot_lazy(x, y, eps, sweeps, batch):
    import ot

    def run():
        ot.bregman.empirical_sinkhorn(x, y, eps, numIterMax=sweeps, stopThr=0.0, isLazy=True, batchSize=batch,
                                      warn=False)
        return sweeps
    return run


def geomloss_online(x, y, eps):
    from geomloss import SamplesLoss

    from otalign.bench.runners.geomloss_runner import schedule_sweeps

    blur = math.sqrt(eps / 2)  # GeomLoss's p=2 cost is |x - y|^2 / 2: its epsilon blur^2 is eps / 2
    diameter = float(torch.cdist(torch.cat([x, y]).min(0, keepdim=True).values,
                                 torch.cat([x, y]).max(0, keepdim=True).values))
    steps = schedule_sweeps(diameter, blur, 0.5)
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.5, diameter=diameter, debias=False, backend="online")

    def run():
        loss(x, y)
        return steps
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4096,50000")
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--sweeps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pot-batch", type=int, default=1000, help="POT's batchSize for its lazy path")
    p.add_argument("--skip", default="", help="comma-separated configurations to skip")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) + 0.5
        fits = n * n * 4 * 3 < G.memory_budget(x.device, fraction=1.0) and n <= 16_384
        configs = {}
        if fits:
            configs["otalign dense log"] = otalign_dense(x, y, args.epsilon, args.sweeps, "log")
            configs["otalign dense auto"] = otalign_dense(x, y, args.epsilon, args.sweeps, "auto")
        configs["otalign online"] = otalign_cloud(x, y, args.epsilon, args.sweeps, "online")
        try:
            import pykeops  # noqa: F401

            configs["otalign keops"] = otalign_cloud(x, y, args.epsilon, args.sweeps, "keops")
            configs["geomloss online"] = geomloss_online(x, y, args.epsilon)
        except ImportError:
            pass
        configs["pot lazy"] = pot_lazy(x, y, args.epsilon, max(2, args.sweeps // 5) if n > 10_000 else args.sweeps,
                                       args.pot_batch)
        for name, fn in configs.items():
            if name in skip:
                continue
            fn()  # warm up (KeOps compiles its formulas once)
            per_sweep = _median_time(fn, args.repeats)
            rows.append({"n": n, "config": name, "ms_per_sweep": round(1e3 * per_sweep, 2)})
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"{'n':>7s}  {'configuration':22s} {'ms / sweep':>11s} {'ratio':>7s}")
    for n in sorted({r["n"] for r in rows}):
        these = [r for r in rows if r["n"] == n]
        base = next((r for r in these if r["config"] == "otalign dense log"), None) or \
            next((r for r in these if r["config"] == "otalign online"), these[0])
        for r in these:
            print(f"{n:7d}  {r['config']:22s} {r['ms_per_sweep']:11.2f} {r['ms_per_sweep'] / base['ms_per_sweep']:7.2f}")


if __name__ == "__main__":
    main()
