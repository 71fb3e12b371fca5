"""Base classes of the declarative constraint layer.

A constraint is an immutable, validated pydantic model that says *what* must hold for the
transport plan P (shape ``(n, m)`` or ``(B, n, m)``). It holds data and parameters only and knows
nothing about solvers or iterations: the solver layer maps each constraint type to its dual update
through a registry (:mod:`otalign.solvers.registry`).

Every concrete subclass is registered by its class name, so that :func:`otalign.constraints.parse`
can rebuild it from JSON. Floating tensors are stored as given (a tensor that requires grad keeps
its autograd graph) and are written to JSON as nested lists. Numbers and tensors are converted by
:mod:`otalign.constraints.coerce` (strings and booleans are never numbers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from .coerce import short_repr, tensor_validator

__all__ = ["Constraint", "ConstraintSet", "Tensor", "BoolTensor", "IntTensor", "as_constraint_set", "tensor_to_json"]


def tensor_to_json(t: torch.Tensor) -> Any:
    """Nested lists; a tensor with an empty dimension that nested lists cannot express (any but
    the last, e.g. an empty batch ``(0, n)``) is written as ``{"shape": [...], "values": []}``."""
    t = t.detach().cpu()
    if any(size == 0 for size in t.shape[:-1]):
        return {"shape": list(t.shape), "values": []}
    return t.tolist()


#: A real tensor field (a sequence or array is converted to a float64 tensor; a floating tensor is
#: kept as given; an integer tensor becomes float64). See :mod:`otalign.constraints.coerce`.
Tensor = Annotated[
    torch.Tensor,
    BeforeValidator(tensor_validator("real")),
    PlainSerializer(tensor_to_json, when_used="json"),
]
#: A boolean tensor field.
BoolTensor = Annotated[
    torch.Tensor,
    BeforeValidator(tensor_validator("bool")),
    PlainSerializer(tensor_to_json, when_used="json"),
]
#: An integer (int64) tensor field.
IntTensor = Annotated[
    torch.Tensor,
    BeforeValidator(tensor_validator("int")),
    PlainSerializer(tensor_to_json, when_used="json"),
]


def _values_equal(x: Any, y: Any) -> bool:
    """Equality by value: tensors of equal shape and entries (whatever their dtype or device);
    a 0-dim tensor equals the Python number of the same value (both mean one scalar, and JSON
    cannot tell them apart); NaN equals NaN."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            tensor, other = (x, y) if isinstance(x, torch.Tensor) else (y, x)
            if tensor.dim() != 0 or isinstance(other, bool) or not isinstance(other, (int, float)):
                return False
            return _values_equal(tensor.item(), float(other))
        return x.shape == y.shape and bool(torch.equal(x.detach().cpu(), y.detach().cpu()))
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y


class _Model(BaseModel):
    """Immutable pydantic model that can hold tensors and compares them by value."""

    model_config = ConfigDict(
        frozen=True, arbitrary_types_allowed=True, extra="forbid", ser_json_inf_nan="strings"
    )

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return all(
            _values_equal(getattr(self, k), getattr(other, k)) for k in type(self).model_fields
        )

    __hash__ = object.__hash__


class Constraint(_Model):
    """Base class of every constraint on a transport plan.

    Subclasses are registered by class name for JSON round trips (:func:`dumps` / :func:`parse`).
    Constraints compose with ``+`` into a :class:`ConstraintSet`.
    """

    registry: ClassVar[dict[str, type[Constraint]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = cls.__name__
        previous = Constraint.registry.get(name)
        if previous is not None and previous is not cls and previous.__module__ != cls.__module__:
            raise TypeError(
                f"a constraint type named {name!r} is already registered "
                f"(from {previous.__module__}); give the new type another name"
            )
        Constraint.registry[name] = cls

    def __add__(self, other: Any) -> ConstraintSet:
        return ConstraintSet([self]) + other

    def __radd__(self, other: Any) -> ConstraintSet:
        return as_constraint_set(other) + ConstraintSet([self])


class ConstraintSet(Sequence[Constraint]):
    """An ordered, immutable collection of constraints (the order is the order of the updates).

    Compose with ``+``: ``C.balanced() + [C.Forbid(mask="diagonal")]``.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Constraint] = ()) -> None:
        items = tuple(items)
        for k, item in enumerate(items):
            if not isinstance(item, Constraint):
                raise ValueError(
                    f"constraints[{k}] is {short_repr(item)} (type {type(item).__name__}); "
                    "expected an otalign constraint such as C.Marginal(...)"
                )
        self._items = items

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ConstraintSet(self._items[index])
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Constraint]:
        return iter(self._items)

    def __add__(self, other: Any) -> ConstraintSet:
        return ConstraintSet(self._items + as_constraint_set(other)._items)

    def __radd__(self, other: Any) -> ConstraintSet:
        return ConstraintSet(as_constraint_set(other)._items + self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConstraintSet):
            return NotImplemented
        return len(self) == len(other) and all(x == y for x, y in zip(self, other))

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        inner = ", ".join(repr(c) for c in self._items)
        return f"ConstraintSet([{inner}])"


def as_constraint_set(value: Any) -> ConstraintSet:
    """Turn a constraint, a sequence of constraints or a :class:`ConstraintSet` into a set."""
    if isinstance(value, ConstraintSet):
        return value
    if isinstance(value, Constraint):
        return ConstraintSet([value])
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(
            f"constraints={short_repr(value)} (type {type(value).__name__}); expected a constraint, "
            "a list of constraints or a ConstraintSet"
        )
    return ConstraintSet(value)
