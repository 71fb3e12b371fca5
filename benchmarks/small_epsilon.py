"""Stability at small epsilon (1e-3 of the cost range), float32: which solvers stay finite.

Points on the unit sphere in R^128, squared Euclidean cost, uniform weights, a fixed number of
sweeps. Reports, per solver, whether the plan is finite, its L1 marginal error (measured in
float64 by one function), and the time per sweep.

    python benchmarks/small_epsilon.py [--n 1024] [--iters 200]
"""

from __future__ import annotations

import argparse
import time
import warnings

import ot
import torch

import otalign as ota


def marginal_error(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    P = plan.double()
    return float((P.sum(1) - a.double()).abs().sum() + (P.sum(0) - b.double()).abs().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(args.n, 128, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(args.n, 128, generator=g), dim=-1)
    cost = ota.costs.sqeuclidean(x, y)
    eps = 1e-3 * float(cost.max() - cost.min())
    u = torch.full((args.n,), 1.0 / args.n)
    runs = {
        "otalign (auto)": lambda: ota.solve(cost, epsilon=eps, tol=0, max_iter=args.iters, grad="none").plan,
        "otalign (log)": lambda: ota.solve(cost, epsilon=eps, tol=0, max_iter=args.iters, method="log", grad="none").plan,
        "POT sinkhorn": lambda: ot.sinkhorn(u, u, cost, eps, method="sinkhorn", numItermax=args.iters, stopThr=-1),
        "POT sinkhorn_log": lambda: ot.sinkhorn(u, u, cost, eps, method="sinkhorn_log", numItermax=args.iters, stopThr=-1),
        "POT sinkhorn_stabilized": lambda: ot.sinkhorn(u, u, cost, eps, method="sinkhorn_stabilized", numItermax=args.iters, stopThr=-1),
    }
    print(f"n={args.n}, float32, epsilon={eps:.4g} (1e-3 of the cost range), {args.iters} sweeps, 1 thread")
    print(f"{'solver':26s} {'finite':>7s} {'L1 marginal error':>18s} {'ms/sweep':>9s}")
    for name, fn in runs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            plan = fn()
            dt = time.perf_counter() - t0
        finite = bool(torch.isfinite(plan).all())
        err = marginal_error(plan, u, u) if finite else float("nan")
        print(f"{name:26s} {str(finite):>7s} {err:18.3e} {1e3 * dt / args.iters:9.3f}")


if __name__ == "__main__":
    main()
