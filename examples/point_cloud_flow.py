"""A point cloud flowing to a shape by gradient descent on the Sinkhorn divergence.

200 points start as a Gaussian blob and follow Adam steps (300, learning rate 0.01) on
``S_eps(x, target)`` with ``epsilon = 0.01`` (squared Euclidean cost) towards 200 points on a
ring. The figure shows snapshots. ``--compare`` also times the same loop three ways, side by side:

* ``ota.SinkhornDivergence(epsilon=0.01, warm_start=True)`` (default settings);
* a hand-written loop of three ``ota.solve(..., grad="envelope")`` calls (no warm start);
* GeomLoss ``SamplesLoss("sinkhorn", p=2, blur=sqrt(eps / 2), debias=True)`` (its cost is
  ``|x - y|^2 / 2`` and its epsilon ``blur^2``: twice its loss is otalign's; ``scaling`` sets its accuracy).

and reports the final divergence (measured by otalign in float64) reached by each.

    python examples/point_cloud_flow.py --out results/examples/point_cloud_flow.png [--compare]
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import otalign as ota  # noqa: E402
from otalign import constraints as C  # noqa: E402
from otalign import geometry as G  # noqa: E402

EPS, STEPS, N, LR = 0.01, 300, 200, 0.01


def data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = 0.15 * torch.randn(N, 2, generator=gen)
    t = torch.rand(N, generator=gen) * 2 * math.pi
    r = 0.6 + 0.03 * torch.randn(N, generator=gen)
    y = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1)
    return x0, y


def flow(loss_fn, x0, y, steps=STEPS, snapshots=()):
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=LR)
    shots = {}
    for step in range(steps + 1):
        if step in snapshots:
            shots[step] = x.detach().clone()
        if step == steps:
            break
        opt.zero_grad()
        loss_fn(x, y).backward()
        opt.step()
    return x.detach(), shots


def hand_envelope(x, y):
    """The divergence written by hand from three solves with grad="envelope"."""
    def ot(p, q):
        return ota.solve(G.PointCloud(p, q), C.balanced(), epsilon=EPS, grad="envelope", warn=False).value
    return ot(x, y) - 0.5 * ot(x, x) - 0.5 * ot(y, y)


def final_divergence(x, y):
    return float(ota.sinkhorn_divergence(x.double(), y.double(), epsilon=EPS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/examples/point_cloud_flow.png")
    parser.add_argument("--compare", action="store_true", help="time default / hand-set envelope / GeomLoss")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ota.NonConvergenceWarning)
    x0, y = data()
    snaps = (0, args.steps // 10, args.steps // 3, args.steps)
    loss = ota.SinkhornDivergence(epsilon=EPS, warm_start=True)
    start = time.perf_counter()
    x, shots = flow(loss, x0, y, args.steps, snaps)
    rows = [("otalign SinkhornDivergence (default)", time.perf_counter() - start, final_divergence(x, y))]
    print(rows[-1], flush=True)
    if args.compare:
        start = time.perf_counter()
        xh, _ = flow(hand_envelope, x0, y, args.steps)
        rows.append(('otalign 3 x solve(grad="envelope")', time.perf_counter() - start, final_divergence(xh, y)))
        print(rows[-1], flush=True)
        try:
            from geomloss import SamplesLoss
        except ImportError:
            print("geomloss is not installed: skipped")
        else:
            for scaling in (0.5, 0.9):
                gl = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(EPS / 2), debias=True, scaling=scaling, backend="tensorized")
                start = time.perf_counter()
                xg, _ = flow(lambda p, q: 2.0 * gl(p, q), x0, y, args.steps)
                rows.append((f"GeomLoss SamplesLoss scaling={scaling}", time.perf_counter() - start,
                             final_divergence(xg, y)))
                print(rows[-1], flush=True)
    print(f"{'method':<40} {'time (s)':>9} {'final S_eps':>12}")
    for name, secs, value in rows:
        print(f"{name:<40} {secs:9.2f} {value:12.3e}")
    fig, axes = plt.subplots(1, len(shots), figsize=(4 * len(shots), 4), sharex=True, sharey=True)
    for ax, (step, pts) in zip(axes, sorted(shots.items())):
        ax.scatter(*y.T, s=6, c="lightgray", label="target")
        ax.scatter(*pts.T, s=6, c="tab:blue", label="points")
        ax.set_title(f"step {step}")
        ax.set_aspect("equal")
    axes[0].legend(loc="upper right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
