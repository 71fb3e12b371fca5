"""Solver layer: one batched log-domain engine; each constraint type has a registered update."""

from .api import GRAD_MODES, partial, sinkhorn, solve, unbalanced
from .footprint import COL, ROW, SCALAR, Footprint, Groups
from .problem import Problem, safe_log
from .registry import Projector, Support, kl_step, projector_for, register
from .result import OTResult

__all__ = [
    "solve",
    "sinkhorn",
    "unbalanced",
    "partial",
    "GRAD_MODES",
    "OTResult",
    "Projector",
    "Support",
    "register",
    "projector_for",
    "kl_step",
    "Problem",
    "safe_log",
    "Footprint",
    "ROW",
    "COL",
    "SCALAR",
    "Groups",
]
