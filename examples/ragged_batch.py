"""A batch of ragged problems: point clouds of different sizes solved in one call.

Eight pairs of 2-D clouds with 20 to 120 points each are passed as Python lists: otalign pads them
to the largest size with zero weights, solves the batch in one ``ota.solve`` (and one
``ota.sinkhorn_divergence``), and checks every problem against its own solve. The figure shows
three of the plans (lines between matched points, darker for more mass).

    python examples/ragged_batch.py --out results/examples/ragged_batch.png
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import otalign as ota  # noqa: E402
from otalign import constraints as C  # noqa: E402
from otalign import geometry as G  # noqa: E402


def clouds(seed: int = 0, count: int = 8):
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for _ in range(count):
        n, m = (int(v) for v in torch.randint(20, 121, (2,), generator=gen))
        xs.append(torch.randn(n, 2, generator=gen, dtype=torch.float64) * 0.5)
        ys.append(torch.randn(m, 2, generator=gen, dtype=torch.float64) * 0.5 + torch.tensor([1.5, 0.0], dtype=torch.float64))
    return xs, ys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/examples/ragged_batch.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    xs, ys = clouds()
    eps = 0.05
    start = time.perf_counter()
    res = ota.solve(G.PointCloud(xs, ys), C.unbalanced(1.0), epsilon=eps, tol=1e-9, max_iter=5000)
    S = ota.sinkhorn_divergence(xs, ys, epsilon=eps)
    batch_time = time.perf_counter() - start
    start = time.perf_counter()
    loop = [ota.solve(G.PointCloud(x, y), C.unbalanced(1.0), epsilon=eps, tol=1e-9, max_iter=5000) for x, y in zip(xs, ys)]
    loop_S = [ota.sinkhorn_divergence(x, y, epsilon=eps) for x, y in zip(xs, ys)]
    loop_time = time.perf_counter() - start
    print(f"{'problem':>7} {'n':>4} {'m':>4} {'OT value (batch)':>17} {'|batch - own|':>14} {'S_eps (batch)':>14} "
          f"{'|batch - own|':>14}")
    for k, (x, y) in enumerate(zip(xs, ys)):
        print(f"{k:>7} {len(x):>4} {len(y):>4} {float(res.value[k]):17.6f} {abs(float(res.value[k] - loop[k].value)):14.2e} "
              f"{float(S[k]):14.6f} {abs(float(S[k] - loop_S[k])):14.2e}")
    print(f"one batched call: {batch_time:.2f} s; a loop of {len(xs)} calls: {loop_time:.2f} s")
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    plan = res.plan
    for ax, k in zip(axes, range(3)):
        x, y = xs[k], ys[k]
        P = plan[k, : len(x), : len(y)]
        top = P.max()
        for i, j in (P > 0.1 * top).nonzero().tolist():
            ax.plot([x[i, 0], y[j, 0]], [x[i, 1], y[j, 1]], c="k", alpha=float(P[i, j] / top) * 0.6, lw=0.8)
        ax.scatter(*x.T, s=10, c="tab:blue", label=f"x ({len(x)})")
        ax.scatter(*y.T, s=10, c="tab:orange", label=f"y ({len(y)})")
        ax.set_title(f"problem {k}: {len(x)} x {len(y)}")
        ax.legend(loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
