"""Ground costs between point clouds, differentiable, without an ``(n, m, d)`` intermediate.

Inputs ``x`` of shape ``(n, d)`` or ``(B, n, d)`` and ``y`` of shape ``(m, d)`` or ``(B, m, d)``
(a 2-D input is broadcast over the other's batch); the output is ``(n, m)`` or ``(B, n, m)``.
Every cost is one matrix product plus row/column terms.
"""

from __future__ import annotations

import torch

__all__ = ["sqeuclidean", "cosine", "neg_dot"]


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3) or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} is {shape}; expected a float tensor of shape (n, d) or (B, n, d)")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x has dimension {x.shape[-1]} but y has {y.shape[-1]}; expected equal point dimensions")
    if x.dim() == 3 and y.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"x has batch {x.shape[0]} but y has batch {y.shape[0]}; expected equal batches")


def neg_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``C_ij = -<x_i, y_j>``."""
    _check(x, y)
    return -(x @ y.transpose(-1, -2))


def sqeuclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``C_ij = ||x_i - y_j||^2`` (not halved; GeomLoss's ``p=2`` cost is half of this).

    Computed as ``|x|^2 + |y|^2 - 2 <x, y>`` and clamped at 0 against rounding.
    """
    _check(x, y)
    xx = (x * x).sum(-1)[..., :, None]
    yy = (y * y).sum(-1)[..., None, :]
    return torch.clamp(xx + yy - 2 * (x @ y.transpose(-1, -2)), min=0.0)


def cosine(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``C_ij = 1 - cos(x_i, y_j)`` in ``[0, 2]`` (rows normalised with ``eps`` against zero norms)."""
    _check(x, y)
    xn = torch.nn.functional.normalize(x, dim=-1, eps=eps)
    yn = torch.nn.functional.normalize(y, dim=-1, eps=eps)
    return 1.0 - xn @ yn.transpose(-1, -2)
