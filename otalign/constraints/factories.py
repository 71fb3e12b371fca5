"""Factories for the common constraint sets (balanced, unbalanced, semi-relaxed, partial)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import torch

from .base import ConstraintSet
from .coerce import short_repr
from .types import KL, Marginal, TotalMass, check_rho

__all__ = ["balanced", "unbalanced", "partial"]

Weights = Optional[Union[torch.Tensor, Sequence[float], Any]]


def balanced(a: Weights = None, b: Weights = None) -> ConstraintSet:
    """Hard marginals: rows sum to ``a``, columns to ``b`` (``None``: uniform).

    Returns ``[Marginal(0, a), Marginal(1, b)]``.
    """
    return ConstraintSet([Marginal(axis=0, weights=a), Marginal(axis=1, weights=b)])


def _rho_pair(rho: Any) -> tuple[float, float]:
    """``(rho_a, rho_b)`` from a number (both sides), a one-element list/tuple/array/tensor
    (both sides) or a two-element one; each entry is checked by :func:`check_rho` (strings,
    bytes, booleans, NaN and values <= 0 are rejected)."""
    if isinstance(rho, (torch.Tensor, np.ndarray)) and rho.ndim == 1:
        items = list(rho)  # 0-dim tensors / NumPy scalars
    elif isinstance(rho, (list, tuple)):
        items = list(rho)
    else:
        items = [rho]
    if len(items) not in (1, 2):
        raise ValueError(
            f"rho={short_repr(rho)} has {len(items)} entries; expected a number or a pair (rho_a, rho_b)"
        )
    if len(items) == 1:
        value = check_rho(items[0], "rho")
        return value, value
    return check_rho(items[0], "rho[0]"), check_rho(items[1], "rho[1]")


def unbalanced(rho: Union[float, Sequence[float]], a: Weights = None, b: Weights = None) -> ConstraintSet:
    """KL-relaxed marginals: ``rho_a KL(P 1 || a) + rho_b KL(P^T 1 || b)`` in the objective.

    ``rho`` is a number (both sides) or a pair ``(rho_a, rho_b)``; ``math.inf`` on one side keeps
    that marginal hard (the semi-relaxed problem), on both sides gives :func:`balanced`. A number
    may be a NumPy scalar or a 0-dim tensor; a one-element list, tuple, array or tensor counts as a
    number, a two-element one as the pair. Anything else (a string, a bool, NaN, a value <= 0)
    raises ``ValueError`` naming ``rho``.
    """
    rho_a, rho_b = _rho_pair(rho)

    def side(axis: int, w: Weights, r: float) -> Marginal:
        return Marginal(axis=axis, weights=w, penalty=None if math.isinf(r) and r > 0 else KL(rho=r))

    return ConstraintSet([side(0, a, rho_a), side(1, b, rho_b)])


def _total(w: Weights) -> torch.Tensor:
    """Total weight per problem: 1 for uniform weights."""
    if w is None:
        return torch.ones(())
    t = w.detach() if isinstance(w, torch.Tensor) else torch.as_tensor(w, dtype=torch.float64)
    return t.sum(-1).to(torch.float64).cpu()


def partial(mass: Union[float, torch.Tensor], a: Weights = None, b: Weights = None) -> ConstraintSet:
    """Partial transport: rows ``<= a``, columns ``<= b``, total mass ``== mass``.

    ``0 < mass <= min(sum a, sum b)`` (checked here when the weights are known, and again at solve
    time for uniform weights, which sum to 1). Under an initialised ``torch.distributed`` group of
    several ranks, ``a`` may be this rank's slice of the row weights (``shard="rows"``): only
    ``sum b`` is checked here, ``sum a`` at solve time over every rank's slice.
    """
    rows = Marginal(axis=0, weights=a, relation="<=")
    cols = Marginal(axis=1, weights=b, relation="<=")
    total = TotalMass(mass=mass)
    m = torch.as_tensor(total.mass, dtype=torch.float64).detach().cpu()
    cap = _total(cols.weights) if _several_ranks() else torch.minimum(_total(rows.weights), _total(cols.weights))
    excess = m - cap * (1 + 1e-9)
    if (excess > 0).any():
        raise ValueError(
            f"mass={m.tolist()!r} exceeds min(sum a, sum b)={cap.tolist()!r}; expected "
            "0 < mass <= min(sum a, sum b) for partial transport"
        )
    return ConstraintSet([rows, cols, total])


def _several_ranks() -> bool:
    """A ``torch.distributed`` group of more than one rank is initialised (row weights may be a
    rank's slice)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
