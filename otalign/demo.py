"""Built-in example problems for ``otalign demo``: one per constraint family, plus a batch.

:func:`run_demo` solves them and returns one :class:`Summary` per problem; :func:`format_table`
renders them. The CLI only calls these two functions.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import constraints as C
from .solvers import solve

__all__ = ["Summary", "run_demo", "format_table"]


@dataclass
class Summary:
    name: str
    shape: str
    n_iters: int
    converged: bool
    status: str  # "converged", or why not: "stalled", "max_iter", "diverged"
    row_error: float  # L1 distance of the row marginal to its weights
    col_error: float
    mass: float
    value: float
    seconds: float


def _cloud(n: int, d: int, generator: torch.Generator, shift: float = 0.0) -> torch.Tensor:
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    x[:, 0] += shift
    return x


def _summaries(name: str, cost: torch.Tensor, constraints, res, seconds: float, sweeps: torch.Tensor, a=None,
               b=None) -> list[Summary]:
    """One summary per problem of ``res``; ``sweeps`` the sweeps each ran (over the chunks);
    ``a``, ``b`` are the weights errors are measured to."""
    P = res.plan if res.plan.dim() == 3 else res.plan[None]
    B, n, m = P.shape
    a = torch.full((B, n), 1 / n, dtype=P.dtype) if a is None else a.expand(B, n)
    b = torch.full((B, m), 1 / m, dtype=P.dtype) if b is None else b.expand(B, m)
    out = []
    it = sweeps.reshape(-1)
    conv = res.converged.reshape(-1)
    stalled = res.stalled.reshape(-1)
    diverged = res.diverged.reshape(-1)
    val = res.value.reshape(-1)
    for k in range(B):
        tag = name if B == 1 else f"{name} [{k}]"
        out.append(
            Summary(
                name=tag,
                shape=f"{n}x{m}",
                n_iters=int(it[k]),
                converged=bool(conv[k]),
                status=("converged" if conv[k] else "diverged" if diverged[k] else "stalled" if stalled[k]
                        else "max_iter" if int(it[k]) + CHUNK >= MAX_SWEEPS else "time"),
                row_error=float((P[k].sum(1) - a[k]).abs().sum()),
                col_error=float((P[k].sum(0) - b[k]).abs().sum()),
                mass=float(P[k].sum()),
                value=float(val[k]),
                seconds=seconds / B,
            )
        )
    return out


MAX_SEED = 2**63 - 1
#: each problem gets up to MAX_SWEEPS sweeps, run in chunks of CHUNK (warm-started), and stops at
#: the end of the chunk that passes TIME_BUDGET seconds (reported "time")
MAX_SWEEPS, CHUNK, TIME_BUDGET = 5000, 250, 2.0
#: The costs are float64 in [0, 1]: cost / epsilon stays finite for epsilon >= the smallest normal.
MIN_EPSILON = sys.float_info.min


def _check_arguments(seed: int, epsilon: float) -> None:
    """ValueError naming the argument unless ``0 <= seed <= 2^63 - 1`` (an int) and epsilon is a
    finite real number >= :data:`MIN_EPSILON` (Python or NumPy scalar, not a bool)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed!r}; expected an integer in [0, 2^63 - 1]")
    ok = isinstance(epsilon, (int, float, np.integer, np.floating)) and not isinstance(epsilon, (bool, np.bool_))
    if not (ok and math.isfinite(epsilon) and epsilon >= MIN_EPSILON):
        raise ValueError(
            f"epsilon={epsilon!r}; expected a finite number >= {MIN_EPSILON:g} (the demo's costs are float64 in [0, 1])"
        )


