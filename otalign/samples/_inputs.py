"""Point clouds and weights at the front door: NumPy or torch, batched or ragged (lists)."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from ..geometry.pointcloud import pad_clouds

__all__ = ["Clouds", "as_clouds", "pad_weights", "check_epsilon", "default_tol"]


class Clouds:
    """A cloud ``(n, d)`` / ``(B, n, d)`` or a padded ragged batch, with its validity mask."""

    def __init__(self, value: Any, name: str) -> None:
        self.name = name
        self.points, self.valid, self.numpy = pad_clouds(value, name)
        self.ragged = self.valid is not None
        self.batch = self.points.shape[0] if self.points.dim() == 3 else None
        self.n = self.points.shape[-2]
        self.d = self.points.shape[-1]


def as_clouds(value: Any, name: str) -> Clouds:
    return Clouds(value, name)


def pad_weights(weights: Any, clouds: Clouds, name: str) -> Optional[torch.Tensor]:
    """Weights for ``clouds``: None (uniform over the real points), ``(n,)``, ``(B, n)``, or for a
    ragged batch a list of ``(n_k,)`` (padded with zeros). Non-negative and finite, else
    ``ValueError`` naming ``name``."""
    if weights is None:
        return None
    like = clouds.points
    if isinstance(weights, (list, tuple)) and clouds.ragged:
        if len(weights) != like.shape[0]:
            raise ValueError(f"{name} is a list of {len(weights)} weight vectors; expected {like.shape[0]}, one per "
                             f"cloud of {clouds.name}")
        rows = []
        for k, w in enumerate(weights):
            t = _tensor(w, f"{name}[{k}]", like)
            size = int(clouds.valid[k].sum())
            if t.dim() != 1 or t.shape[0] != size:
                raise ValueError(f"{name}[{k}] has shape {tuple(t.shape)}; expected ({size},) to match {clouds.name}[{k}]")
            rows.append(torch.nn.functional.pad(t, (0, clouds.n - size)))
        out = torch.stack(rows)
    else:
        out = _tensor(weights, name, like)
        want = f"({clouds.n},)" + (f" or ({clouds.batch}, {clouds.n})" if clouds.batch else "")
        if out.dim() not in (1, 2) or out.shape[-1] != clouds.n or (
                out.dim() == 2 and clouds.batch is not None and out.shape[0] not in (1, clouds.batch)):
            raise ValueError(f"{name} has shape {tuple(out.shape)}; expected {want} to match the points of {clouds.name}")
        if clouds.ragged and bool((out.detach() * (~clouds.valid).to(out.dtype)).abs().sum() > 0):
            raise ValueError(f"{name} has non-zero weights on the padding of the ragged {clouds.name}; expected zeros there "
                             "(or pass a list of per-cloud weights)")
    d = out.detach()
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        bad = float(d[~torch.isfinite(d) | (d < 0)].reshape(-1)[0])
        raise ValueError(f"{name} has an entry {bad}; expected finite non-negative weights")
    return out


def _tensor(value: Any, name: str, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}={value!r}; expected a tensor or array of weights") from exc
    if not value.is_floating_point():
        value = value.to(like.dtype)
    return value.to(device=like.device)


def check_epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, torch.Tensor) and epsilon.numel() == 1 and not epsilon.requires_grad:
        epsilon = epsilon.item()
    if isinstance(epsilon, (bool, np.bool_)) or not isinstance(epsilon, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(epsilon)) or float(epsilon) <= 0:
        raise ValueError(f"epsilon={epsilon!r}; expected a finite number > 0")
    return float(epsilon)


def default_tol(dtype: torch.dtype) -> float:
    """Stopping tolerance (L1 marginal error) chosen by the compute dtype."""
    return 1e-10 if dtype == torch.float64 else 1e-5
