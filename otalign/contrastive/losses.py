"""``nn.Module`` losses: :class:`GCALoss` and its presets (thin configurations of it).

=============  ==============  ===============================  ======================
preset         target          constraints (plan)               divergence
=============  ==============  ===============================  ======================
InfoNCE        PairedViews     none (n_iter = 0: one row step)  KL
RINCE          PairedViews     none (n_iter = 0)                Robust(q, lam)
GCAInfoNCE     PairedViews     unit marginals, n_iter sweeps    KL
GCARINCE       PairedViews     unit marginals, n_iter sweeps    Robust(q, lam)
GCAUOT         PairedViews     KL(rho)-relaxed unit marginals   r1 KL + r2 Robust(q, lam)
=============  ==============  ===============================  ======================

Every module is called as ``loss(z_a, z_b)`` with two views ``(B, D)`` (plus ``domains=`` or
``labels=`` for the targets that need them) and returns a 0-dim tensor; nothing about the batch
size or the world size is fixed at construction.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from .distributed import gather, gather_no_grad
from .divergences import KL, Divergence, Robust
from .functional import LAYOUTS, ConstraintSpec, LossComponents, contrastive_loss, unit_marginals
from .targets import PairedViews, Target

__all__ = ["GCALoss", "InfoNCE", "RINCE", "GCAInfoNCE", "GCARINCE", "GCAUOT"]


def _check_views(z_a: Any, z_b: Any) -> None:
    for name, z in (("z_a", z_a), ("z_b", z_b)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.is_floating_point():
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name} is {shape}; expected a float tensor of shape (B, D)")
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a has shape {tuple(z_a.shape)} but z_b has {tuple(z_b.shape)}; expected equal shapes (B, D)")
    if z_a.shape[0] < 1:
        raise ValueError("the batch is empty; expected B >= 1")


class GCALoss(nn.Module):
    """Generalised contrastive alignment: ``mean_i D(T_i || plan_i)``.

    Args:
        constraints: the constraint set of the plan: a :class:`~otalign.constraints.ConstraintSet`
            (used as is) or a factory ``f(n, *, device, dtype, domains, labels)`` returning one (for
            sizes known at call time). Default: unit marginals (:func:`unit_marginals`).
        target: a :class:`~otalign.contrastive.targets.Target` (default :class:`PairedViews`).
        divergence: a :class:`~otalign.contrastive.divergences.Divergence` (default :class:`KL`).
        epsilon: entropic strength of the plan = the temperature of the logits (> 0).
        n_iter: sweeps of the solver (0: InfoNCE's single row normalisation).
        layout: ``"joint"`` (``2B x 2B`` plan, self-pairs forbidden) or ``"cross"`` (``B x B``).
        gather_distributed: under ``torch.distributed``, gather the views of all ranks
            (autograd-aware) and compute the loss of the global batch on every rank.
        detach_scalings: treat the plan's scalings as constants in the backward pass (gradients
            flow only through the kernel); default False (unrolled through the iterations).
    """

    def __init__(
        self,
        constraints: ConstraintSpec = None,
        target: Optional[Target] = None,
        divergence: Optional[Divergence] = None,
        *,
        epsilon: float = 0.5,
        n_iter: int = 10,
        layout: str = "joint",
        gather_distributed: bool = False,
        detach_scalings: bool = False,
    ) -> None:
        super().__init__()
        if not (isinstance(epsilon, (int, float)) and epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(f"epsilon={epsilon!r}; expected a finite epsilon > 0 (the temperature)")
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
            raise ValueError(f"n_iter={n_iter!r}; expected an integer >= 0")
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
        target = PairedViews() if target is None else target
        divergence = KL() if divergence is None else divergence
        if not isinstance(target, Target):
            raise ValueError(f"target={target!r}; expected a Target (PairedViews, DomainTarget, LabelTarget, CustomTarget)")
        if not isinstance(divergence, Divergence):
            raise ValueError(f"divergence={divergence!r}; expected a Divergence (KL, Robust or a weighted sum)")
        if gather_distributed and not torch.distributed.is_available():
            raise ValueError("gather_distributed=True but torch.distributed is not available in this build")
        self.constraints = unit_marginals() if constraints is None else constraints
        self.target = target
        self.divergence = divergence
        self.epsilon = float(epsilon)
        self.n_iter = n_iter
        self.layout = layout
        self.gather_distributed = gather_distributed
        self.detach_scalings = detach_scalings

    def forward_components(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        domains: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        diagnostics: bool = True,
    ) -> LossComponents:
        """The loss with its terms, the plan's marginal error and entropy (for logging)."""
        _check_views(z_a, z_b)
        if self.gather_distributed:
            z_a, z_b = gather(z_a), gather(z_b)
            domains, labels = gather_no_grad(domains), gather_no_grad(labels)
        return contrastive_loss(
            z_a, z_b, epsilon=self.epsilon, n_iter=self.n_iter, divergence=self.divergence, target=self.target,
            constraints=self.constraints, layout=self.layout, domains=domains, labels=labels,
            detach_scalings=self.detach_scalings, diagnostics=diagnostics,
        )

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        domains: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Two views ``(B, D)`` -> 0-dim loss."""
        return self.forward_components(z_a, z_b, domains=domains, labels=labels, diagnostics=False).loss

    def extra_repr(self) -> str:
        return (f"epsilon={self.epsilon}, n_iter={self.n_iter}, target={self.target!r}, "
                f"divergence={self.divergence!r}, layout={self.layout!r}")


class InfoNCE(GCALoss):
    """SimCLR's NT-Xent: one row normalisation of the kernel toward the paired-views target.

    Equals NT-Xent at temperature = ``epsilon`` exactly.
    """

    def __init__(self, epsilon: float = 0.5, **kwargs: Any) -> None:
        super().__init__(divergence=KL(), epsilon=epsilon, n_iter=0, **kwargs)


class RINCE(GCALoss):
    """Robust InfoNCE (Chuang et al. 2022): ``-(K_it)^q / q + (lam sum_j K_ij)^q / q``."""

    def __init__(self, epsilon: float = 0.5, q: float = 0.6, lam: float = 0.01, **kwargs: Any) -> None:
        super().__init__(divergence=Robust(q, lam), epsilon=epsilon, n_iter=0, **kwargs)


class GCAInfoNCE(GCALoss):
    """GCA-INCE: the InfoNCE term after ``n_iter`` balanced Sinkhorn sweeps (unit marginals)."""

    def __init__(self, epsilon: float = 0.5, n_iter: int = 10, **kwargs: Any) -> None:
        super().__init__(unit_marginals(), divergence=KL(), epsilon=epsilon, n_iter=n_iter, **kwargs)


class GCARINCE(GCALoss):
    """GCA-RINCE: the RINCE term after ``n_iter`` balanced Sinkhorn sweeps."""

    def __init__(self, epsilon: float = 0.5, n_iter: int = 10, q: float = 0.6, lam: float = 0.01, **kwargs: Any) -> None:
        super().__init__(unit_marginals(), divergence=Robust(q, lam), epsilon=epsilon, n_iter=n_iter, **kwargs)


class GCAUOT(GCALoss):
    """GCA-UOT: ``r1 KL + r2 Robust(q, lam)`` after ``n_iter`` KL-relaxed sweeps (strength ``rho``,
    a number or a pair). ``rho -> inf`` gives ``r1 GCAInfoNCE + r2 GCARINCE``; ``rho -> 0`` gives
    ``r1 InfoNCE + r2 RINCE``."""

    def __init__(
        self,
        epsilon: float = 0.5,
        n_iter: int = 10,
        rho: Any = 0.2,
        lam: float = 0.01,
        q: float = 0.6,
        r1: float = 1.0,
        r2: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(unit_marginals(rho), divergence=KL() * r1 + Robust(q, lam) * r2,
                         epsilon=epsilon, n_iter=n_iter, **kwargs)
