"""Problem description shared by the projectors: sizes, batch, compute dtype, device.

Also the helpers projectors use to bring their data (weights, masks, groups) to the problem's
shape, dtype and device, raising ``ValueError`` that names the field on any mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = ["Problem", "compute_dtype", "safe_log"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def safe_log(x: torch.Tensor) -> torch.Tensor:
    """``log x`` with ``log 0 = -inf`` and a zero (not NaN) gradient where ``x == 0``."""
    positive = x > 0
    return torch.where(positive, torch.log(torch.where(positive, x, torch.ones_like(x))), -torch.inf)


@dataclass(frozen=True)
class Problem:
    """Sizes of a (batched) problem: ``batch`` problems with plans of shape ``(n, m)``."""

    n: int
    m: int
    batch: int
    dtype: torch.dtype  # compute dtype
    device: torch.device
    entropy: str

    def size(self, axis: int) -> int:
        return self.n if axis == 0 else self.m

    def vector(self, value: Optional[torch.Tensor], axis: int, field: str) -> torch.Tensor:
        """Per-row (axis 0) or per-column (axis 1) data as ``(B', size)``, ``B'`` in ``{1, B}``.

        ``None`` gives uniform weights ``1/size``.
        """
        size = self.size(axis)
        if value is None:
            return torch.full((1, size), 1.0 / size, dtype=self.dtype, device=self.device)
        t = value.to(device=self.device, dtype=self.dtype)
        if t.dim() == 1:
            t = t[None]
        what = "rows" if axis == 0 else "columns"
        if t.shape[-1] != size:
            raise ValueError(
                f"{field} has shape {tuple(value.shape)}; expected ({size},) or (B, {size}) to "
                f"match the {size} {what} of the cost"
            )
        self.check_batch(t.shape[0], field, value.shape)
        return t

    def check_batch(self, batch: int, field: str, shape: Any) -> None:
        if batch not in (1, self.batch):
            raise ValueError(
                f"{field} has shape {tuple(shape)}, a batch of {batch}; expected a batch of "
                f"{self.batch} (or none) to match the cost"
            )
