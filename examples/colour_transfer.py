"""Colour transfer between scikit-learn's two sample photos, balanced and unbalanced.

1,000 pixels sampled from each photo (RGB in [0, 1]) are matched by entropic OT
(``ota.da.Transport``, squared Euclidean cost, ``epsilon = 0.01``); every pixel of the source
photo is then moved by the entropic map ``T(x) = sum_j softmax_j(log b_j + (g_j - |x - y_j|^2) /
eps) y_j`` (out of sample, from the target potential). Balanced transport must reproduce the
target's whole colour histogram; the unbalanced fit (KL-relaxed marginals, ``rho = 0.05``) may
leave out colours that have no counterpart and keeps the source's own shades closer.

    python examples/colour_transfer.py --out results/examples/colour_transfer.png
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402

import otalign as ota  # noqa: E402
from otalign import constraints as C  # noqa: E402


def pixels(name: str, step: int = 2) -> np.ndarray:
    return load_sample_image(name)[::step, ::step].astype(np.float32) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/examples/colour_transfer.png")
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ota.NonConvergenceWarning)
    src, tgt = pixels("china.jpg"), pixels("flower.jpg")
    rng = np.random.default_rng(0)
    xs = src.reshape(-1, 3)[rng.choice(src.shape[0] * src.shape[1], args.samples, replace=False)]
    xt = tgt.reshape(-1, 3)[rng.choice(tgt.shape[0] * tgt.shape[1], args.samples, replace=False)]
    out = {}
    print(f"{'fit':<12} {'sweeps':>6} {'time (s)':>9} {'mean colour (R, G, B)':>24} {'mass':>6}")
    for name, cons in (("balanced", C.balanced()), ("unbalanced", C.unbalanced(0.05))):
        start = time.perf_counter()
        da = ota.da.Transport(epsilon=0.01, constraints=cons, tol=1e-4, max_iter=2000).fit(xs, xt)
        moved = da.transform(src.reshape(-1, 3)).reshape(src.shape).clip(0, 1)
        secs = time.perf_counter() - start
        out[name] = moved
        mean = ", ".join(f"{v:.2f}" for v in moved.reshape(-1, 3).mean(0))
        print(f"{name:<12} {int(da.result_.n_iters):>6} {secs:9.2f} {mean:>24} {float(da.result_.mass):6.3f}")
    print(f"{'source':<12} {'':>6} {'':>9} {', '.join(f'{v:.2f}' for v in src.reshape(-1, 3).mean(0)):>24}")
    print(f"{'target':<12} {'':>6} {'':>9} {', '.join(f'{v:.2f}' for v in tgt.reshape(-1, 3).mean(0)):>24}")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, (title, img) in zip(axes, [("source (china.jpg)", src), ("target palette (flower.jpg)", tgt),
                                       ("balanced", out["balanced"]), ("unbalanced, rho = 0.05", out["unbalanced"])]):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
