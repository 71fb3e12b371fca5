"""``Dense(cost)``: a cost matrix held as a tensor (what a tensor passed to ``ota.solve`` becomes).

The solver runs its fastest path on it: log-sum-exps inside one reusable ``(B, n, m)`` buffer,
and the stabilised kernel domain (mat-vec products, no exp per entry) whenever it is exact
(:mod:`otalign.solvers.plan`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Geometry

__all__ = ["Dense", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Dense(Geometry):
    """A batch of cost matrices ``(n, m)`` or ``(B, n, m)``, any float dtype, any device.

    Finite costs are required (forbid pairs with ``C.Forbid`` instead of infinite costs);
    ``ValueError`` names the problem otherwise.
    """

    is_dense = True

    def __init__(self, cost: Any) -> None:
        if not isinstance(cost, torch.Tensor):
            raise ValueError(
                f"cost is a {type(cost).__name__}; expected a torch.Tensor of shape (n, m) or (B, n, m)"
            )
        if not cost.is_floating_point():
            raise ValueError(f"cost has dtype {cost.dtype}; expected a floating-point tensor")
        if cost.dim() not in (2, 3) or cost.shape[-1] == 0 or cost.shape[-2] == 0 or cost.numel() == 0:
            raise ValueError(f"cost has shape {tuple(cost.shape)}; expected (n, m) or (B, n, m) with n, m >= 1")
        # one pass: the extremes are finite iff every entry is (NaN propagates through min and max)
        low, high = torch.aminmax(cost.detach())
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = int((~torch.isfinite(cost.detach())).sum())
            raise ValueError(
                f"cost has {bad} non-finite entries (NaN or inf); expected finite costs "
                "(forbid pairs with C.Forbid(mask=...) instead of infinite costs)"
            )
        self.source = cost
        self.batched_input = cost.dim() == 3
        self.dtype = compute_dtype(cost.dtype)
        self.out_dtype = cost.dtype
        self.device = cost.device
        self.cost = (cost if cost.dim() == 3 else cost[None]).to(self.dtype)
        self.batch, self.n, self.m = self.cost.shape
        self._magnitude = max(abs(low), abs(high))
        # the largest range of one problem's costs (one problem: known from the extremes)
        self._spread: float | None = high - low if self.batch == 1 else None

    def cost_tile(self, rows: slice, cols: slice) -> torch.Tensor:
        return self.cost[:, rows, cols]

    def dense(self) -> torch.Tensor:
        return self.cost

    def extent(self) -> tuple[float, float]:
        if self._spread is None:
            with torch.no_grad():
                flat = self.cost.detach().flatten(1)
                self._spread = float((flat.amax(1) - flat.amin(1)).amax())
        return self._magnitude, self._spread

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [("cost", self.source)]
