"""Free-support entropic barycentres of point clouds (``ota.barycenter_points``).

Given clouds ``(x_k, a_k)``, ``k = 1..K``, and weights ``w`` on the simplex, find ``n_points``
locations ``z`` (uniform weights) minimising ``sum_k w_k OT_eps(z, x_k)`` for the squared
Euclidean cost. The fixed-point iteration (Cuturi and Doucet 2014; POT's
``free_support_barycenter``, here with entropic plans) solves the K problems as one batched
:func:`otalign.solve` on a :class:`~otalign.geometry.PointCloud` and moves every point to the
weighted average of its barycentric maps:

    z <- sum_k w_k (P_k x_k) / (P_k 1)

Ragged inputs (clouds of different sizes) are padded with zero weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from .. import constraints as C
from ..geometry import PointCloud
from ..samples._inputs import Clouds, check_epsilon, pad_weights
from ..solvers.api import solve

__all__ = ["barycenter_points", "PointsBarycenter"]


@dataclass
class PointsBarycenter:
    """Result of :func:`barycenter_points`: ``points`` ``(n_points, d)``, ``n_iters`` (outer
    fixed-point iterations), ``displacement`` (the last move, max over points), ``converged``."""

    points: Any
    n_iters: int
    displacement: float
    converged: bool


def barycenter_points(
    clouds: Any,
    weights: Any = None,
    *,
    n_points: int,
    epsilon: float,
    cloud_weights: Any = None,
    init: Any = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    solver_tol: Optional[float] = None,
    solver_max_iter: int = 2000,
    seed: int = 0,
) -> PointsBarycenter:
    """Free-support barycentre of ``K`` clouds.

    Args:
        clouds: ``(K, n, d)`` or a list of ``K`` clouds ``(n_k, d)`` (tensors or NumPy arrays).
        weights: ``(K,)`` barycentric weights (default uniform), normalised to sum 1.
        n_points: size of the barycentre's support.
        epsilon: entropic strength (> 0), units of the squared Euclidean cost.
        cloud_weights: the clouds' point weights, ``(K, n)`` or a list of ``(n_k,)`` (default uniform).
        init: ``(n_points, d)`` starting locations (default: ``n_points`` points drawn from the
            clouds with ``seed``).
        max_iter, tol: outer iterations, and the stopping threshold on the largest move of a point.
        solver_tol, solver_max_iter: of each batched solve (default tol ``1e-9`` in float64,
            ``1e-5`` otherwise).

    Returns:
        A :class:`PointsBarycenter` (``points`` is a NumPy array for NumPy clouds).
    """
    eps = check_epsilon(epsilon)
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ValueError(f"n_points={n_points!r}; expected an integer >= 1")
    cl = Clouds(clouds, "clouds")
    if cl.points.dim() != 3:
        raise ValueError(f"clouds has shape {tuple(cl.points.shape)}; expected (K, n, d) or a list of K clouds (n_k, d)")
    X = cl.points
    K, d = X.shape[0], X.shape[2]
    dtype = X.dtype if X.dtype == torch.float64 else torch.float32
    X = X.to(dtype)
    if weights is None:
        w = torch.full((K,), 1.0 / K, dtype=dtype, device=X.device)
    else:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64) if not isinstance(weights, torch.Tensor) else weights)
        w = w.to(device=X.device, dtype=dtype)
        if w.shape != (K,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights has shape {tuple(w.shape)}; expected ({K},) non-negative finite weights, one per "
                             "cloud, with a positive sum")
        w = w / w.sum()
    b = pad_weights(cloud_weights, cl, "cloud_weights")
    if b is not None:
        b = b.to(dtype)
        if b.dim() == 1:
            b = b[None].expand(K, -1)
        b = b / b.sum(-1, keepdim=True)
    if init is None:
        gen = torch.Generator().manual_seed(seed)
        pool = X.reshape(-1, d)[cl.valid.reshape(-1)] if cl.valid is not None else X.reshape(-1, d)
        z = pool[torch.randint(pool.shape[0], (n_points,), generator=gen).to(pool.device)].clone()
    else:
        z = torch.as_tensor(np.asarray(init) if not isinstance(init, torch.Tensor) else init).to(X.device, dtype)
        if z.shape != (n_points, d):
            raise ValueError(f"init has shape {tuple(z.shape)}; expected ({n_points}, {d})")
    solver_tol = (1e-9 if dtype == torch.float64 else 1e-5) if solver_tol is None else solver_tol
    move, it, prev = float("inf"), 0, None
    clouds_in = clouds if cl.ragged else X
    with torch.no_grad():
        for it in range(1, max_iter + 1):
            geom = PointCloud(z, clouds_in if cl.ragged else X, cost="sqeuclidean")
            geom.numpy_input = False
            cons = C.balanced(None, b)
            # method="log": the kernel-domain switch of "auto" is far slower on batches whose
            # problems stop at different sweeps
            res = solve(geom, cons, epsilon=eps, tol=solver_tol, max_iter=solver_max_iter, grad="none",
                        init=prev, warn=False, method="log")
            maps = res.barycentric_map(X)  # (K, n_points, d)
            new = (w[:, None, None] * maps).sum(0)
            move = float((new - z).norm(dim=-1).max())
            z, prev = new, res
            if move <= tol:
                break
    points = z.cpu().numpy() if cl.numpy else z
    return PointsBarycenter(points=points, n_iters=it, displacement=move, converged=move <= tol)
