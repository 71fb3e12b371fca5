"""Fixed-support barycentre: otalign vs POT's ``ot.bregman.barycenter(..., method="sinkhorn_log")``.

First the agreement: largest difference between the barycentres of otalign and POT on random
histograms (n = 30, K = 3, random weights, float64, both run to their tightest tolerance), balanced
(``method="sinkhorn_log"``) and unbalanced (``ot.unbalanced.barycenter_unbalanced``, ``reg_m = rho``).

Then the time: K = 3 Gaussian histograms on a grid of n points of [0, 1], squared-distance cost,
uniform weights, float64, epsilon = 0.01, median of several runs, one thread by default:

* a fixed number of sweeps (stopping out of reach: ``tol=0``, ``stopThr=0``): time per sweep;
* to convergence: otalign at ``tol=1e-9`` (its float64 default: L1 marginal error), POT at
  ``stopThr=1e-9`` (its criterion: the spread of the plans' column marginals), with the L1
  distance between the two barycentres.

    python benchmarks/barycenter_pot.py [--n 1000] [--iters 100] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import ot
import torch

import otalign as ota


def problem(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(0, 1, n)
    centres, widths = (0.2, 0.5, 0.8), (0.05, 0.1, 0.03)
    A = np.stack([np.exp(-((x - c) ** 2) / (2 * s**2)) for c, s in zip(centres, widths)]) + 1e-3
    return A / A.sum(1, keepdims=True), (x[:, None] - x[None, :]) ** 2


def agreement() -> None:
    rng = np.random.default_rng(0)
    n, K = 30, 3
    x = np.linspace(0, 1, n)
    M = (x[:, None] - x[None, :]) ** 2
    A = rng.uniform(0.1, 1, (K, n))
    A /= A.sum(1, keepdims=True)
    w = rng.uniform(0.2, 1, K)
    w /= w.sum()
    tight = dict(tol=1e-13, max_iter=100_000)
    for eps in (0.1, 0.01, 0.002):
        ref = ot.bregman.barycenter(A.T, M, eps, weights=w, method="sinkhorn_log", numItermax=100_000, stopThr=1e-15)
        res = ota.barycenter(A, M, epsilon=eps, weights=w, **tight)
        print(f"agreement balanced   eps={eps:<6g}        max |q - q_POT| = {np.abs(res.barycenter - ref).max():.1e}")
    for eps in (0.1, 0.01):
        for rho in (0.5, 5.0):
            ref = ot.unbalanced.barycenter_unbalanced(A.T, M, eps, rho, weights=w, numItermax=100_000, stopThr=1e-15)
            res = ota.barycenter(A, M, epsilon=eps, weights=w, rho=rho, tol=1e-14, max_iter=100_000)
            print(f"agreement unbalanced eps={eps:<6g} rho={rho:<4g} max |q - q_POT| = {np.abs(res.barycenter - ref).max():.1e}")


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    agreement()
    A, M = problem(args.n)
    At, Mt = torch.from_numpy(A), torch.from_numpy(M)
    eps = args.epsilon
    print(f"n = {args.n}, K = 3, epsilon = {eps}, float64, {args.threads} thread(s), median of {args.repeats}")

    t_pot, q_pot = timed(
        lambda: ot.bregman.barycenter(A.T, M, eps, method="sinkhorn_log", numItermax=args.iters, stopThr=0.0),
        args.repeats,
    )
    row = f"{args.iters} sweeps: POT sinkhorn_log {t_pot:.3f} s ({1e3 * t_pot / args.iters:.2f} ms/sweep)"
    for method in ("auto", "log"):
        t, res = timed(lambda: ota.barycenter(At, Mt, epsilon=eps, tol=0.0, max_iter=args.iters, method=method), args.repeats)
        diff = float(np.abs(res.barycenter.numpy() - q_pot).sum())
        row += f"; otalign {method} {t:.3f} s ({1e3 * t / args.iters:.2f} ms/sweep, L1 to POT {diff:.1e})"
    print(row)

    t_pot, (q_pot, log) = timed(
        lambda: ot.bregman.barycenter(A.T, M, eps, method="sinkhorn_log", numItermax=100_000, stopThr=1e-9, log=True),
        args.repeats,
    )
    t_ota, res = timed(lambda: ota.barycenter(At, Mt, epsilon=eps, max_iter=100_000), args.repeats)
    print(
        f"to convergence: POT {t_pot:.3f} s ({log['niter']} sweeps); otalign {t_ota:.3f} s "
        f"({int(res.n_iters)} sweeps, converged={bool(res.converged)}, error {float(res.error):.1e}); "
        f"L1 distance {float(np.abs(res.barycenter.numpy() - q_pot).sum()):.1e}"
    )


if __name__ == "__main__":
    main()
