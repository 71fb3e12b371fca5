"""The registry that maps each constraint type to its dual update ("projector").

Adding a constraint type to otalign = a pydantic model (:mod:`otalign.constraints`) + a
:class:`Projector` subclass decorated with :func:`register` + tests. The engine never names a
constraint type: it asks the projector for its footprint, its dual update, its error and its terms
of the objective. ``docs/constraints.md`` walks through a complete example.
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar, Optional, TypeVar

import torch

from ..constraints.base import Constraint
from .footprint import Footprint
from .problem import Problem

__all__ = ["Projector", "Support", "register", "projector_for", "kl_step"]

_REGISTRY: dict[type, type["Projector"]] = {}

P = TypeVar("P", bound=type["Projector"])


class Support:
    """Entries a constraint forces to zero: rows, columns (``(B', n)``/``(B', m)`` bool, True =
    may carry mass) and pairs (``(B', n, m)`` bool). None means "no restriction"."""

    def __init__(
        self,
        rows: Optional[torch.Tensor] = None,
        cols: Optional[torch.Tensor] = None,
        pairs: Optional[torch.Tensor] = None,
    ) -> None:
        self.rows, self.cols, self.pairs = rows, cols, pairs


class Projector:
    """The dual update of one constraint, prepared for one (batched) problem.

    Subclasses set these attributes in ``__init__(constraint, problem)``:

    * ``footprint``: how the dual enters ``log P`` (:mod:`otalign.solvers.footprint`), or None for
      a constraint without a dual (it acts only through :meth:`support`).
    * ``hard``: the constraint must hold exactly; its :meth:`violation` counts in the stopping test.
    * ``tracks_dual_change``: the stopping test also requires the dual to settle (penalties and
      inequalities, whose violation alone does not certify optimality).

    and implement :meth:`init_dual` and :meth:`update` (plus :meth:`violation`,
    :meth:`penalty`, :meth:`dual_objective` where they apply). ``log_marginal`` arguments are the
    log of the plan's marginal for the footprint, in the dual's shape.
    """

    constraint_type: ClassVar[type[Constraint]]
    footprint: Optional[Footprint] = None
    hard: bool = True
    tracks_dual_change: bool = False
    #: a hard equality whose dual is defined up to the balanced gauge (f + c, g - c).
    is_hard_equality: bool = False
    #: the dual is unconstrained, so over-relaxation ``d + omega (update(d) - d)`` keeps it valid
    relaxable: bool = False
    #: (axis, weights (B', size)) when this constraint provides the reference weights of an axis.
    reference: Optional[tuple[int, torch.Tensor]] = None

    def __init__(self, constraint: Constraint, problem: Problem) -> None:
        self.constraint = constraint
        self.problem = problem

    @classmethod
    def batch_size(cls, constraint: Constraint) -> Optional[int]:
        """Leading batch size that the constraint's data imposes (None: shared by all problems)."""
        return None

    def support(self) -> Support:
        """Entries this constraint forces to zero (default: none)."""
        return Support()

    def init_dual(self) -> Optional[torch.Tensor]:
        """The initial dual (zeros of the footprint's shape), or None without a dual."""
        return None

    def update(self, dual: torch.Tensor, log_marginal: torch.Tensor, eps: float) -> torch.Tensor:
        """One block-coordinate ascent step on this constraint's dual (other duals fixed)."""
        raise NotImplementedError

    def violation(self, log_marginal: torch.Tensor) -> torch.Tensor:
        """``(B,)`` violation of the hard constraint (L1 in mass units)."""
        return torch.zeros(log_marginal.shape[0], dtype=log_marginal.dtype, device=log_marginal.device)

    def penalty(self, log_marginal: torch.Tensor) -> torch.Tensor:
        """``(B,)`` value of this constraint's penalty term in the primal objective."""
        return torch.zeros(log_marginal.shape[0], dtype=log_marginal.dtype, device=log_marginal.device)

    def dual_objective(self, dual: torch.Tensor) -> torch.Tensor:
        """``(B,)`` value of ``-Phi*(-dual)``, this constraint's term of the dual objective."""
        raise NotImplementedError(f"{type(self).__name__} has no dual objective term")


def register(constraint_type: type[Constraint]) -> Callable[[P], P]:
    """Class decorator: ``@register(MyConstraint) class MyProjector(Projector): ...``."""

    def deco(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Projector)):
            raise TypeError(f"{cls!r} must be a Projector subclass")
        cls.constraint_type = constraint_type
        _REGISTRY[constraint_type] = cls
        return cls

    return deco


def projector_for(constraint: Constraint) -> type[Projector]:
    """The projector class registered for ``type(constraint)`` (or one of its bases)."""
    for klass in type(constraint).__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
    known = ", ".join(sorted(t.__name__ for t in _REGISTRY))
    raise ValueError(
        f"no solver update is registered for constraint type {type(constraint).__name__!r} "
        f"(registered: {known}); register one with @otalign.solvers.register"
    )


def kl_step(dual: torch.Tensor, log_target: torch.Tensor, log_marginal: torch.Tensor, eps: float) -> torch.Tensor:
    """The exact KL projection: the dual value that makes the marginal equal the target.

    ``dual + eps * (log target - log marginal)``; entries whose marginal is exactly zero (rows
    forced to zero) keep their dual. (The discarded branch may hold ``inf - inf``; ``where``
    passes it no gradient.)
    """
    step = torch.add(dual, log_target - log_marginal, alpha=eps)
    return torch.where(log_marginal > -math.inf, step, dual)
