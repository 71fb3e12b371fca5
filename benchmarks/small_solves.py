"""Per-call cost of small solves against POT (issue 12, item 6).

    python benchmarks/small_solves.py            # float64, one thread, epsilon 0.05, tol 1e-9

1. One 50 x 50 balanced solve (two Gaussian clouds in 2-D, cost scaled to [0, 1]), to the same
   stopping threshold: POT's ``ot.sinkhorn`` with NumPy inputs and with torch inputs, and
   ``ota.solve`` (the plan read back), with ``tol=1e-9`` and with the float64 default ``tol``.
2. 64 separate problems of 50 to 100 points: POT's NumPy loop, a loop of ``ota.solve`` calls, and
   one ``ota.solve`` call on the padded batch (zero weights on the padding).

Times are CPU time of this process (``time.process_time``: not inflated when other processes share
the cores), the best of ``--rounds`` rounds of ``--calls`` calls, the methods interleaved; for the
single solve also the median over rounds of each method's time divided by POT NumPy's in the same
round (slow phases of a shared machine cancel in it).
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import numpy as np
import torch

import otalign as ota
from otalign import constraints as C
from otalign.bench.timing import best_cpu_time, cpu_time_rounds


def cloud_problem(rng, n, m):
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.5
    M = ((x[:, None] - y[None]) ** 2).sum(-1)
    return M / M.max(), np.full(n, 1.0 / n), np.full(m, 1.0 / m)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--tol", type=float, default=1e-9)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=10)
    args = p.parse_args()
    import ot

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    eps, tol = args.epsilon, args.tol
    rng = np.random.default_rng(0)

    M, a, b = cloud_problem(rng, 50, 50)
    Mt, at, bt = (torch.tensor(v) for v in (M, a, b))
    single = {
        "POT ot.sinkhorn, NumPy": lambda: ot.sinkhorn(a, b, M, eps, stopThr=tol),
        "POT ot.sinkhorn, torch": lambda: ot.sinkhorn(at, bt, Mt, eps, stopThr=tol),
        f"ota.solve(tol={tol:g}).plan": lambda: ota.solve(Mt, C.balanced(at, bt), epsilon=eps, tol=tol).plan,
        "ota.solve (default tol).plan": lambda: ota.solve(Mt, C.balanced(at, bt), epsilon=eps).plan,
    }
    rounds = cpu_time_rounds(single, args.rounds, args.calls)
    times = {name: min(values) for name, values in rounds.items()}
    res = ota.solve(Mt, C.balanced(at, bt), epsilon=eps, tol=tol)
    ref = ot.sinkhorn(a, b, M, eps, stopThr=1e-14, numItermax=100_000)
    print(f"1. one 50 x 50 solve, float64, epsilon {eps:g} ({int(res.n_iters)} sweeps; "
          f"L1 distance of the plan to POT's converged one {float(np.abs(res.plan.numpy() - ref).sum()):.1e})")
    base, base_t = times["POT ot.sinkhorn, NumPy"], times["POT ot.sinkhorn, torch"]
    for name, secs in times.items():
        paired = statistics.median(t / p for t, p in zip(rounds[name], rounds["POT ot.sinkhorn, NumPy"]))
        print(f"   {name:34s} {secs * 1e3:7.3f} ms   {secs / base:5.2f}x POT NumPy   {secs / base_t:5.2f}x POT torch"
              f"   (median over rounds of the same-round ratio to POT NumPy: {paired:.2f}x)")

    probs = [cloud_problem(rng, *rng.integers(50, 101, 2)) for _ in range(64)]
    T = [tuple(torch.tensor(v) for v in prob) for prob in probs]
    n = max(t[0].shape[0] for t in T)
    m = max(t[0].shape[1] for t in T)
    Mp = torch.zeros(64, n, m, dtype=torch.float64)
    ap, bp = torch.zeros(64, n, dtype=torch.float64), torch.zeros(64, m, dtype=torch.float64)
    for k, (Mk, ak, bk) in enumerate(T):
        Mp[k, : Mk.shape[0], : Mk.shape[1]], ap[k, : len(ak)], bp[k, : len(bk)] = Mk, ak, bk
    many = {
        "POT NumPy loop": lambda: [ot.sinkhorn(ak, bk, Mk, eps, stopThr=tol) for Mk, ak, bk in probs],
        "ota.solve loop": lambda: [ota.solve(Mk, C.balanced(ak, bk), epsilon=eps, tol=tol).plan for Mk, ak, bk in T],
        "ota.solve, one padded batch": lambda: ota.solve(Mp, C.balanced(ap, bp), epsilon=eps, tol=tol).plan,
    }
    times = best_cpu_time(many, max(3, args.rounds // 5), 1)
    print("2. 64 problems of 50 to 100 points, float64")
    base = times["POT NumPy loop"]
    for name, secs in times.items():
        print(f"   {name:34s} {secs * 1e3:7.1f} ms   {secs / base:5.2f}x POT NumPy loop")


if __name__ == "__main__":
    main()
