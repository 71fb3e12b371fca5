"""Declarative constraints on transport plans (``from otalign import constraints as C``).

>>> cons = C.balanced(a, b) + [C.Forbid(mask="diagonal")]
>>> text = C.dumps(cons); C.parse(text) == cons
True
"""

from .base import Constraint, ConstraintSet, as_constraint_set
from .factories import balanced, partial, unbalanced
from .serialization import dumps, parse, to_dict
from .types import KL, TV, BlockMass, Forbid, Marginal, Penalty, TotalMass

__all__ = [
    "Constraint",
    "ConstraintSet",
    "as_constraint_set",
    "Marginal",
    "KL",
    "TV",
    "Penalty",
    "TotalMass",
    "Forbid",
    "BlockMass",
    "balanced",
    "unbalanced",
    "partial",
    "dumps",
    "parse",
    "to_dict",
]
