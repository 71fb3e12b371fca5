"""Forbidden pairs: ``-inf`` in the log-kernel, so the plan is exactly zero there. No dual."""

from __future__ import annotations

from typing import Optional

import torch

from ...constraints.types import Forbid
from ..problem import Problem
from ..registry import Projector, Support, register

__all__ = ["ForbidProjector"]


@register(Forbid)
class ForbidProjector(Projector):
    footprint = None
    hard = False

    def __init__(self, constraint: Forbid, problem: Problem) -> None:
        super().__init__(constraint, problem)
        n, m = problem.n, problem.m
        if isinstance(constraint.mask, str):  # "diagonal"
            forbidden = torch.eye(n, m, dtype=torch.bool, device=problem.device)[None]
        else:
            forbidden = constraint.mask.to(problem.device)
            if forbidden.dim() == 2:
                forbidden = forbidden[None]
            if forbidden.shape[-2:] != (n, m):
                raise ValueError(
                    f"Forbid.mask has shape {tuple(constraint.mask.shape)}; expected ({n}, {m}) "
                    f"or (B, {n}, {m}) to match the cost"
                )
            problem.check_batch(forbidden.shape[0], "Forbid.mask", tuple(constraint.mask.shape))
        self.forbidden = forbidden

    @classmethod
    def batch_size(cls, constraint: Forbid) -> Optional[int]:
        mask = constraint.mask
        return mask.shape[0] if isinstance(mask, torch.Tensor) and mask.dim() == 3 else None

    def support(self) -> Support:
        return Support(pairs=~self.forbidden)
