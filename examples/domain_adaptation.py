"""Label-shift domain adaptation with block masses (``ota.da.Transport``).

Three classes in 2-D, each a pair of sub-clusters. The target domain is the source shifted and
rotated, with other class proportions (label shift: 0.6 / 0.3 / 0.1 instead of a third each) and
other sub-cluster proportions within each class (90 / 10 instead of 50 / 50). The target class
proportions are prescribed (known class priors), and the target sample has exactly them (120 /
60 / 20 of its 200 points). A classifier (1-nearest neighbour) is trained on the source points
moved into the target domain by the barycentric map and scored on the target labels, for:

* no adaptation: the classifier on the raw source points;
* balanced OT: uniform weights on both sides;
* reweighted: balanced OT with the source weights of each class scaled to the target proportions;
* block masses: ``BlockMass`` fixing the mass leaving each source class to the target proportion,
  with the source marginal KL-relaxed (``row_rho``): within a class, the plan may take less
  from the sub-cluster that the target lacks. Those source points then send almost nothing, and
  their barycentric images are not backed by transported mass: the classifier is trained on the
  ``da.supported(0.1)`` points (at least a tenth of their reference weight sent). Every fit uses
  the same rule (it keeps every point of the hard-row fits); the table also shows block masses
  trained on all points, and block masses with estimated proportions.

    python examples/domain_adaptation.py --out results/examples/domain_adaptation.png
"""

# test: slow (about 35 s on two shared CPU cores: the block fits need a few thousand sweeps to tol=1e-4)

from __future__ import annotations

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

import otalign as ota  # noqa: E402

CENTRES = np.array([[0.0, 0.0], [4.0, 0.0], [2.0, 3.5]])
SUB = np.array([[-0.9, 0.0], [0.9, 0.0]])  # the two sub-clusters of every class


def class_counts(n, props):
    """Exactly ``props * n`` points per class (largest remainders get the leftover points)."""
    raw = np.asarray(props, dtype=float) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: n - counts.sum()]] += 1
    return counts


def sample(rng, n, class_props, sub_props, angle=0.0, shift=(0.0, 0.0)):
    y = rng.permutation(np.repeat(np.arange(3), class_counts(n, class_props)))
    s = (rng.random(n) > sub_props).astype(int)  # sub-cluster 0 with probability sub_props
    x = CENTRES[y] + SUB[s] + 0.35 * rng.normal(size=(n, 2))
    c, si = math.cos(angle), math.sin(angle)
    x = x @ np.array([[c, -si], [si, c]]).T + np.array(shift)
    return x, y


def accuracy(x_train, y_train, xt, yt):
    clf = KNeighborsClassifier(n_neighbors=1).fit(x_train, y_train)
    return float((clf.predict(xt) == yt).mean())


TARGET = [0.6, 0.3, 0.1]


def run(seed, eps=0.2, n=200, row_rho=0.1, min_share=0.1):
    """One seed: target accuracies of the fits; the classifier is trained on the moved source
    points that send at least ``min_share`` of their reference weight (``da.supported``)."""
    rng = np.random.default_rng(seed)
    xs, ys = sample(rng, n, [1 / 3] * 3, 0.5)
    xt, yt = sample(rng, n, TARGET, 0.9, angle=0.35, shift=(1.0, 0.8))
    scores = {"no adaptation": accuracy(xs, ys, xt, yt)}
    fits = {
        "balanced OT": dict(),
        "reweighted": dict(target_proportions=TARGET, proportions="reweight"),
        "block masses": dict(target_proportions=TARGET, proportions="block", row_rho=row_rho),
        "block, estimated": dict(target_proportions="estimate", proportions="block", row_rho=row_rho),
    }
    moved = {}
    for name, kw in fits.items():
        da = ota.da.Transport(epsilon=eps, tol=1e-4, max_iter=5000).fit(xs, xt, ys, **kw)
        x_moved = da.transform()
        keep = da.supported(min_share)
        if name == "block masses":
            scores["block, all points"] = accuracy(x_moved, ys, xt, yt)
        moved[name] = (x_moved[keep], ys[keep])
        scores[name] = accuracy(x_moved[keep], ys[keep], xt, yt)
    return scores, (xs, ys, xt, yt, moved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/examples/domain_adaptation.png")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--row-rho", type=float, default=0.1, help="KL strength of the relaxed source marginal")
    parser.add_argument("--min-share", type=float, default=0.1, help="train on da.supported(min_share)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table, first = {}, None
    for seed in range(args.seeds):
        scores, data = run(seed, row_rho=args.row_rho, min_share=args.min_share)
        first = first or data
        for k, v in scores.items():
            table.setdefault(k, []).append(v)
    print(f"{'method':<18} target accuracy (mean +- std over {args.seeds} seeds)")
    for k, v in table.items():
        print(f"{k:<18} {100 * np.mean(v):5.1f} +- {100 * np.std(v):4.1f} %")
    xs, ys, xt, yt, moved = first
    shown = ["balanced OT", "reweighted", "block masses"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharex=True, sharey=True)
    axes[0].scatter(*xs.T, c=ys, cmap="tab10", vmin=0, vmax=9, s=8, marker="o", label="source")
    axes[0].scatter(*xt.T, c="lightgray", s=8, marker="x", label="target")
    axes[0].set_title("source (colours) and target (grey)")
    axes[0].legend(loc="upper left")
    for ax, name in zip(axes[1:], shown):
        x_moved, y_moved = moved[name]
        ax.scatter(*xt.T, c=yt, cmap="tab10", vmin=0, vmax=9, s=8, marker="x", alpha=0.3)
        ax.scatter(*x_moved.T, c=y_moved, cmap="tab10", vmin=0, vmax=9, s=8)
        ax.set_title(f"{name}: {100 * np.mean(table[name]):.1f}%")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
