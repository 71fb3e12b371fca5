"""Benchmark problems: seeded point clouds, colour histograms and contrastive costs, with their
constraints.

Every problem is a batch of ``B`` entropic OT problems on ``(n, m)`` costs. Families:

* ``clusters`` (real use, the headline): two samples of a mixture of six Gaussians in 2-D with
  different cluster weights in source and target (:mod:`otalign.bench.datasets`); squared
  Euclidean cost scaled to [0, 1]; near-uniform point weights (each cluster carries exactly its
  mixture weight). Plain Sinkhorn needs ~1,000+ sweeps to an L1 marginal error of 1e-4 at
  ``epsilon = 0.05`` and many more at ``0.01`` and ``0.001``.
* ``images`` (real use): colour histograms of scikit-learn's sample images ``china.jpg`` (source)
  and ``flower.jpg`` (target) on a ``12^3`` RGB grid, empty bins dropped (488 x 389 bins); squared
  distance between bin centres scaled to [0, 1]; weights = bin frequencies; ``epsilon`` in
  {0.01, 0.001} of the cost range.
* ``sphere``: points on the unit sphere in R^128, squared Euclidean cost ``|x - y|^2`` (values in
  [0, 4]; for random points in R^128 they concentrate in ~[1.2, 2.8], so every library converges
  in 10-50 sweeps); uniform weights.
* ``contrastive``: ``2B' x 2B'`` cosine costs ``1 - <z_k, z_l>`` between the embeddings of a
  batch of ``B'`` pairs of views (``z = [z_a; z_b]``, ``z_b`` a noisy copy of ``z_a``), as in
  SimCLR-style losses (values in [0, 2], zero on the diagonal); uniform weights.
* ``points`` (issue 11; not in the default list, selected by a pattern containing ``points``):
  the ``clusters`` data in 3-D at n = m = 10,000 and 50,000 points, given as point clouds
  (coordinates scaled so that the squared Euclidean cost lies in [0, 1]); no ``n x m`` matrix is
  ever built, so only the online configurations run them and the error is measured from the
  returned potentials (:func:`otalign.bench.errors.measure_potentials`).

Kinds (one convention: ``docs/concepts.md``):

* ``balanced``: rows sum to ``a``, columns to ``b``.
* ``unbalanced``: KL-relaxed marginals with strength ``rho``; entropy ``KL(P || a (x) b)``
  (otalign ``entropy="kl"``, POT ``reg_type="kl"``). In the real-use families the target weights
  sum to :data:`UNBALANCED_TARGET_MASS` (the source's to 1), so the problem is genuinely unbalanced.
* ``partial``: rows ``<= a``, columns ``<= b``, total mass ``mass`` (0.8 in the sphere family,
  :data:`REAL_MASS` = 0.95 in the real-use ones); Shannon entropy ``sum P log P - P`` (the only
  one POT's entropic partial solver has).

The cost is generated in float64 on the CPU (so every dtype and device sees the same numbers,
rounded once) and cast to the benchmark dtype and device by :func:`build_problem`.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from . import datasets

__all__ = [
    "ProblemSpec",
    "BenchProblem",
    "all_problems",
    "default_problems",
    "point_problems",
    "quick_problems",
    "select_problems",
    "build_problem",
    "KINDS",
    "FAMILIES",
]

KINDS = ("balanced", "unbalanced", "partial")
FAMILIES = ("clusters", "images", "sphere", "contrastive", "points")
DIM = 128  # ambient dimension of the sphere clouds and contrastive embeddings
EPSILONS = (0.05, 0.5)  # sphere and contrastive families
RHO = 0.5  # sphere family
MASS = 0.8  # every partial problem
#: epsilon (a fraction of the cost range, which is [0, 1]) of the clustered problems, per n
CLUSTER_EPSILONS: dict[int, tuple[float, ...]] = {256: (0.05,), 1024: (0.05, 0.01, 0.001)}
CLUSTER_DIM = 2
#: epsilon of the colour-histogram problems
IMAGE_EPSILONS = (0.01, 0.001)
IMAGE_BINS = 12
#: rho of the unbalanced problems of the real-use families: the cost range (1). The plans keep
#: neither mass (1.02-1.09 between the source's 1 and the target's 1.2) and need 100-3,000 sweeps;
#: rho = 0.1 converges in 20-400
REAL_RHO = 1.0
#: total mass of the target weights of the real-use families' unbalanced problems
UNBALANCED_TARGET_MASS = 1.2
#: transported mass of the real-use families' partial problems: with 0.8 no capacity binds on the
#: clustered problem at epsilon 0.05 (the answer is the Gibbs kernel scaled to the mass, one
#: projection); with 0.95 a quarter of the rows and columns are at their capacity
REAL_MASS = 0.95
#: sweep cap of time-to-tolerance runs: sphere / contrastive, and the real-use families
MAX_ITER_EASY = 2000
MAX_ITER_HARD = 200_000
#: point-cloud problems (issue 11): name -> points per side
POINT_SIZES = {"points-n10k-d3": 10_000, "points-n50k-d3": 50_000}
POINT_EPSILON = 0.05
#: ms/iter is measured over this many sweeps on the point-cloud problems (seconds per sweep on a CPU)
POINT_FIXED_ITERS = 10


@dataclass(frozen=True)
class ProblemSpec:
    """What a benchmark problem is (serialisable; the data is generated from it).

    Attributes:
        name: unique name, e.g. ``"balanced-clusters-n1024-eps0.05"``.
        family: one of :data:`FAMILIES`.
        kind: ``"balanced"``, ``"unbalanced"`` or ``"partial"``.
        batch: ``B`` (1: one problem; results of a single problem still carry ``B = 1``).
        n, m: cost shape (``n = m = 2 * pairs`` for contrastive problems; the numbers of
            non-empty bins for images).
        epsilon: entropic strength in cost units (for the families scaled to [0, 1], a fraction of
            the cost range).
        rho: KL marginal strength (unbalanced), else None.
        mass: transported mass (partial), else None.
        entropy: ``"kl"`` or ``"shannon"`` (see the module docstring).
        seed: seed of the generator.
        dim: ambient dimension of the points (3 for colours).
        b_mass: total mass of the target weights (the source's is 1).
        max_iter: sweep cap of this problem's time-to-tolerance runs (``--max-iter`` overrides).
        fixed_iters: sweeps of this problem's ms/iter measurement (None: ``--iters``, 100).
        bins: RGB cells per channel (images), else None.
        default: part of the default problem list (point-cloud problems are not).
    """

    name: str
    family: str
    kind: str
    batch: int
    n: int
    m: int
    epsilon: float
    rho: Optional[float] = None
    mass: Optional[float] = None
    entropy: str = "kl"
    seed: int = 0
    dim: int = DIM
    b_mass: float = 1.0
    max_iter: int = MAX_ITER_EASY
    fixed_iters: Optional[int] = None
    bins: Optional[int] = None
    default: bool = True

    @property
    def batched(self) -> bool:
        """True when the problem is a batch (``B > 1``) rather than one cost."""
        return self.batch > 1

    @property
    def lazy(self) -> bool:
        """True for point-cloud problems: no dense cost is built; runners get the points."""
        return self.family == "points"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchProblem:
    """A materialised problem.

    Attributes:
        spec: the :class:`ProblemSpec`.
        cost: ``(B, n, m)`` cost in the benchmark dtype and device (None for point clouds).
        a, b: ``(B, n)``, ``(B, m)`` weights in the benchmark dtype and device.
        cost64, a64, b64: the same in float64 on the CPU (used by the error measurement and the
            reference solution; ``cost64`` is None for point clouds).
        points: ``(x, y)`` of shapes ``(B, n, d)``, ``(B, m, d)`` (float64, CPU) from which the
            cost was built (for ``contrastive`` problems ``x = y = z``; for ``images`` the bin
            centres, for ``clusters`` and ``points`` already scaled so that the cost is
            ``|x - y|^2``).
    """

    spec: ProblemSpec
    cost: Optional[torch.Tensor]
    a: torch.Tensor
    b: torch.Tensor
    cost64: Optional[torch.Tensor]
    a64: torch.Tensor
    b64: torch.Tensor
    points: tuple[torch.Tensor, torch.Tensor] = field(repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    @property
    def device(self) -> torch.device:
        return self.a.device


def _kind_params(kind: str) -> dict[str, Any]:
    if kind == "unbalanced":
        return {"rho": RHO, "entropy": "kl"}
    if kind == "partial":
        return {"mass": MASS, "entropy": "shannon"}
    return {"entropy": "kl"}


def _real_kind_params(kind: str) -> dict[str, Any]:
    """Kind parameters of the real-use families (cost range 1)."""
    if kind == "unbalanced":
        return {"rho": REAL_RHO, "entropy": "kl", "b_mass": UNBALANCED_TARGET_MASS}
    if kind == "partial":
        return {"mass": REAL_MASS, "entropy": "shannon"}
    return _kind_params(kind)


@functools.lru_cache(maxsize=1)
def _image_sizes() -> tuple[int, int]:
    src, tgt = datasets.IMAGES
    return len(datasets.color_histogram(src, IMAGE_BINS)[1]), len(datasets.color_histogram(tgt, IMAGE_BINS)[1])


def real_use_problems() -> list[ProblemSpec]:
    """The clustered and colour-histogram problems (the headline families)."""
    specs: list[ProblemSpec] = []
    for n, epsilons in CLUSTER_EPSILONS.items():
        for eps in epsilons:
            for kind in KINDS:
                specs.append(
                    ProblemSpec(
                        name=f"{kind}-clusters-n{n}-eps{eps:g}", family="clusters", kind=kind, batch=1, n=n, m=n,
                        epsilon=eps, dim=CLUSTER_DIM, max_iter=MAX_ITER_HARD, **_real_kind_params(kind),
                    )
                )
    n_img, m_img = _image_sizes()
    for eps in IMAGE_EPSILONS:
        for kind in KINDS:
            specs.append(
                ProblemSpec(
                    name=f"{kind}-images-g{IMAGE_BINS}-eps{eps:g}", family="images", kind=kind, batch=1, n=n_img,
                    m=m_img, epsilon=eps, dim=3, bins=IMAGE_BINS, max_iter=MAX_ITER_HARD, **_real_kind_params(kind),
                )
            )
    return specs


def classic_problems() -> list[ProblemSpec]:
    """The sphere and contrastive problems (28; every library converges in 10-50 sweeps).

    Sphere clouds with ``n`` in {256, 1024, 4096} and a batch ``16 x 512``, each balanced,
    unbalanced (``rho = 0.5``) and partial (``mass = 0.8``); contrastive costs for ``B'`` in
    {256, 1024} pairs (``512 x 512`` and ``2048 x 2048``), balanced; ``epsilon`` in {0.05, 0.5}.
    """
    specs: list[ProblemSpec] = []
    shapes = [(1, 256), (1, 1024), (1, 4096), (16, 512)]
    for kind in KINDS:
        for batch, n in shapes:
            for eps in EPSILONS:
                size = f"n{n}" if batch == 1 else f"B{batch}xn{n}"
                specs.append(
                    ProblemSpec(
                        name=f"{kind}-{size}-eps{eps:g}", family="sphere", kind=kind, batch=batch, n=n, m=n,
                        epsilon=eps, **_kind_params(kind),
                    )
                )
    for pairs in (256, 1024):
        for eps in EPSILONS:
            specs.append(
                ProblemSpec(
                    name=f"contrastive-B{pairs}-eps{eps:g}", family="contrastive", kind="balanced", batch=1,
                    n=2 * pairs, m=2 * pairs, epsilon=eps, **_kind_params("balanced"),
                )
            )
    return specs


def all_problems() -> list[ProblemSpec]:
    """Every problem: the real-use families first, then the classic ones, then the point clouds
    (``spec.default`` says which are in the default list: all but the point clouds)."""
    return real_use_problems() + classic_problems() + point_problems()


def default_problems() -> list[ProblemSpec]:
    """The problems a run without ``--problems`` measures (all but the point clouds)."""
    return [p for p in all_problems() if p.default]


def point_problems() -> list[ProblemSpec]:
    """Point-cloud problems (issue 11): clustered data in 3-D, balanced, never as a dense cost.

    Not in the default list (minutes per library on a CPU); select them with a pattern that
    contains ``points`` (e.g. ``--problems points-n10k-d3``).
    """
    return [
        ProblemSpec(
            name=name, family="points", kind="balanced", batch=1, n=size, m=size, epsilon=POINT_EPSILON, dim=3,
            max_iter=MAX_ITER_HARD, fixed_iters=POINT_FIXED_ITERS, default=False, **_kind_params("balanced"),
        )
        for name, size in POINT_SIZES.items()
    ]


QUICK = (
    "balanced-images-g12-eps0.01",
    "balanced-n256-eps0.05",
    "unbalanced-n256-eps0.05",
    "partial-n256-eps0.05",
    "contrastive-B256-eps0.5",
)


def quick_problems() -> list[ProblemSpec]:
    """The subset run by ``otalign bench --quick``: small problems, one of each kind, and the
    cheapest real-use one (colour histograms at epsilon 0.01: ~100-300 sweeps). The clustered
    problems need 1,000+ sweeps per solve, too many for a run of under a minute."""
    by_name = {p.name: p for p in default_problems()}
    return [by_name[name] for name in QUICK]


def select_problems(patterns: Optional[Sequence[str]], pool: Optional[Sequence[ProblemSpec]] = None) -> list[ProblemSpec]:
    """Problems whose name matches one of ``patterns``.

    A pattern equal to a problem's name selects that problem; a pattern with a wildcard (``*``,
    ``?``, ``[``) is matched with :mod:`fnmatch`; any other pattern matches the names that contain
    it (``"n256"`` selects every 256-point problem). Problems outside the default list (the
    point clouds) are matched only by a pattern that contains ``"points"``.
    ``None`` or an empty sequence selects the default list (or the whole ``pool`` when given).

    Raises:
        ValueError: a pattern matches no problem (the message lists the available names).
    """
    if pool is None:
        if not patterns:
            return default_problems()
        pool = all_problems()
    pool = list(pool)
    if not patterns:
        return pool
    chosen: list[ProblemSpec] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            raise ValueError("empty problem pattern; expected e.g. 'balanced-n256*' or 'contrastive'")
        wild = any(ch in pattern for ch in "*?[")
        exact = [p for p in pool if p.name == pattern]
        candidates = [p for p in pool if p.default or "points" in pattern]
        hits = exact or [
            p for p in candidates if (fnmatch.fnmatchcase(p.name, pattern) if wild else pattern in p.name)
        ]
        if not hits:
            names = ", ".join(p.name for p in pool)
            raise ValueError(f"problem pattern {pattern!r} matches no problem; available: {names}")
        chosen += [p for p in hits if p not in chosen]
    return chosen


def _sphere(generator: torch.Generator, batch: int, n: int, d: int) -> torch.Tensor:
    x = torch.randn(batch, n, d, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _uniform(batch: int, n: int) -> torch.Tensor:
    return torch.full((batch, n), 1.0 / n, dtype=torch.float64)


def _max_sqdist(x: torch.Tensor, y: torch.Tensor) -> float:
    """``max_ij |x_i - y_j|^2`` of two 3-D clouds, exactly, from their convex hulls' vertices."""
    from scipy.spatial import ConvexHull

    hx = x[torch.as_tensor(ConvexHull(x.numpy()).vertices)]
    hy = y[torch.as_tensor(ConvexHull(y.numpy()).vertices)]
    return float((torch.cdist(hx, hy) ** 2).max())


def _data(spec: ProblemSpec) -> tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cost or None, x, y, a, b)`` in float64 with a leading batch dimension."""
    g = torch.Generator().manual_seed(spec.seed)
    if spec.family == "sphere":
        x = _sphere(g, spec.batch, spec.n, spec.dim)
        y = _sphere(g, spec.batch, spec.m, spec.dim)
        # |x - y|^2 = 2 - 2 <x, y> on the sphere (exact to float64 rounding, no (n, m, d) temporary)
        cost = (2.0 - 2.0 * x @ y.transpose(-1, -2)).clamp_min(0.0)
        return cost, x, y, _uniform(spec.batch, spec.n), _uniform(spec.batch, spec.m)
    if spec.family == "contrastive":
        pairs = spec.n // 2
        z_a = _sphere(g, spec.batch, pairs, spec.dim)
        noise = torch.randn(spec.batch, pairs, spec.dim, generator=g, dtype=torch.float64)
        z_b = z_a + 0.5 * noise / math.sqrt(spec.dim)
        z_b = z_b / z_b.norm(dim=-1, keepdim=True)
        z = torch.cat([z_a, z_b], dim=1)
        cost = (1.0 - z @ z.transpose(-1, -2)).clamp_min(0.0)
        return cost, z, z, _uniform(spec.batch, spec.n), _uniform(spec.batch, spec.m)
    if spec.family in ("clusters", "points"):
        xs, ys, as_, bs = [], [], [], []
        for k in range(spec.batch):
            x, y, a, b = datasets.gaussian_mixture_pair(spec.n, spec.m, spec.dim, spec.seed + k)
            xs.append(x), ys.append(y), as_.append(a), bs.append(b)
        x, y, a, b = torch.stack(xs), torch.stack(ys), torch.stack(as_), torch.stack(bs)
        if spec.family == "points":  # scale the points: |x - y|^2 in [0, 1], max exactly 1
            scale = math.sqrt(max(_max_sqdist(x[k], y[k]) for k in range(spec.batch)))
            return None, x / scale, y / scale, a, b
        cost = datasets.scaled_sqeuclidean(x, y)
        raw_max = torch.stack([((x[k, :, None, :] - y[k, None, :, :]) ** 2).sum(-1).max() for k in range(spec.batch)])
        scale = raw_max.sqrt()[:, None, None]  # the points as the cost sees them: cost = |x - y|^2
        return cost, x / scale, y / scale, a, b
    if spec.family == "images":
        if spec.bins is None:
            raise ValueError(f"problem {spec.name!r}: family 'images' needs bins")
        src, tgt = datasets.IMAGES
        cx, wa = datasets.color_histogram(src, spec.bins)
        cy, wb = datasets.color_histogram(tgt, spec.bins)
        x = torch.as_tensor(np.array(cx))[None]
        y = torch.as_tensor(np.array(cy))[None]
        if (x.shape[1], y.shape[1]) != (spec.n, spec.m):
            raise ValueError(f"problem {spec.name!r}: the histograms have {x.shape[1]} x {y.shape[1]} bins; spec says {spec.n} x {spec.m}")
        cost = datasets.scaled_sqeuclidean(x, y)
        return cost, x, y, torch.as_tensor(np.array(wa))[None], torch.as_tensor(np.array(wb))[None]
    raise ValueError(f"family={spec.family!r}; expected one of {FAMILIES}")


def build_problem(spec: ProblemSpec, *, dtype: torch.dtype = torch.float32, device: Any = "cpu") -> BenchProblem:
    """Generate the data of ``spec`` (deterministic in ``spec.seed``) in ``dtype`` on ``device``."""
    cost64, x, y, a64, b64 = _data(spec)
    if spec.b_mass != 1.0:
        b64 = b64 * (spec.b_mass / b64.sum(-1, keepdim=True))
    device = torch.device(device)
    return BenchProblem(
        spec=spec,
        cost=None if cost64 is None else cost64.to(device=device, dtype=dtype).contiguous(),
        a=a64.to(device=device, dtype=dtype),
        b=b64.to(device=device, dtype=dtype),
        cost64=cost64,
        a64=a64,
        b64=b64,
        points=(x, y),
    )
