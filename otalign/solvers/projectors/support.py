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
        self.forbidden: Optional[torch.Tensor] = None  # (B', n, m) bool, True = forbidden
        self.labels: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        if isinstance(constraint.mask, str):  # "diagonal"
            if problem.dense:
                self.forbidden = torch.eye(n, m, dtype=torch.bool, device=problem.device)[None]
            else:
                self.labels = (torch.arange(n, device=problem.device)[None], torch.arange(m, device=problem.device)[None])
        elif constraint.mask is not None:
            if not problem.dense:
                raise ValueError(
                    "Forbid.mask is a pair mask (n, m), which needs a dense geometry (a cost tensor or "
                    "PointCloud(..., backend='tensorized')); on a lazy geometry forbid pairs by groups: "
                    "Forbid(row_groups=..., col_groups=...)"
                )
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
        else:
            labels = []
            for axis, field, value in ((0, "row_groups", constraint.row_groups), (1, "col_groups", constraint.col_groups)):
                t = value.to(problem.device)
                t = t[None] if t.dim() == 1 else t
                size = problem.size(axis)
                if t.shape[-1] != size:
                    raise ValueError(
                        f"Forbid.{field} has shape {tuple(value.shape)}; expected ({size},) or (B, {size}) "
                        "to match the cost"
                    )
                problem.check_batch(t.shape[0], f"Forbid.{field}", tuple(value.shape))
                labels.append(t)
            self.labels = (labels[0], labels[1])

    @classmethod
    def batch_size(cls, constraint: Forbid) -> Optional[int]:
        for value, dims in ((constraint.mask, 3), (constraint.row_groups, 2), (constraint.col_groups, 2)):
            if isinstance(value, torch.Tensor) and value.dim() == dims:
                return value.shape[0]
        return None

    def support(self) -> Support:
        if self.forbidden is not None:
            return Support(pairs=~self.forbidden)
        return Support(forbid_labels=self.labels)
