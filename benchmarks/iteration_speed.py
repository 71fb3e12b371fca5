"""Milliseconds per balanced iteration: otalign vs POT's log-domain Sinkhorn, same run.

Points on the unit sphere in R^128, squared Euclidean cost, uniform weights, float32,
epsilon = 0.05, a fixed number of iterations (tolerance out of reach), median of several runs.

    python benchmarks/iteration_speed.py [--iters 100] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import ot
import torch

import otalign as ota


def sphere(B: int, n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(B, n, d, generator=g), dim=-1)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as otalign bench)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sinkhorn did not converge")  # fixed sweeps, on purpose
    it, eps = args.iters, args.epsilon
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), POT {ot.__version__}, "
          f"float32, epsilon={eps}, {it} iterations, median of {args.repeats}")
    print(f"{'problem':22s} {'otalign ms/it':>14s} {'POT sinkhorn_log ms/it':>23s} {'ratio':>7s}")
    for B, n in ((1, 1024), (16, 512)):
        x, y = sphere(B, n, 128, 0), sphere(B, n, 128, 1)
        cost = torch.cdist(x, y) ** 2
        cost_in = cost[0] if B == 1 else cost
        ours = timed(lambda: ota.solve(cost_in, epsilon=eps, tol=0, max_iter=it, grad="none").plan, args.repeats)
        u = torch.full((n,), 1.0 / n)

        def pot():
            for k in range(B):  # sinkhorn_log solves one cost at a time
                ot.sinkhorn(u, u, cost[k], eps, method="sinkhorn_log", numItermax=it, stopThr=0.0)

        theirs = timed(pot, args.repeats)
        name = f"n={n}" if B == 1 else f"B={B} x n={n}"
        print(f"{name:22s} {1e3 * ours / it:14.3f} {1e3 * theirs / it:23.3f} {ours / theirs:7.2f}", flush=True)


if __name__ == "__main__":
    main()
