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
    may carry mass), pairs (``(B', n, m)`` bool, dense geometries only) and pairs whose labels are
    equal (``forbid_labels``: int64 ``(B', n)`` and ``(B', m)``; ``-1`` never matches). None means
    "no restriction"."""

    def __init__(
        self,
        rows: Optional[torch.Tensor] = None,
        cols: Optional[torch.Tensor] = None,
        pairs: Optional[torch.Tensor] = None,
        forbid_labels: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> None:
        self.rows, self.cols, self.pairs, self.forbid_labels = rows, cols, pairs, forbid_labels


class Projector:
    """The dual update of one constraint, prepared for one (batched) problem.

    Subclasses set these attributes in ``__init__(constraint, problem)``:

    * ``footprint``: how the dual enters ``log P`` (:mod:`otalign.solvers.footprint`), or None for
      a constraint without a dual (it acts only through :meth:`support`).
    * ``hard``: the constraint must hold exactly; its :meth:`violation` counts in the stopping test.
    * ``needs_certificate``: a penalty or an inequality, whose violation alone does not certify
      optimality: the stopping test also asks :meth:`certificate` (by default the duality gap
      :meth:`gap`, which needs :meth:`dual_objective` and :meth:`penalty`).

    and implement :meth:`init_dual` and :meth:`update` (plus :meth:`violation`,
    :meth:`penalty`, :meth:`dual_objective` where they apply). ``log_marginal`` arguments are the
    log of the plan's marginal for the footprint, in the dual's shape.
    """

    constraint_type: ClassVar[type[Constraint]]
    footprint: Optional[Footprint] = None
    hard: bool = True
    needs_certificate: bool = False
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

    def gap(self, dual: torch.Tensor, log_marginal: torch.Tensor) -> torch.Tensor:
        """``(B,)`` this constraint's share of the duality gap at (dual, marginal ``mu``): the
        Fenchel-Young gap ``Phi(mu) + Phi*(-dual) + <dual, mu>``, i.e.
        ``penalty(mu) + <dual, mu> - dual_objective(dual)``.

        The gap of a solve is the sum of these terms (the primal objective of the current plan
        minus the dual objective of the current duals). Each term is ``>= 0`` when ``mu`` satisfies
        the hard part of the constraint, and 0 exactly at the optimum. Built-in projectors
        override this with forms that do not cancel catastrophically (the default subtracts two
        numbers of the size of the objective).
        """
        mu = torch.exp(log_marginal)
        B = dual.shape[0]
        inner = torch.where(mu > 0, dual * mu, torch.zeros_like(mu)).reshape(B, -1).sum(-1)
        return self.penalty(log_marginal) + inner - self.dual_objective(dual)

    def certificate(self, dual: torch.Tensor, log_marginal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(smooth, residual)``, both ``(B,)``: how the stopping test certifies this constraint.

        * ``smooth``: the part of the gap that strong convexity turns into a distance to the
          optimal plan (``epsilon KL(P* || P) <= sum of smooth parts``; the engine bounds
          ``||P - P*||_1`` with it). It must be ``>= 0`` up to rounding, and second order in the
          error of the duals for the bound to reach small tolerances (KL penalties are).
        * ``residual``: a complementarity residual in mass units (the L1 amount by which the
          targets would have to move for the current plan to be exactly optimal), for the
          first-order parts of the gap (caps, TV penalties), whose rounding noise would swamp a
          distance bound.

        Default: the whole :meth:`gap` as the smooth part, no residual (rigorous, but its float
        floor is that of a first-order gap: ~1e-8 in float64; override for inequalities).
        """
        gap = self.gap(dual, log_marginal)
        return gap, torch.zeros_like(gap)


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


def translation_shift(row_model: tuple, col_model: tuple, active: Optional[torch.Tensor]) -> torch.Tensor:
    """``(B,)`` the shift ``t`` of the translation step (:func:`otalign.solvers.engine.translate`)
    from the row and column sides' ``translation`` models (:meth:`MarginalProjector.translation`)
    (0 where it is not finite or the problem is not ``active``)."""
    (kind_a, log_a, rho_a), (kind_b, log_b, rho_b) = row_model, col_model
    if kind_a == "exp" and kind_b == "exp":
        t = (log_a - log_b) / (1.0 / rho_a + 1.0 / rho_b)
    elif kind_a == "linear":
        t = rho_b * (log_a - log_b)
    else:
        t = rho_a * (log_a - log_b)
    keep = torch.isfinite(t) if active is None else torch.isfinite(t) & active
    return torch.where(keep, t, torch.zeros_like(t))