def run_demo(seed: int = 0, epsilon: float = 0.05) -> list[Summary]:
    """Solve the example problems (float64, CPU) and summarise each one.

    ``seed``: an integer in [0, 2^63 - 1]; ``epsilon``: a finite number >= the smallest normal
    float64 (the costs are scaled to [0, 1]). Anything else raises ``ValueError``.
    """
    _check_arguments(seed, epsilon)
    seed, epsilon = int(seed), float(epsilon)
    g = torch.Generator().manual_seed(seed)
    x, y = _cloud(300, 2, g), _cloud(200, 2, g, shift=1.0)
    cost = torch.cdist(x, y) ** 2
    cost = cost / cost.max()
    runs = []

    def run(name, cost, cons, **kw):
        # up to MAX_SWEEPS sweeps, in chunks warm-started from the last, within TIME_BUDGET seconds
        t0 = time.perf_counter()
        eps = kw.pop("epsilon", epsilon)
        res = solve(cost, cons, epsilon=eps, tol=1e-6, max_iter=CHUNK, warn=False, **kw)
        done = torch.zeros_like(res.n_iters)
        while not bool(res.converged.all()) and int(done.max()) + CHUNK < MAX_SWEEPS:
            if time.perf_counter() - t0 > TIME_BUDGET:
                break
            done = done + res.n_iters
            res = solve(cost, cons, epsilon=eps, tol=1e-6, max_iter=CHUNK, init=res, warn=False, **kw)
        _ = res.plan  # materialise inside the timing
        return name, cost, cons, res, time.perf_counter() - t0, done + res.n_iters

    runs.append(run("balanced", cost, C.balanced()))
    runs.append(run("unbalanced rho=0.5", cost, C.unbalanced(0.5)))
    runs.append(run("semi-relaxed (rows hard)", cost, C.unbalanced((math.inf, 0.5))))
    runs.append(run("partial mass=0.7", cost, C.partial(0.7), entropy="shannon"))
    z = _cloud(200, 2, g)
    self_cost = torch.cdist(z, z) ** 2
    runs.append(run("self-matching, diagonal forbidden", self_cost / self_cost.max(), C.balanced() + [C.Forbid(mask="diagonal")]))
    groups_x = (x[:, 1] > 0).long()
    groups_y = (y[:, 1] > 0).long()
    wx = torch.stack([(groups_x == k).double().mean() for k in (0, 1)])
    wy = torch.stack([(groups_y == k).double().mean() for k in (0, 1)])
    within = 0.8 * torch.minimum(wx[:, None], wy[None, :]) * torch.eye(2, dtype=torch.float64)
    block = _complete_blocks(within, wx, wy)
    runs.append(run("domain blocks (80% within)", cost, C.balanced() + [C.BlockMass(row_groups=groups_x, col_groups=groups_y, mass=block)]))
    # ragged batch: 6 problems of 40..64 points, padded with zero weights to 64x64
    sizes = [40, 48, 56, 64, 44, 60]
    pts_x = torch.stack([_cloud(64, 2, g) for _ in sizes])
    pts_y = torch.stack([_cloud(64, 2, g, shift=0.5) for _ in sizes])
    bcost = torch.cdist(pts_x, pts_y) ** 2
    bcost = bcost / bcost.amax((1, 2), keepdim=True)
    w = torch.stack([torch.cat([torch.full((s,), 1.0 / s), torch.zeros(64 - s)]) for s in sizes]).double()
    runs.append(run("batch, ragged (padded)", bcost, C.balanced(w, w)))

    out: list[Summary] = []
    for name, cost, cons, res, secs, sweeps in runs:
        padded = name.startswith("batch")
        out += _summaries(name, cost, cons, res, secs, sweeps, w if padded else None, w if padded else None)
    for row, s in zip(out[-len(sizes):], sizes):
        row.shape = f"{s}x{s}/64"
    return out


def _complete_blocks(within: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    """2x2 block masses with the given diagonal and row/column sums ``wx``, ``wy``."""
    M = within.clone()
    M[0, 1] = wx[0] - M[0, 0]
    M[1, 0] = wy[0] - M[0, 0]
    M[1, 1] = wx[1] - M[1, 0]
    return M


def format_table(rows: list[Summary]) -> str:
    head = f"{'problem':36s} {'shape':>8s} {'iters':>6s} {'status':>9s} {'row L1 err':>11s} {'col L1 err':>11s} {'mass':>7s} {'value':>10s} {'ms':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:36s} {r.shape:>8s} {r.n_iters:6d} {r.status:>9s} "
            f"{r.row_error:11.2e} {r.col_error:11.2e} {r.mass:7.4f} {r.value:10.5f} {1e3 * r.seconds:8.1f}"
        )
    lines.append(
        "row/col L1 err: distance of the plan's marginals to the weights (uniform unless padded); "
        "relaxed and partial problems move less mass on purpose.\nstatus: converged (the error is "
        f"certified below tol = 1e-6), or why not: stalled (no progress over its last 200 sweeps), max_iter "
        f"({MAX_SWEEPS} sweeps), time (the demo's {TIME_BUDGET:g} s per problem ran out), diverged."
    )
    return "\n".join(lines)
