"""Data of the benchmark's real-use problem families: clustered point clouds and colour histograms.

Everything here is float64 NumPy / torch on the CPU and deterministic (seeded); nothing is
downloaded.

**Clustered point clouds** (:func:`gaussian_mixture_pair`). Two samples of a mixture of six
isotropic Gaussians in 2-D or 3-D (standard deviation :data:`CLUSTER_SPREAD`), arranged in two
groups of three clusters (:data:`CLUSTER_CENTRES`: the groups are :data:`GROUP_GAP` apart, each
group is ~0.8 wide). Source and target carry different cluster weights
(:data:`SOURCE_WEIGHTS`, :data:`TARGET_WEIGHTS`): inside each group they differ by up to 0.12, and
the two groups' totals differ by :data:`GROUP_IMBALANCE` (0.500 vs 0.498). Every cluster gets
``round(weight * n)`` points (largest remainders), each point the weight ``cluster weight / points
in the cluster``, so the cluster masses are exact for every ``n``.

Why Sinkhorn is slow on it: the optimal plan moves only :data:`GROUP_IMBALANCE` of mass between the
two well-separated groups. Near the solution Sinkhorn's error contracts by about
``1 - 4 * GROUP_IMBALANCE`` per sweep, and before that the potentials must first build the offset
between the groups that lets that mass cross the gap (longer the smaller epsilon is): about
1,000-1,500 plain sweeps to an L1 marginal error of 1e-4 at n = 1024, epsilon = 0.05 of the cost
range. This is what two samples of one multi-modal distribution look like when their modes carry
slightly different masses.

**Colour histograms** (:func:`color_histogram`). The RGB colours of scikit-learn's sample images
(``china.jpg``, ``flower.jpg``, shipped with scikit-learn) binned on a regular grid of ``bins``
cells per channel; bin centres in [0, 255]^3, weights = pixel frequencies. **Empty bins are
dropped** (the support is the non-empty bins of each image), so source and target have different
supports and sizes (488 and 389 bins for ``bins = 12``).

Costs (:func:`scaled_sqeuclidean`): squared Euclidean distance divided by its maximum over the
pairs, i.e. in [0, 1] with maximum exactly 1, so ``epsilon`` is a fraction of the cost range.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CLUSTER_CENTRES",
    "CLUSTER_SPREAD",
    "GROUP_GAP",
    "SOURCE_WEIGHTS",
    "TARGET_WEIGHTS",
    "GROUP_IMBALANCE",
    "IMAGES",
    "cluster_counts",
    "gaussian_mixture",
    "gaussian_mixture_pair",
    "sample_image",
    "color_histogram",
    "scaled_sqeuclidean",
]

#: distance along the first axis between the two groups' nearest cluster centres
GROUP_GAP = 3.0
#: cluster centres in 3-D (2-D problems use the first two coordinates): three clusters on the
#: left, three on the right, GROUP_GAP apart
CLUSTER_CENTRES = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.3, 0.5, 0.2],
        [0.6, 0.0, 0.4],
        [0.6 + GROUP_GAP, 0.1, 0.1],
        [0.9 + GROUP_GAP, 0.6, 0.3],
        [1.2 + GROUP_GAP, 0.1, 0.0],
    ]
)
#: standard deviation of every cluster (per coordinate)
CLUSTER_SPREAD = 0.05
#: mass of the two groups' totals that must cross between them
GROUP_IMBALANCE = 0.002
#: cluster weights of the source (left group 0.50, right group 0.50)
SOURCE_WEIGHTS = np.array([0.22, 0.15, 0.13, 0.20, 0.18, 0.12])
#: cluster weights of the target (left group 0.498, right group 0.502)
TARGET_WEIGHTS = np.array([0.12, 0.20, 0.18 - GROUP_IMBALANCE, 0.14, 0.12, 0.24 + GROUP_IMBALANCE])

#: the sample images used by the colour-histogram problems (source, target)
IMAGES = ("china.jpg", "flower.jpg")


def cluster_counts(weights: np.ndarray, n: int) -> np.ndarray:
    """Points per cluster: ``round(weights * n)`` by largest remainders (sums to ``n``).

    Raises:
        ValueError: ``n`` smaller than the number of clusters (a cluster would be empty).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if n < len(weights):
        raise ValueError(f"n={n}; expected at least {len(weights)} points (one per cluster)")
    raw = weights / weights.sum() * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    if (counts == 0).any():  # a tiny weight rounded to zero points: take one from the largest
        for k in np.nonzero(counts == 0)[0]:
            counts[k] += 1
            counts[int(np.argmax(counts))] -= 1
    return counts


