"""``PointCloud(x, y, cost, backend)``: costs between two point clouds, computed when needed.

Backends (``docs/geometry.md``):

* ``"tensorized"``: the dense cost is built once (differentiable w.r.t. ``x`` and ``y``) and the
  solve runs as on :class:`~otalign.geometry.dense.Dense` (fastest per sweep while it fits).
* ``"online"``: pure torch; every reduction recomputes ``(tn, tm)`` tiles of the cost (one
  matrix product for the named costs) and streams a log-sum-exp: never more than a tile in
  memory, forward or backward. CPU and CUDA, float32 and float64, batched.
* ``"keops"``: the same reductions through pykeops ``LazyTensor`` (optional dependency).
* ``"auto"``: tensorized while the dense cost fits the memory budget
  (:func:`~otalign.geometry.base.memory_budget`: 1/8 of the available memory), online beyond.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from .. import costs as _costs
from .base import Geometry, PairTerms, apply_pair_terms, memory_budget
from .dense import compute_dtype

__all__ = ["PointCloud", "COSTS", "BACKENDS", "pad_clouds"]

COSTS = ("sqeuclidean", "cosine", "neg_dot")
BACKENDS = ("auto", "tensorized", "online", "keops")

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_points(value: Any, name: str) -> tuple[torch.Tensor, bool]:
    """``(points, was_numpy)`` for a tensor or NumPy array of shape ``(n, d)`` or ``(B, n, d)``."""
    was_numpy = isinstance(value, np.ndarray)
    if was_numpy:
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{name} has dtype {value.dtype}; expected a floating-point array")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} is a {type(value).__name__}; expected a tensor or NumPy array (n, d) or (B, n, d)")
    if not value.is_floating_point():
        raise ValueError(f"{name} has dtype {value.dtype}; expected a floating-point tensor")
    if value.dim() not in (2, 3) or value.shape[-2] == 0 or value.shape[-1] == 0 or value.numel() == 0:
        raise ValueError(f"{name} has shape {tuple(value.shape)}; expected (n, d) or (B, n, d) with n, d >= 1")
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{name} has non-finite entries; expected finite coordinates")
    return value, was_numpy


def pad_clouds(value: Any, name: str) -> tuple[torch.Tensor, Optional[torch.Tensor], bool]:
    """``(points, valid, was_numpy)``: a cloud ``(n, d)`` / ``(B, n, d)`` as given (``valid`` None),
    or a ragged batch -- a list or tuple of clouds ``(n_k, d)`` with one ``d`` -- padded with zeros
    to ``(B, max n_k, d)``, ``valid`` ``(B, max n_k)`` True on the real points.

    The padding is differentiable: gradients reach each cloud of the list."""
    if not isinstance(value, (list, tuple)):
        points, was_numpy = _as_points(value, name)
        return points, None, was_numpy
    if len(value) == 0:
        raise ValueError(f"{name} is an empty list; expected a list of point clouds (n_k, d)")
    clouds, flags = [], []
    for k, item in enumerate(value):
        if isinstance(item, (list, tuple)):
            item = np.asarray(item, dtype=np.float64)
        cloud, was_numpy = _as_points(item, f"{name}[{k}]")
        if cloud.dim() != 2:
            raise ValueError(f"{name}[{k}] has shape {tuple(cloud.shape)}; expected one cloud (n_k, d) per entry")
        clouds.append(cloud)
        flags.append(was_numpy)
    d = clouds[0].shape[1]
    for k, cloud in enumerate(clouds):
        if cloud.shape[1] != d:
            raise ValueError(
                f"{name}[{k}] has dimension d={cloud.shape[1]} but {name}[0] has d={d}; expected one "
                "dimension d for every cloud of a ragged batch"
            )
        if cloud.device != clouds[0].device:
            raise ValueError(f"{name}[{k}] is on {cloud.device} but {name}[0] on {clouds[0].device}; expected one device")
    dtype = clouds[0].dtype
    for cloud in clouds[1:]:
        dtype = torch.promote_types(dtype, cloud.dtype)
    n = max(cloud.shape[0] for cloud in clouds)
    points = torch.stack([
        torch.nn.functional.pad(cloud.to(dtype), (0, 0, 0, n - cloud.shape[0])) for cloud in clouds
    ])
    sizes = torch.tensor([cloud.shape[0] for cloud in clouds], device=points.device)
    valid = torch.arange(n, device=points.device)[None, :] < sizes[:, None]
    return points, valid, all(flags)


class PointCloud(Geometry):
    """Costs ``C_ij = cost(x_i, y_j)`` between ``x`` (``(n, d)`` or ``(B, n, d)``) and ``y``
    (``(m, d)`` or ``(B, m, d)``; a 2-D cloud is shared by the batch of the other).

    A ragged batch is a list of clouds ``(n_k, d)`` (and/or ``(m_k, d)``): it is padded with zeros to
    ``(B, max n_k, d)`` and the padding gets zero weight (``valid_rows`` / ``valid_cols``); default
    uniform weights are ``1 / n_k`` on the real points, and explicit weights are given padded,
    ``(B, max n_k)`` with zeros on the padding (:func:`otalign.samples.pad_weights`). NumPy
    clouds (arrays, or lists of arrays) give NumPy results from :func:`otalign.solve`.

    Args:
        x, y: the clouds (torch tensors or NumPy arrays; gradients flow to tensors that require
            grad).
        cost: ``"sqeuclidean"`` (``|x - y|^2``, not halved), ``"cosine"`` (``1 - cos``),
            ``"neg_dot"`` (``-<x, y>``), as in :mod:`otalign.costs`; or a callable mapping
            ``(x_block (B', tn, d), y_block (B', tm, d))`` to the ``(B', tn, tm)`` block of costs
            (any differentiable function).
        backend: ``"auto"``, ``"tensorized"``, ``"online"`` or ``"keops"`` (module docstring).
        tile_bytes: bytes of one log-plan tile of the online backend (default
            :data:`otalign.geometry.streaming.TILE_BYTES`, 64 MiB).
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        cost: Union[str, CostFn] = "sqeuclidean",
        backend: str = "auto",
        *,
        tile_bytes: Optional[int] = None,
    ) -> None:
        x, valid_x, x_np = pad_clouds(x, "x")
        y, valid_y, y_np = pad_clouds(y, "y")
        if x.shape[-1] != y.shape[-1]:
            raise ValueError(f"x has dimension d={x.shape[-1]} but y has d={y.shape[-1]}; expected equal dimensions")
        if x.dim() == 3 and y.dim() == 3 and x.shape[0] != y.shape[0]:
            raise ValueError(f"x has a batch of {x.shape[0]} but y has {y.shape[0]}; expected equal batches")
        if x.device != y.device:
            raise ValueError(f"x is on {x.device} but y on {y.device}; expected one device")
        if isinstance(cost, str):
            if cost not in COSTS:
                raise ValueError(f"cost={cost!r}; expected one of {COSTS} or a callable (x_block, y_block) -> costs")
        elif not callable(cost):
            raise ValueError(f"cost={cost!r}; expected one of {COSTS} or a callable (x_block, y_block) -> costs")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; expected one of {BACKENDS}")
        if tile_bytes is not None and (isinstance(tile_bytes, bool) or not isinstance(tile_bytes, int) or tile_bytes < 1):
            raise ValueError(f"tile_bytes={tile_bytes!r}; expected a positive integer")
        #: both clouds were NumPy arrays (or lists of them): solves return NumPy arrays
        self.numpy_input = x_np and y_np
        self.batched_input = x.dim() == 3 or y.dim() == 3
        self.valid_rows, self.valid_cols = valid_x, valid_y
        self.out_dtype = torch.promote_types(x.dtype, y.dtype)
        self.dtype = compute_dtype(self.out_dtype)
        self.device = x.device
        self.source_x, self.source_y = x, y
        x3 = (x if x.dim() == 3 else x[None]).to(self.dtype)
        y3 = (y if y.dim() == 3 else y[None]).to(self.dtype)
        self.batch = max(x3.shape[0], y3.shape[0])
        self.x, self.y = x3, y3
        self.n, self.m, self.d = x3.shape[1], y3.shape[1], x3.shape[2]
        self.cost = cost
        self.tile_bytes = tile_bytes
        self._check_callable()
        self.backend = self._choose(backend)
        # the named costs fuse into one matrix product per tile: logits = a'_i + b'_j + k <u_i, v_j>
        if cost == "sqeuclidean":
            self._u, self._v, self._scale = x3, y3, 2.0
            self._row_sq, self._col_sq = (x3 * x3).sum(-1), (y3 * y3).sum(-1)
        elif cost == "cosine":
            self._u = torch.nn.functional.normalize(x3, dim=-1, eps=1e-12)
            self._v = torch.nn.functional.normalize(y3, dim=-1, eps=1e-12)
            self._scale = 1.0
        elif cost == "neg_dot":
            self._u, self._v, self._scale = x3, y3, 1.0
        self._dense: Optional[torch.Tensor] = None

    # -- validation and backend ---------------------------------------------------------------
    def _check_callable(self) -> None:
        if isinstance(self.cost, str):
            return
        k = min(self.n, 3), min(self.m, 3)
        with torch.no_grad():
            out = self.cost(self.x[:, : k[0]], self.y[:, : k[1]])
        want = (self.batch, k[0], k[1])
        if not isinstance(out, torch.Tensor) or (tuple(out.shape) != want and tuple(out.shape) != (1,) + want[1:]):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"cost callable returned {shape} for blocks x {tuple(self.x[:, :k[0]].shape)}, y "
                f"{tuple(self.y[:, :k[1]].shape)}; expected a tensor of shape {want} (one cost per pair)"
            )
        if not bool(torch.isfinite(out).all()):
            raise ValueError("cost callable returned non-finite values; expected finite costs")

    def _choose(self, backend: str) -> str:
        if backend == "keops":
            from . import keops

            keops.require()
            if not isinstance(self.cost, str):
                raise ValueError(
                    "backend='keops' needs a named cost (KeOps compiles formulas): cost='sqeuclidean', "
                    "'cosine' or 'neg_dot'; a callable cost runs on backend='online'"
                )
        if backend != "auto":
            return backend
        size = self.batch * self.n * self.m * (torch.finfo(self.dtype).bits // 8)
        return "tensorized" if size <= memory_budget(self.device) else "online"

    @property
    def is_dense(self) -> bool:  # type: ignore[override]
        return self.backend == "tensorized"

    @property
    def reductions(self):
        if self.backend == "keops":
            from . import keops

            return keops
        return super().reductions

    # -- costs ------------------------------------------------------------------------------------
    def cost_tile(self, rows: slice, cols: slice) -> torch.Tensor:
        xs, ys = self.x[:, rows], self.y[:, cols]
        if xs.shape[0] != ys.shape[0]:  # a 2-D cloud shared by the batch of the other
            B = max(xs.shape[0], ys.shape[0])
            xs, ys = xs.expand(B, -1, -1), ys.expand(B, -1, -1)
        if self.cost == "sqeuclidean":
            return _costs.sqeuclidean(xs, ys)
        if self.cost == "cosine":
            u, v = self._u[:, rows], self._v[:, cols]
            return 1.0 - u.expand(xs.shape[0], -1, -1) @ v.expand(xs.shape[0], -1, -1).transpose(1, 2)
        if self.cost == "neg_dot":
            return -(xs @ ys.transpose(1, 2))
        out = self.cost(xs, ys)
        if out.dim() == 2:
            out = out[None]
        return out.to(self.dtype)

    def dense(self) -> torch.Tensor:
        """The ``(B', n, m)`` cost (built once for the tensorized backend; a lazy backend builds it
        on every call: mind the memory)."""
        if self.backend == "tensorized":
            if self._dense is None or (torch.is_grad_enabled() and not self._dense.requires_grad
                                       and (self.x.requires_grad or self.y.requires_grad)):
                self._dense = self._checked(self.cost_tile(slice(0, self.n), slice(0, self.m)))
            return self._dense
        return self.cost_tile(slice(0, self.n), slice(0, self.m))

    def _checked(self, cost: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(cost.detach()).all()):
            raise ValueError("the point cloud's cost has non-finite values; expected finite costs")
        return cost

    def tile_logits(self, rows: slice, cols: slice, eps: float, alpha: torch.Tensor, beta: torch.Tensor,
                    terms: PairTerms, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(self.cost, str):
            return super().tile_logits(rows, cols, eps, alpha, beta, terms, out)
        # logits = a'_i + b'_j + (scale / eps) <u_i, v_j>: one batched matrix product
        a, b = alpha, beta
        if self.cost == "sqeuclidean":
            a = a - self._row_sq[:, rows] / eps
            b = b - self._col_sq[:, cols] / eps
        elif self.cost == "cosine":
            a = a - 1.0 / eps
        u, v = self._u[:, rows], self._v[:, cols].transpose(1, 2)
        B = b.shape[0]
        if u.shape[0] != B:  # one cloud pair shared by a batch of duals
            u, v = u.expand(B, -1, -1), v.expand(B, -1, -1)
        if out is None:
            logits = torch.baddbmm(b[:, None, :], u, v, alpha=self._scale / eps) + a[:, :, None]
            return apply_pair_terms(logits, rows, cols, eps, terms)
        torch.baddbmm(b[:, None, :], u, v, alpha=self._scale / eps, out=out)
        out.add_(a[:, :, None])
        return apply_pair_terms(out, rows, cols, eps, terms, inplace=True)

    def extent(self) -> tuple[float, float]:
        with torch.no_grad():
            if self.cost == "cosine":
                return 2.0, 2.0
            rx = float(self.x.detach().norm(dim=-1).amax())
            ry = float(self.y.detach().norm(dim=-1).amax())
            if self.cost == "sqeuclidean":
                bound = (rx + ry) ** 2
                return bound, bound
            if self.cost == "neg_dot":
                return rx * ry, 2 * rx * ry
            from . import streaming

            return streaming.cost_extent(self)

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [("x", self.source_x), ("y", self.source_y)]

    def __repr__(self) -> str:
        batch = f"B={self.batch}, " if self.batch > 1 else ""
        name = self.cost if isinstance(self.cost, str) else getattr(self.cost, "__name__", "callable")
        return f"PointCloud({batch}n={self.n}, m={self.m}, d={self.d}, cost={name!r}, backend={self.backend!r})"
