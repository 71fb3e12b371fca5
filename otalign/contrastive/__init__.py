"""Contrastive losses as distribution alignment (``from otalign import contrastive as cl``).

>>> loss_fn = cl.GCAUOT(epsilon=0.5, n_iter=10, rho=0.2, lam=0.01, q=0.6)
>>> loss = loss_fn(z_a, z_b)            # two views (B, D) -> 0-dim tensor
"""

from . import functional
from .distributed import gather
from .divergences import KL, Divergence, Robust, WeightedSum
from .functional import LossComponents, contrastive_loss, plan_logits, unit_marginals, views_cost
from .losses import GCAUOT, GCARINCE, RINCE, GCAInfoNCE, GCALoss, InfoNCE
from .targets import CustomTarget, DomainTarget, LabelTarget, PairedViews, Target

__all__ = [
    "functional",
    "GCALoss",
    "InfoNCE",
    "RINCE",
    "GCAInfoNCE",
    "GCARINCE",
    "GCAUOT",
    "Target",
    "PairedViews",
    "DomainTarget",
    "LabelTarget",
    "CustomTarget",
    "Divergence",
    "KL",
    "Robust",
    "WeightedSum",
    "LossComponents",
    "contrastive_loss",
    "plan_logits",
    "unit_marginals",
    "views_cost",
    "gather",
]
