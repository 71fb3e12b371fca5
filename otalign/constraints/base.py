"""Base classes of the declarative constraint layer.

A constraint is an immutable, validated pydantic model that says *what* must hold for the
transport plan P (shape ``(n, m)`` or ``(B, n, m)``). It holds data and parameters only and knows
nothing about solvers or iterations: the solver layer maps each constraint type to its dual update
through a registry (:mod:`otalign.solvers.registry`).

Every concrete subclass is registered by its class name, so that :func:`otalign.constraints.parse`
can rebuild it from JSON. Tensors are stored as given (a tensor that requires grad keeps its
autograd graph) and are written to JSON as nested lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

__all__ = ["Constraint", "ConstraintSet", "Tensor", "BoolTensor", "IntTensor", "as_constraint_set"]


def _to_float_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"expected a real tensor, got dtype {value.dtype}")
        return value if value.is_floating_point() else value.to(torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected a tensor or a nested sequence of numbers, got {value!r}") from exc


def _to_bool_tensor(value: Any) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if t.dtype != torch.bool:
        raise ValueError(f"expected a boolean tensor, got dtype {t.dtype}")
    return t


def _to_int_tensor(value: Any) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"expected an integer tensor, got dtype {t.dtype}")
    return t.to(torch.int64)


def _tensor_to_list(t: torch.Tensor) -> Any:
    return t.detach().cpu().tolist()


#: A real tensor field (a sequence or array is converted to a float64 tensor; a tensor is kept).
Tensor = Annotated[
    torch.Tensor,
    BeforeValidator(_to_float_tensor),
    PlainSerializer(_tensor_to_list, when_used="json"),
]
#: A boolean tensor field.
BoolTensor = Annotated[
    torch.Tensor,
    BeforeValidator(_to_bool_tensor),
    PlainSerializer(_tensor_to_list, when_used="json"),
]
#: An integer (int64) tensor field.
IntTensor = Annotated[
    torch.Tensor,
    BeforeValidator(_to_int_tensor),
    PlainSerializer(_tensor_to_list, when_used="json"),
]


def _values_equal(x: Any, y: Any) -> bool:
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            return False
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
                    f"constraints[{k}] is {item!r} (type {type(item).__name__}); "
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
            f"constraints={value!r} (type {type(value).__name__}); expected a constraint, "
            "a list of constraints or a ConstraintSet"
        )
    return ConstraintSet(value)
