"""Small convolutional encoder and MLP projection head for SimCLR-style pretraining.

The encoder maps a batch ``(B, *S)`` to features ``(B, embedding_dim)`` (what is evaluated,
frozen); the head maps features to projections ``(B, projection_dim)`` (what the loss sees).
2-D convolutions for images ``S = (C, H, W)``, 1-D convolutions for signals ``S = (C, L)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Standardize", "ConvEncoder", "ProjectionHead", "SimCLRModel", "build_model"]


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed scalars (the training split's statistics); any shape."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"std={std!r}; expected a finite positive number")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ConvEncoder(nn.Module):
    """Three conv-BN-ReLU blocks (the last two with stride 2), then Linear-BN-ReLU.

    Input ``(B, *sample_shape)``; output ``(B, embedding_dim)`` features (non-negative).
    Channels: ``width``, ``2 * width``, ``2 * width``; kernels 3 (images) or 5 (signals).
    """

    def __init__(
        self, sample_shape: tuple[int, ...], width: int, embedding_dim: int, mean: float, std: float
    ) -> None:
        super().__init__()
        if len(sample_shape) not in (2, 3):
            raise ValueError(f"sample_shape={sample_shape!r}; expected (C, L) or (C, H, W)")
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if len(sample_shape) == 3 else (nn.Conv1d, nn.BatchNorm1d)
        k = 3 if len(sample_shape) == 3 else 5
        channels, *spatial = sample_shape
        blocks: list[nn.Module] = [Standardize(mean, std)]
        for c_in, c_out, stride in ((channels, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 2)):
            blocks += [
                conv(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
                norm(c_out),
                nn.ReLU(),
            ]
        flat = 2 * width * math.prod(math.ceil(math.ceil(n / 2) / 2) for n in spatial)
        blocks += [
            nn.Flatten(),
            nn.Linear(flat, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
            nn.ReLU(),
        ]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """Linear-BN-ReLU-Linear: ``(B, embedding_dim)`` -> ``(B, projection_dim)``."""

    def __init__(self, embedding_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
            nn.ReLU(),
            nn.Linear(embedding_dim, projection_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class SimCLRModel(nn.Module):
    """Encoder plus projection head; ``forward(x)`` returns ``(h, z)``.

    ``x``: ``(B, *S)``; ``h``: ``(B, embedding_dim)`` features; ``z``: ``(B, projection_dim)``.
    """

    def __init__(self, encoder: ConvEncoder, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.head(h)


def build_model(
    sample_shape: tuple[int, ...],
    width: int,
    embedding_dim: int,
    projection_dim: int,
    mean: float,
    std: float,
) -> SimCLRModel:
    """A fresh :class:`SimCLRModel` (initialised from torch's global generator; seed it first)."""
    return SimCLRModel(
        ConvEncoder(sample_shape, width, embedding_dim, mean, std),
        ProjectionHead(embedding_dim, projection_dim),
    )
