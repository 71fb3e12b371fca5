"""Block masses between groups of rows and groups of columns (domain-constrained transport).

The dual ``H`` (``(B, Gr, Gc)``, cost units) is added to every entry of its block; the update is
the KL projection of the block sums onto ``mass`` (``==``) or its Dykstra-clipped version
``min(H*, 0)`` for a cap (``<=``). A block with zero prescribed mass is forbidden outright.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...constraints.types import BlockMass
from ..footprint import Groups
from ..problem import Problem, safe_log
from ..registry import Projector, Support, kl_step, register

__all__ = ["BlockMassProjector"]


@register(BlockMass)
class BlockMassProjector(Projector):
    hard = True

    def __init__(self, constraint: BlockMass, problem: Problem) -> None:
        super().__init__(constraint, problem)
        mass = problem.to_compute(constraint.mass, "BlockMass.mass")
        if mass.dim() == 2:
            mass = mass[None]
        problem.check_batch(mass.shape[0], "BlockMass.mass", tuple(constraint.mass.shape))
        groups = []
        for axis, field, value in ((0, "row_groups", constraint.row_groups), (1, "col_groups", constraint.col_groups)):
            g = value.to(problem.device)
            g = g[None] if g.dim() == 1 else g
            size = problem.size(axis)
            if g.shape[-1] != size:
                raise ValueError(
                    f"BlockMass.{field} has shape {tuple(value.shape)}; expected ({size},) or "
                    f"(B, {size}) to match the cost"
                )
            problem.check_batch(g.shape[0], f"BlockMass.{field}", tuple(value.shape))
            groups.append(g)
        self.mass = mass
        self.log_mass = safe_log(mass)
        self.relation = constraint.relation
        self.needs_certificate = self.relation == "<="
        self.relaxable = self.relation == "=="
        self.footprint = Groups(groups[0], groups[1], mass.shape[-2], mass.shape[-1])

    @classmethod
    def batch_size(cls, constraint: BlockMass) -> Optional[int]:
        sizes = {constraint.mass.shape[0] if constraint.mass.dim() == 3 else None}
        for g in (constraint.row_groups, constraint.col_groups):
            sizes.add(g.shape[0] if g.dim() == 2 else None)
        sizes.discard(None)
        if len(sizes) > 1:
            raise ValueError(f"BlockMass fields have different batch sizes {sorted(sizes)}")
        return sizes.pop() if sizes else None

    def support(self) -> Support:
        """Blocks of zero mass are forbidden (ungrouped entries stay allowed)."""
        fp = self.footprint
        B = max(self.mass.shape[0], fp.row_groups.shape[0], fp.col_groups.shape[0])
        zero = (self.mass <= 0).to(self.mass.dtype).expand(B, -1, -1)
        if not bool(zero.any()):
            return Support()
        return Support(pairs=fp.expand(zero) == 0)

    def init_dual(self) -> torch.Tensor:
        fp = self.footprint
        return torch.zeros(
            self.problem.batch, fp.n_row_groups, fp.n_col_groups,
            dtype=self.problem.dtype, device=self.problem.device,
        )

    def update(self, dual: torch.Tensor, log_marginal: torch.Tensor, eps: float) -> torch.Tensor:
        step = kl_step(dual, self.log_mass, log_marginal, eps)
        return step if self.relation == "==" else torch.clamp(step, max=0.0)

    def violation(self, log_marginal: torch.Tensor) -> torch.Tensor:
        gap = torch.exp(log_marginal) - self.mass
        if self.relation == "<=":
            gap = torch.clamp(gap, min=0.0)
        return gap.abs().sum((-2, -1))

    def gap(self, dual: torch.Tensor, log_marginal: torch.Tensor) -> torch.Tensor:
        """``<H, M - mass>`` (``==``, signed) or ``|H| (mass - M)`` (``<=``, ``H <= 0``)."""
        return (dual * (torch.exp(log_marginal) - self.mass)).sum((-2, -1))

    def certificate(self, dual: torch.Tensor, log_marginal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A cap whose dual is negative (active) must be full: its shortfall is the residual."""
        shortfall = torch.clamp(self.mass - torch.exp(log_marginal), min=0.0)
        residual = torch.where(dual < 0, shortfall, torch.zeros_like(shortfall)).sum((-2, -1))
        return torch.zeros_like(residual), residual

    def dual_objective(self, dual: torch.Tensor) -> torch.Tensor:
        term = dual if self.relation == "==" else torch.clamp(dual, max=0.0)
        return (self.mass * term).sum((-2, -1))
