"""The built-in constraint types.

Notation: P is the plan, shape ``(n, m)`` or ``(B, n, m)``; ``P 1`` its row marginal (shape
``(n,)``), ``P^T 1`` its column marginal (shape ``(m,)``). Weights given as ``None`` are uniform
(``1/n`` per row, ``1/m`` per column); a tensor of shape ``(n,)`` is shared by the batch, one of
shape ``(B, n)`` gives each problem its own weights. ``docs/constraints.md`` states the math and the
dual update of each type.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

import torch
from pydantic import Field, PlainSerializer, PlainValidator, ValidationInfo, field_validator, model_validator

from .base import BoolTensor, Constraint, IntTensor, Tensor, _Model, tensor_to_json
from .coerce import as_tensor, from_json, integer, real_number, short_repr

__all__ = ["KL", "TV", "Penalty", "Marginal", "TotalMass", "Forbid", "BlockMass"]


def check_rho(value: Any, field: str = "rho", *, json: bool = False) -> float:
    """``value`` as a penalty strength: a real number > 0, ``math.inf`` for a hard constraint."""
    rho = real_number(value, field, json=json)
    if math.isnan(rho) or rho <= 0:
        raise ValueError(f"{field}={rho!r}; expected a number > 0 (math.inf means a hard constraint)")
    return rho


class _Penalty(_Model):
    """A marginal penalty of strength ``rho > 0`` (``math.inf``: the hard constraint)."""

    rho: float

    @field_validator("rho", mode="before")
    @classmethod
    def _rho(cls, rho: Any, info: ValidationInfo) -> float:
        return check_rho(rho, json=from_json(info))


class KL(_Penalty):
    """KL penalty ``rho * KL(mu || w)`` on a marginal ``mu`` with target weights ``w``.

    ``rho > 0``; ``rho = math.inf`` is the hard constraint. (POT: ``reg_m``; GeomLoss:
    ``reach**p``; OTT-JAX: ``tau = rho / (rho + epsilon)``.)
    """

    type: Literal["KL"] = "KL"


class TV(_Penalty):
    """Total-variation penalty ``rho * ||mu - w||_1`` on a marginal (``rho = math.inf``: hard)."""

    type: Literal["TV"] = "TV"


Penalty = Union[KL, TV]


def _check_weights(w: Optional[torch.Tensor], name: str) -> Optional[torch.Tensor]:
    if w is None:
        return None
    if w.dim() not in (1, 2):
        raise ValueError(f"{name} has shape {tuple(w.shape)}; expected (n,) or (B, n)")
    if w.shape[-1] == 0:
        raise ValueError(f"{name} has shape {tuple(w.shape)}; expected at least one entry")
    d = w.detach()
    if d.is_floating_point() and d.numel():  # the common case in one reduction (NaN: both bounds NaN)
        lo, hi = (float(t) for t in torch.aminmax(d))
        if lo >= 0 and hi < math.inf:
            return w
    bad = ~torch.isfinite(d)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} non-finite entries; expected finite weights")
    if (d < 0).any():
        raise ValueError(
            f"{name} has negative entries (min {float(d.min()):.4g}); expected weights >= 0"
        )
    return w


class Marginal(Constraint):
    """A constraint on one marginal of the plan.

    ``axis=0`` constrains the row sums ``P 1`` (shape ``(n,)``), ``axis=1`` the column sums
    ``P^T 1`` (shape ``(m,)``), against ``weights`` (``None``: uniform, summing to 1).

    * ``relation="=="``, ``penalty=None``: hard equality ``P 1 = w``.
    * ``relation="<="``, ``penalty=None``: hard cap ``P 1 <= w`` (partial transport).
    * ``penalty=KL(rho)`` / ``TV(rho)``: the equality is replaced by the penalty
      ``rho * D(P 1 || w)`` in the objective (unbalanced transport). With ``relation="<="`` the cap
      stays hard and only the shortfall ``w - P 1`` is penalised.
    """

    axis: Literal[0, 1]
    weights: Optional[Tensor] = None
    relation: Literal["==", "<="] = "=="
    penalty: Optional[Penalty] = Field(default=None, discriminator="type")

    @field_validator("axis", mode="before")
    @classmethod
    def _axis(cls, axis: Any) -> int:
        value = integer(axis, "axis")
        if value not in (0, 1):
            raise ValueError(f"axis={short_repr(axis)}; expected 0 (rows) or 1 (columns)")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, w: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return _check_weights(w, "weights")

    @property
    def is_hard(self) -> bool:
        """True when no finite penalty relaxes the relation."""
        return self.penalty is None or math.isinf(self.penalty.rho)


def _total_mass(value: Any, info: ValidationInfo) -> Union[float, torch.Tensor]:
    """A scalar (Python or NumPy) becomes a float; a tensor is kept as given (a 0-dim tensor is
    one mass, like a float); a sequence or array becomes a float64 tensor of shape ``(B,)``."""
    if isinstance(value, (torch.Tensor, list, tuple, dict)) or getattr(value, "ndim", 0):
        t = as_tensor(value, "mass", "real")
        if t.dim() > 1:
            raise ValueError(f"mass has shape {tuple(t.shape)}; expected a number or (B,)")
        d = t.detach()
        if not (torch.isfinite(d).all() and (d > 0).all()):
            raise ValueError(f"mass={short_repr(d)}; expected finite masses > 0")
        return t
    mass = real_number(value, "mass", json=from_json(info))
    if not (math.isfinite(mass) and mass > 0):
        raise ValueError(f"mass={mass!r}; expected a finite mass > 0")
    return mass


def _total_mass_json(value: Union[float, torch.Tensor]) -> Any:
    return tensor_to_json(value) if isinstance(value, torch.Tensor) else value


class TotalMass(Constraint):
    """The plan carries a prescribed total mass: ``sum_ij P_ij = mass`` (partial transport).

    ``mass`` is a positive number, or a tensor of shape ``(B,)`` with one mass per problem.
    """

    mass: Annotated[
        Union[float, torch.Tensor],
        PlainValidator(_total_mass),
        PlainSerializer(_total_mass_json, when_used="json"),
    ]


class Forbid(Constraint):
    """Forbidden pairs: ``P_ij = 0`` on the pairs it names. Give either

    * ``mask``: ``"diagonal"`` forbids ``i == j`` (self-pairs, e.g. in contrastive learning), or a
      boolean tensor of shape ``(n, m)`` or ``(B, n, m)``, True where the pair is forbidden (a
      pair mask needs a dense geometry: a cost tensor or a tensorized point cloud); or
    * ``row_groups`` (``(n,)`` or ``(B, n)``) and ``col_groups`` (``(m,)`` or ``(B, m)``): integer
      labels; a pair whose labels are equal is forbidden (``-1`` never matches). Works on every
      geometry, including point clouds too large for a mask (e.g. ``arange(n)`` on both sides is
      the diagonal).

    The solver puts ``-inf`` in the log-kernel there, so the plan is exactly zero on those pairs.
    """

    mask: Optional[Union[Literal["diagonal"], BoolTensor]] = None
    row_groups: Optional[IntTensor] = None
    col_groups: Optional[IntTensor] = None

    @field_validator("mask", mode="before")
    @classmethod
    def _mask_before(cls, v: Any) -> Union[str, torch.Tensor, None]:
        if v is None or (isinstance(v, str) and v == "diagonal"):
            return v
        if isinstance(v, (str, bytes)):
            raise ValueError(f"mask={short_repr(v)}; expected 'diagonal' or a boolean tensor (n, m)/(B, n, m)")
        return as_tensor(v, "mask", "bool")

    @field_validator("mask")
    @classmethod
    def _mask(cls, v):  # noqa: ANN001
        if isinstance(v, torch.Tensor) and v.dim() not in (2, 3):
            raise ValueError(f"mask has shape {tuple(v.shape)}; expected (n, m) or (B, n, m)")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> Forbid:
        groups = (self.row_groups is not None, self.col_groups is not None)
        if self.mask is None and groups != (True, True):
            raise ValueError("Forbid needs mask=... or both row_groups=... and col_groups=...")
        if self.mask is not None and any(groups):
            raise ValueError("Forbid takes mask=... or row_groups/col_groups, not both")
        for name, labels in (("row_groups", self.row_groups), ("col_groups", self.col_groups)):
            if labels is not None:
                if labels.dim() not in (1, 2):
                    raise ValueError(f"{name} has shape {tuple(labels.shape)}; expected (n,) or (B, n)")
                if labels.numel() and int(labels.min()) < -1:
                    raise ValueError(f"{name} has values below -1 (min {int(labels.min())}); expected labels >= -1")
        return self


class BlockMass(Constraint):
    """Prescribed (or capped) mass between groups of rows and groups of columns.

    ``row_groups`` (shape ``(n,)`` or ``(B, n)``) gives each row a group in ``0..Gr-1`` (``-1``: in
    no group); ``col_groups`` likewise for columns with ``0..Gc-1``. ``mass`` has shape ``(Gr, Gc)``
    or ``(B, Gr, Gc)``: ``sum_{i in r, j in c} P_ij == mass[r, c]`` (``relation="=="``) or ``<=``.
    This is domain-constrained transport: e.g. rows and columns grouped by domain, with the mass
    moved within and across domains fixed.
    """

    row_groups: IntTensor
    col_groups: IntTensor
    mass: Tensor
    relation: Literal["==", "<="] = "=="

    @model_validator(mode="after")
    def _check(self) -> BlockMass:
        M = self.mass.detach()
        if M.dim() not in (2, 3):
            raise ValueError(f"mass has shape {tuple(M.shape)}; expected (Gr, Gc) or (B, Gr, Gc)")
        if not torch.isfinite(M).all() or (M < 0).any():
            raise ValueError("mass has negative or non-finite entries; expected finite masses >= 0")
        for name, groups, count in (
            ("row_groups", self.row_groups, M.shape[-2]),
            ("col_groups", self.col_groups, M.shape[-1]),
        ):
            if groups.dim() not in (1, 2):
                raise ValueError(f"{name} has shape {tuple(groups.shape)}; expected (n,) or (B, n)")
            if groups.numel() and (groups.min() < -1 or groups.max() >= count):
                raise ValueError(
                    f"{name} has values in [{int(groups.min())}, {int(groups.max())}]; expected "
                    f"group ids in [-1, {count - 1}] to match mass of shape {tuple(M.shape)}"
                )
        return self
