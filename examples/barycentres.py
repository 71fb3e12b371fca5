"""Histogram barycentres of 2-D shapes (``ota.barycenter``).

Four shapes (a disc, a ring, a square and a cross) are histograms on a 24 x 24 grid of the unit
square, with the squared Euclidean distance between pixel centres as the cost. Each panel of a
5 x 5 grid is the entropic Wasserstein barycentre of the four shapes with bilinear weights, so the
corners are the shapes themselves (up to the entropic blur) and the panels between them morph one
shape into its neighbours: mass moves, it does not fade in and out as a pixel-wise average would.
All 25 barycentre problems are solved in one batched call (histograms of shape (25, 4, 576),
weights (25, 4)).

    python examples/barycentres.py --out results/examples/barycentres.png
"""

# test: slow (about 25 s on two idle CPU cores: 90 log-domain sweeps over (25, 4, 576, 576))

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import otalign as ota  # noqa: E402


def shapes(size):
    """(4, size * size) histograms: disc, ring, square, cross, each of unit mass."""
    t = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    x, y = torch.meshgrid(t, t, indexing="xy")
    r = ((x - 0.5) ** 2 + (y - 0.5) ** 2).sqrt()
    disc = r < 0.3
    ring = (r > 0.27) & (r < 0.4)
    square = ((x - 0.5).abs() < 0.28) & ((y - 0.5).abs() < 0.28)
    cross = (((x - 0.5).abs() < 0.09) | ((y - 0.5).abs() < 0.09)) & ((x - 0.5).abs() < 0.4) \
        & ((y - 0.5).abs() < 0.4)
    h = torch.stack([disc, ring, square, cross]).reshape(4, -1).to(torch.float64)
    return h / h.sum(-1, keepdim=True), torch.stack([x.reshape(-1), y.reshape(-1)], -1)


def bilinear_weights(steps):
    """(steps * steps, 4) weights of the four corners (top-left, top-right, bottom-left, bottom-right)."""
    s = torch.linspace(0, 1, steps, dtype=torch.float64)
    v, u = torch.meshgrid(s, s, indexing="ij")  # v down the rows, u along the columns
    w = torch.stack([(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v], -1)
    return w.reshape(-1, 4)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/examples/barycentres.png", help="the figure (PNG)")
    parser.add_argument("--size", type=int, default=24, help="grid side in pixels")
    parser.add_argument("--steps", type=int, default=5, help="panels per side of the figure")
    parser.add_argument("--epsilon", type=float, default=0.002, help="entropic strength (cost units)")
    args = parser.parse_args(argv)
    if args.size < 8 or args.steps < 2 or args.epsilon <= 0:
        parser.error("--size must be >= 8, --steps >= 2 and --epsilon > 0")

    histograms, pixels = shapes(args.size)                        # (4, n), (n, 2)
    cost = ota.costs.sqeuclidean(pixels, pixels)                  # (n, n)
    weights = bilinear_weights(args.steps)                        # (B, 4)
    batch = histograms.expand(len(weights), -1, -1)               # (B, 4, n): every problem sees the four
    start = time.perf_counter()
    res = ota.barycenter(batch.float(), cost.float(), epsilon=args.epsilon, weights=weights.float(),
                         grad="none")
    seconds = time.perf_counter() - start
    print(f"{len(weights)} barycentres of 4 histograms on {args.size}x{args.size} pixels: "
          f"converged {int(res.converged.sum())}/{len(weights)}, {int(res.n_iters.max())} sweeps, "
          f"{seconds:.1f} s")

    images = res.barycenter.reshape(args.steps, args.steps, args.size, args.size)
    fig, axes = plt.subplots(args.steps, args.steps, figsize=(1.6 * args.steps, 1.6 * args.steps))
    for i in range(args.steps):
        for j in range(args.steps):
            ax = axes[i, j]
            ax.imshow(images[i, j].numpy(), cmap="Blues", origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if (i, j) in {(0, 0), (0, args.steps - 1), (args.steps - 1, 0), (args.steps - 1, args.steps - 1)}:
                for spine in ax.spines.values():
                    spine.set_color("tab:red")
    fig.suptitle(f"Entropic barycentres, bilinear weights (epsilon = {args.epsilon:g})")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print("wrote", args.out)
    return res


if __name__ == "__main__":
    main()
