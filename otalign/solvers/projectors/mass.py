"""Total mass ``sum_ij P_ij == mass``: one scalar dual per problem, added to every entry.

Update: the exact KL projection ``h <- h + eps * (log mass - log sum(P))``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...constraints.types import TotalMass
from ..footprint import SCALAR
from ..problem import Problem
from ..registry import Projector, kl_step, register

__all__ = ["TotalMassProjector"]


@register(TotalMass)
class TotalMassProjector(Projector):
    footprint = SCALAR
    hard = True
    relaxable = True

    def __init__(self, constraint: TotalMass, problem: Problem) -> None:
        super().__init__(constraint, problem)
        mass = constraint.mass
        if isinstance(mass, torch.Tensor):
            mass = problem.to_compute(mass, "TotalMass.mass").reshape(-1)
        else:
            mass = problem.to_compute(torch.tensor([mass], dtype=torch.float64), "TotalMass.mass")
        problem.check_batch(mass.shape[0], "TotalMass.mass", tuple(mass.shape))
        self.mass = mass
        self.log_mass = torch.log(mass)

    @classmethod
    def batch_size(cls, constraint: TotalMass) -> Optional[int]:
        mass = constraint.mass
        return mass.shape[0] if isinstance(mass, torch.Tensor) and mass.dim() == 1 else None

    def init_dual(self) -> torch.Tensor:
        return torch.zeros(self.problem.batch, dtype=self.problem.dtype, device=self.problem.device)

    def update(self, dual: torch.Tensor, log_marginal: torch.Tensor, eps: float) -> torch.Tensor:
        return kl_step(dual, self.log_mass, log_marginal, eps)

    def violation(self, log_marginal: torch.Tensor) -> torch.Tensor:
        return (torch.exp(log_marginal) - self.mass).abs()

    def gap(self, dual: torch.Tensor, log_marginal: torch.Tensor) -> torch.Tensor:
        return dual * (torch.exp(log_marginal) - self.mass)

    def dual_objective(self, dual: torch.Tensor) -> torch.Tensor:
        return self.mass * dual