def gaussian_mixture(
    weights: np.ndarray, n: int, dim: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of the mixture with cluster ``weights`` and their weights.

    Returns:
        ``(points (n, dim), point weights (n,))``, float64; the points of cluster ``k`` carry
        ``weights[k] / count_k`` each (cluster masses exact), clusters in order.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim={dim}; expected 2 or 3")
    centres = torch.as_tensor(CLUSTER_CENTRES[:, :dim], dtype=torch.float64)
    counts = cluster_counts(weights, n)
    points, masses = [], []
    for k, count in enumerate(counts.tolist()):
        noise = torch.randn(count, dim, generator=generator, dtype=torch.float64)
        points.append(centres[k] + CLUSTER_SPREAD * noise)
        masses.append(torch.full((count,), float(weights[k]) / count, dtype=torch.float64))
    return torch.cat(points), torch.cat(masses)


def gaussian_mixture_pair(
    n: int, m: int, dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source (``n`` points, :data:`SOURCE_WEIGHTS`) and target (``m`` points,
    :data:`TARGET_WEIGHTS`) samples of the clustered family (module docstring).

    Returns:
        ``(x (n, dim), y (m, dim), a (n,), b (m,))``, float64, ``a.sum() = b.sum() = 1``.
    """
    g = torch.Generator().manual_seed(seed)
    x, a = gaussian_mixture(SOURCE_WEIGHTS, n, dim, g)
    y, b = gaussian_mixture(TARGET_WEIGHTS, m, dim, g)
    return x, y, a / a.sum(), b / b.sum()


def _image_path(name: str) -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the image problems need scikit-learn (its sample images); pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images" / name
    if not path.exists():
        raise FileNotFoundError(f"scikit-learn's sample image {name!r} is not at {path}")
    return path


@functools.lru_cache(maxsize=4)
def sample_image(name: str) -> np.ndarray:
    """The ``(height, width, 3)`` uint8 pixels of scikit-learn's sample image ``name``.

    The same array as ``sklearn.datasets.load_sample_image(name)`` (checked by the tests), read
    with Pillow from scikit-learn's package directory, without importing ``sklearn.datasets``
    (which takes seconds).
    """
    if name not in IMAGES:
        raise ValueError(f"image={name!r}; expected one of {IMAGES}")
    from PIL import Image

    with Image.open(_image_path(name)) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    pixels.setflags(write=False)
    return pixels


@functools.lru_cache(maxsize=8)
def color_histogram(name: str, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour histogram of a sample image on a regular RGB grid, empty bins dropped.

    Args:
        name: ``"china.jpg"`` or ``"flower.jpg"``.
        bins: cells per channel (the grid has ``bins**3`` cells).

    Returns:
        ``(centres (k, 3), weights (k,))``, float64: the centres of the ``k`` non-empty cells
        (in [0, 255]^3) and the fraction of the pixels in each (sums to 1), cells in raster
        order (red slowest).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 64:
        raise ValueError(f"bins={bins!r}; expected an integer in [2, 64]")
    pixels = sample_image(name).reshape(-1, 3).astype(np.int64)
    cell = pixels * bins // 256  # (P, 3) cell index per channel, in [0, bins)
    flat = (cell[:, 0] * bins + cell[:, 1]) * bins + cell[:, 2]
    counts = np.bincount(flat, minlength=bins**3)
    occupied = np.nonzero(counts)[0]
    index = np.stack([occupied // (bins * bins), (occupied // bins) % bins, occupied % bins], axis=1)
    centres = (index.astype(np.float64) + 0.5) * (256.0 / bins)
    weights = counts[occupied].astype(np.float64) / counts.sum()
    centres.setflags(write=False)
    weights.setflags(write=False)
    return centres, weights


def scaled_sqeuclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|x_i - y_j|^2 / max_kl |x_k - y_l|^2`` (float64; values in [0, 1], maximum exactly 1).

    Args:
        x: ``(..., n, d)``; y: ``(..., m, d)`` (the maximum is taken per problem of a batch).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    rows = max(1, 2**22 // max(1, y.shape[-2] * y.shape[-1]))  # (rows, m, d) blocks of <= 32 MB
    blocks = []
    for start in range(0, x.shape[-2], rows):
        diff = x[..., start : start + rows, None, :] - y[..., None, :, :]
        blocks.append((diff * diff).sum(-1))
    cost = torch.cat(blocks, dim=-2)
    return cost / cost.amax(dim=(-2, -1), keepdim=True)
