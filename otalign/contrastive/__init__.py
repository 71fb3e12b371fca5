"""Contrastive losses as distribution alignment (``from otalign import contrastive as cl``).

>>> loss_fn = cl.GCAUOT(epsilon=0.5, n_iter=10, rho=0.2, lam=0.01, q=0.6)
>>> loss = loss_fn(z_a, z_b)            # two views (B, D) -> 0-dim tensor
"""

from . import costs, functional
from .costs import COST_PRESETS
from .distributed import gather
from .divergences import KL, Divergence, PlanView, Robust, Term, Uniformity, WeightedSum
from .functional import LossComponents, contrastive_loss, learned_plan, plan_logits, unit_marginals, views_cost
from .losses import DEFAULT_ROBUST, GCAUOT, GCARINCE, IOT, RINCE, GCAInfoNCE, GCALoss, InfoNCE, IOTUni
from .targets import CustomTarget, DomainTarget, LabelTarget, PairedViews, Target

__all__ = [
    "functional",
    "costs",
    "GCALoss",
    "InfoNCE",
    "RINCE",
    "GCAInfoNCE",
    "GCARINCE",
    "GCAUOT",
    "IOT",
    "IOTUni",
    "DEFAULT_ROBUST",
    "Target",
    "PairedViews",
    "DomainTarget",
    "LabelTarget",
    "CustomTarget",
    "Divergence",
    "KL",
    "Robust",
    "Uniformity",
    "WeightedSum",
    "PlanView",
    "Term",
    "COST_PRESETS",
    "LossComponents",
    "contrastive_loss",
    "learned_plan",
    "plan_logits",
    "unit_marginals",
    "views_cost",
    "gather",
]
