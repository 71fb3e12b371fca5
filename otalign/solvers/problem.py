"""Problem description shared by the projectors: sizes, batch, compute dtype, device.

Also the helpers projectors use to bring their data (weights, masks, groups) to the problem's
shape, dtype and device, raising ``ValueError`` that names the field on any mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..geometry.dense import compute_dtype

__all__ = ["Problem", "compute_dtype", "safe_log", "safe_logsumexp"]


def safe_log(x: torch.Tensor) -> torch.Tensor:
    """``log x`` (``x >= 0``) with ``log 0 = -inf`` and a zero (not NaN) gradient where ``x == 0``."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return torch.log(x)  # no gradient to guard: log 0 is -inf already
    positive = x > 0
    return torch.where(positive, torch.log(torch.where(positive, x, torch.ones_like(x))), -torch.inf)


def safe_logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` along ``dim`` that is ``-inf`` with a zero (not NaN) gradient where every
    entry is ``-inf`` (a problem or a row of zero mass)."""
    shift = x.detach().amax(dim, keepdim=True)
    empty = shift == -torch.inf
    shift = torch.where(empty, torch.zeros_like(shift), shift)
    total = torch.exp(x - shift).sum(dim, keepdim=True)
    out = torch.log(torch.where(empty, torch.ones_like(total), total)) + shift
    return torch.where(empty, torch.full_like(out, -torch.inf), out).squeeze(dim)


@dataclass(frozen=True)
class Problem:
    """Sizes of a (batched) problem: ``batch`` problems with plans of shape ``(n, m)``."""

    n: int
    m: int
    batch: int
    dtype: torch.dtype  # compute dtype
    device: torch.device
    entropy: str
    dense: bool = True  # the geometry holds its cost (pair masks are allowed)
    valid_rows: Optional[torch.Tensor] = None  # (B', n) bool: real rows of a ragged batch
    valid_cols: Optional[torch.Tensor] = None
    rows_total: Optional[int] = None  # row-sharded solve: rows over every rank (uniform weights 1/rows_total)

    def size(self, axis: int) -> int:
        return self.n if axis == 0 else self.m

    def vector(self, value: Optional[torch.Tensor], axis: int, field: str) -> torch.Tensor:
        """Per-row (axis 0) or per-column (axis 1) data as ``(B', size)``, ``B'`` in ``{1, B}``.

        ``None`` gives uniform weights: ``1/size``, or ``1/count`` over the real points of a ragged
        batch (0 on padding); rows of a row-sharded solve get ``1/rows_total`` (the global count).
        """
        size = self.size(axis)
        if value is None:
            valid = self.valid_rows if axis == 0 else self.valid_cols
            if valid is None:
                total = self.rows_total if axis == 0 and self.rows_total is not None else size
                return torch.full((1, size), 1.0 / total, dtype=self.dtype, device=self.device)
            count = valid.sum(-1, keepdim=True).clamp(min=1).to(self.dtype)
            return valid.to(self.dtype) / count
        t = self.to_compute(value, field)
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

    def to_compute(self, value: torch.Tensor, field: str) -> torch.Tensor:
        """``value`` on the problem's device in its compute dtype; ``ValueError`` if the dtype
        cannot represent it (overflow to inf, or positive entries that underflow to 0)."""
        t = value.to(device=self.device, dtype=self.dtype)
        if t.dtype != value.dtype and t.is_floating_point():
            d = t.detach()
            if not bool(torch.isfinite(d).all()):
                big = float(value.detach().abs().max())
                raise ValueError(
                    f"{field} has entries up to {big:.3g}, beyond the range of the problem's compute "
                    f"dtype {self.dtype} (max {torch.finfo(self.dtype).max:.3g}); expected values it can "
                    "represent (rescale them, or solve in float64)"
                )
            lost = (d == 0) & (value.detach().to(d.device) != 0)
            if bool(lost.any()):
                raise ValueError(
                    f"{field} has non-zero entries below the smallest {self.dtype} "
                    f"({torch.finfo(self.dtype).tiny:.3g}) that would become 0; expected values it can "
                    "represent (rescale them, or solve in float64)"
                )
        return t

    def check_batch(self, batch: int, field: str, shape: Any) -> None:
        if batch not in (1, self.batch):
            raise ValueError(
                f"{field} has shape {tuple(shape)}, a batch of {batch}; expected a batch of "
                f"{self.batch} (or none) to match the cost"
            )
