"""Benchmark problems: seeded point clouds and contrastive costs, with their hard marginals.

Every problem is a batch of ``B`` entropic OT problems on ``(n, m)`` costs with uniform weights:

* ``sphere``: points on the unit sphere in R^128, squared Euclidean cost ``|x - y|^2`` (values in
  [0, 4]; for random points in R^128 they concentrate around 2).
* ``contrastive``: ``2B' x 2B'`` cosine costs ``1 - <z_k, z_l>`` between the embeddings of a
  batch of ``B'`` pairs of views (``z = [z_a; z_b]``, ``z_b`` a noisy copy of ``z_a``), as in
  SimCLR-style losses (values in [0, 2], zero on the diagonal).

Kinds (one convention: ``docs/concepts.md``):

* ``balanced``: rows sum to ``a``, columns to ``b``.
* ``unbalanced``: KL-relaxed marginals with strength ``rho``; entropy ``KL(P || a (x) b)``
  (otalign ``entropy="kl"``, POT ``reg_type="kl"``).
* ``partial``: rows ``<= a``, columns ``<= b``, total mass ``mass``; Shannon entropy
  ``sum P log P - P`` (the only one POT's entropic partial solver has; for uniform weights and a
  fixed total mass it gives the same plan as ``KL(P || a (x) b)``).

The cost is generated in float64 on the CPU (so every dtype and device sees the same numbers,
rounded once) and cast to the benchmark dtype and device by :func:`build_problem`.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import torch

__all__ = [
    "ProblemSpec",
    "BenchProblem",
    "all_problems",
    "quick_problems",
    "select_problems",
    "build_problem",
    "KINDS",
]

KINDS = ("balanced", "unbalanced", "partial")
DIM = 128  # ambient dimension of the point clouds and embeddings
EPSILONS = (0.05, 0.5)
RHO = 0.5
MASS = 0.8


@dataclass(frozen=True)
class ProblemSpec:
    """What a benchmark problem is (serialisable; the data is generated from it).

    Attributes:
        name: unique name, e.g. ``"balanced-n1024-eps0.05"``.
        family: ``"sphere"`` or ``"contrastive"``.
        kind: ``"balanced"``, ``"unbalanced"`` or ``"partial"``.
        batch: ``B`` (1: one problem; results of a single problem still carry ``B = 1``).
        n, m: cost shape (``n = m = 2 * pairs`` for contrastive problems).
        epsilon: entropic strength in cost units.
        rho: KL marginal strength (unbalanced), else None.
        mass: transported mass (partial), else None.
        entropy: ``"kl"`` or ``"shannon"`` (see the module docstring).
        seed: seed of the generator.
        dim: ambient dimension.
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

    @property
    def batched(self) -> bool:
        """True when the problem is a batch (``B > 1``) rather than one cost."""
        return self.batch > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchProblem:
    """A materialised problem.

    Attributes:
        spec: the :class:`ProblemSpec`.
        cost: ``(B, n, m)`` cost in the benchmark dtype and device.
        a, b: ``(B, n)``, ``(B, m)`` weights (uniform) in the benchmark dtype and device.
        cost64, a64, b64: the same in float64 on the CPU (used by the error measurement and the
            reference solution).
        points: ``(x, y)`` of shapes ``(B, n, d)``, ``(B, m, d)`` (float64, CPU) from which the
            cost was built (for ``contrastive`` problems ``x = y = z``).
    """

    spec: ProblemSpec
    cost: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    cost64: torch.Tensor
    a64: torch.Tensor
    b64: torch.Tensor
    points: tuple[torch.Tensor, torch.Tensor] = field(repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.cost.dtype

    @property
    def device(self) -> torch.device:
        return self.cost.device


def _kind_params(kind: str) -> dict[str, Any]:
    if kind == "unbalanced":
        return {"rho": RHO, "entropy": "kl"}
    if kind == "partial":
        return {"mass": MASS, "entropy": "shannon"}
    return {"entropy": "kl"}


def all_problems() -> list[ProblemSpec]:
    """Every problem of the full benchmark (28 problems).

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
                        name=f"{kind}-{size}-eps{eps:g}",
                        family="sphere",
                        kind=kind,
                        batch=batch,
                        n=n,
                        m=n,
                        epsilon=eps,
                        **_kind_params(kind),
                    )
                )
    for pairs in (256, 1024):
        for eps in EPSILONS:
            specs.append(
                ProblemSpec(
                    name=f"contrastive-B{pairs}-eps{eps:g}",
                    family="contrastive",
                    kind="balanced",
                    batch=1,
                    n=2 * pairs,
                    m=2 * pairs,
                    epsilon=eps,
                    **_kind_params("balanced"),
                )
            )
    return specs


QUICK = (
    "balanced-n256-eps0.05",
    "unbalanced-n256-eps0.05",
    "partial-n256-eps0.05",
    "contrastive-B256-eps0.5",
)


def quick_problems() -> list[ProblemSpec]:
    """The subset run by ``otalign bench --quick`` (small problems, one of each kind)."""
    by_name = {p.name: p for p in all_problems()}
    return [by_name[name] for name in QUICK]


def select_problems(patterns: Optional[Sequence[str]], pool: Optional[Sequence[ProblemSpec]] = None) -> list[ProblemSpec]:
    """Problems of ``pool`` (default: all) whose name matches one of ``patterns``.

    A pattern equal to a problem's name selects that problem; a pattern with a wildcard (``*``,
    ``?``, ``[``) is matched with :mod:`fnmatch`; any other pattern matches the names that contain
    it (``"n256"`` selects every 256-point problem).
    ``None`` or an empty sequence selects the whole pool.

    Raises:
        ValueError: a pattern matches no problem (the message lists the available names).
    """
    pool = list(all_problems() if pool is None else pool)
    if not patterns:
        return pool
    chosen: list[ProblemSpec] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            raise ValueError("empty problem pattern; expected e.g. 'balanced-n256*' or 'contrastive'")
        wild = any(ch in pattern for ch in "*?[")
        exact = [p for p in pool if p.name == pattern]
        hits = exact or [p for p in pool if (fnmatch.fnmatchcase(p.name, pattern) if wild else pattern in p.name)]
        if not hits:
            names = ", ".join(p.name for p in pool)
            raise ValueError(f"problem pattern {pattern!r} matches no problem; available: {names}")
        chosen += [p for p in hits if p not in chosen]
    return chosen


def _sphere(generator: torch.Generator, batch: int, n: int, d: int) -> torch.Tensor:
    x = torch.randn(batch, n, d, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _cost_and_points(spec: ProblemSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(spec.seed)
    if spec.family == "sphere":
        x = _sphere(g, spec.batch, spec.n, spec.dim)
        y = _sphere(g, spec.batch, spec.m, spec.dim)
        # |x - y|^2 = 2 - 2 <x, y> on the sphere (exact to float64 rounding, no (n, m, d) temporary)
        cost = (2.0 - 2.0 * x @ y.transpose(-1, -2)).clamp_min(0.0)
        return cost, x, y
    if spec.family == "contrastive":
        pairs = spec.n // 2
        z_a = _sphere(g, spec.batch, pairs, spec.dim)
        noise = torch.randn(spec.batch, pairs, spec.dim, generator=g, dtype=torch.float64)
        z_b = z_a + 0.5 * noise / math.sqrt(spec.dim)
        z_b = z_b / z_b.norm(dim=-1, keepdim=True)
        z = torch.cat([z_a, z_b], dim=1)
        cost = (1.0 - z @ z.transpose(-1, -2)).clamp_min(0.0)
        return cost, z, z
    raise ValueError(f"family={spec.family!r}; expected 'sphere' or 'contrastive'")


def build_problem(spec: ProblemSpec, *, dtype: torch.dtype = torch.float32, device: Any = "cpu") -> BenchProblem:
    """Generate the data of ``spec`` (deterministic in ``spec.seed``) in ``dtype`` on ``device``."""
    cost64, x, y = _cost_and_points(spec)
    a64 = torch.full((spec.batch, spec.n), 1.0 / spec.n, dtype=torch.float64)
    b64 = torch.full((spec.batch, spec.m), 1.0 / spec.m, dtype=torch.float64)
    device = torch.device(device)
    return BenchProblem(
        spec=spec,
        cost=cost64.to(device=device, dtype=dtype).contiguous(),
        a=a64.to(device=device, dtype=dtype),
        b=b64.to(device=device, dtype=dtype),
        cost64=cost64,
        a64=a64,
        b64=b64,
        points=(x, y),
    )
