"""Conversion of user values into the numbers and tensors held by constraint fields.

Every function here raises ``ValueError`` only, with a message that names the field, shows the
value shortened to a bounded length (:func:`short_repr`) and says what was expected. What counts as
a number:

* a real scalar: ``int`` or ``float``, a NumPy integer or floating scalar, a 0-dim integer or
  floating tensor or array. Never a ``bool`` (``True`` is not a strength of 1), a string or bytes
  (``"12"`` is not a pair ``(1, 2)``) or a complex number.
* a tensor field: a tensor, a NumPy array, or a nested list/tuple of such scalars (at most
  :data:`MAX_NESTING` levels deep). Booleans are accepted only where the field holds a mask,
  integers where it holds group ids (within the int64 range).

Values read from JSON (:func:`otalign.constraints.parse`) may also spell the special floats as the
strings ``"Infinity"``, ``"-Infinity"`` and ``"NaN"``, which is how :func:`~otalign.constraints.dumps`
writes them (strict JSON has no such numbers); the Python API does not accept strings as numbers.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import ValidationInfo

__all__ = [
    "MAX_MESSAGE",
    "MAX_NESTING",
    "JSON_SPECIAL_FLOATS",
    "short_repr",
    "real_number",
    "integer",
    "as_tensor",
    "tensor_validator",
    "from_json",
]

#: The longest echo of a user value in an error message (characters).
MAX_MESSAGE = 120
#: The deepest nesting of lists accepted for a tensor field (``(B, n, m)`` masks need 3).
MAX_NESTING = 3
#: How :func:`~otalign.constraints.dumps` writes non-finite floats (pydantic's "strings" mode).
JSON_SPECIAL_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3
_repr.maxlong = 40


def short_repr(value: Any, limit: int = MAX_MESSAGE) -> str:
    """``repr(value)`` shortened to at most ``limit`` characters (long strings, deep or long
    lists and big tensors are elided with ``...``). Never raises."""
    try:
        if isinstance(value, torch.Tensor):
            text = f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
            if value.numel() <= 6:
                text = repr(value.detach().cpu())
        elif isinstance(value, np.ndarray):
            text = f"array of shape {value.shape} and dtype {value.dtype}"
            if value.size <= 6:
                text = repr(value)
        else:
            text = _repr.repr(value)
    except Exception:  # a user object whose __repr__ fails must not hide the real error
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _scalar_kind(value: Any) -> str | None:
    """``"int"``, ``"float"``, ``"bool"`` or ``"complex"`` for a scalar (Python, NumPy, 0-dim
    tensor or array), None for anything else."""
    if _is_bool(value):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, (complex, np.complexfloating)):
        return "complex"
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        return _dtype_kind(value.dtype)
    return None


def _dtype_kind(dtype: Any) -> str:
    if isinstance(dtype, torch.dtype):
        if dtype == torch.bool:
            return "bool"
        if dtype.is_complex:
            return "complex"
        return "float" if dtype.is_floating_point else "int"
    kind = np.dtype(dtype).kind
    return {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "complex"}.get(kind, "other")


def real_number(value: Any, field: str, *, json: bool = False) -> float:
    """``value`` as a Python float: a real scalar (see the module docstring), not a bool.

    With ``json=True`` the strings ``"Infinity"``, ``"-Infinity"`` and ``"NaN"`` are accepted too.
    NaN and infinities are returned as they are: range checks belong to the field.
    """
    if json and isinstance(value, str) and value in JSON_SPECIAL_FLOATS:
        return JSON_SPECIAL_FLOATS[value]
    kind = _scalar_kind(value)
    if kind not in ("int", "float"):
        raise ValueError(
            f"{field}={short_repr(value)} (type {type(value).__name__}); expected a real number "
            "(int, float, a NumPy scalar or a 0-dim tensor)"
        )
    try:
        return float(value.item() if isinstance(value, (torch.Tensor, np.ndarray)) else value)
    except OverflowError:
        raise ValueError(f"{field}={short_repr(value)}; expected a number within the float64 range") from None


def integer(value: Any, field: str) -> int:
    """``value`` as a Python int: an integer scalar (Python, NumPy or 0-dim tensor), not a bool."""
    if _scalar_kind(value) != "int":
        raise ValueError(
            f"{field}={short_repr(value)} (type {type(value).__name__}); expected an integer"
        )
    return int(value.item() if isinstance(value, (torch.Tensor, np.ndarray)) else value)


Kind = Literal["real", "bool", "int"]

_EXPECTED = {
    "real": "real numbers (not booleans or strings)",
    "bool": "booleans",
    "int": "integers (not booleans, floats or strings)",
}
_ACCEPTED_KINDS = {"real": ("int", "float"), "bool": ("bool",), "int": ("int",)}


def _check_nested(value: Any, field: str, kind: Kind) -> None:
    """Walk a nested list/tuple (iteratively, at most :data:`MAX_NESTING` levels) and check that
    every leaf is a scalar, array or tensor of an accepted kind."""
    accepted = _ACCEPTED_KINDS[kind]
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple)):
            if depth >= MAX_NESTING:
                raise ValueError(
                    f"{field} is nested more than {MAX_NESTING} levels deep; expected a tensor of "
                    f"at most {MAX_NESTING} dimensions"
                )
            stack.extend((x, depth + 1) for x in item)
            continue
        if isinstance(item, (torch.Tensor, np.ndarray)):
            item_kind = _dtype_kind(item.dtype)
        else:
            item_kind = _scalar_kind(item)
        if item_kind not in accepted:
            raise ValueError(
                f"{field} has an entry {short_repr(item, 60)} (type {type(item).__name__}); "
                f"expected {_EXPECTED[kind]}"
            )
        if kind == "int" and isinstance(item, int) and not _INT64_MIN <= item <= _INT64_MAX:
            raise ValueError(f"{field} has an entry {short_repr(item, 60)}; expected integers in the int64 range")


_NUMPY_DTYPE = {"real": np.float64, "bool": np.bool_, "int": np.int64}


def _from_sequence(value: Any, field: str, kind: Kind) -> torch.Tensor:
    _check_nested(value, field, kind)
    try:
        array = np.asarray(value, dtype=_NUMPY_DTYPE[kind])
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        # ragged nesting, an entry out of range, a tensor that requires grad inside a list, ...
        raise ValueError(
            f"{field}={short_repr(value)}; expected a rectangular nested sequence of "
            f"{_EXPECTED[kind]} ({short_repr(str(exc), 80)})"
        ) from None
    return torch.from_numpy(array)


def _shaped(value: dict, field: str, kind: Kind) -> torch.Tensor:
    """``{"shape": [...], "values": [...]}``: how :func:`dumps` writes a tensor with an empty
    dimension that nested lists cannot express (e.g. an empty batch of shape ``(0, n)``)."""
    if set(value) != {"shape", "values"}:
        raise ValueError(
            f"{field}={short_repr(value)}; a dict must have exactly the keys 'shape' and 'values'"
        )
    shape = value["shape"]
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NESTING:
        raise ValueError(f"{field}.shape={short_repr(shape)}; expected a list of at most {MAX_NESTING} sizes")
    sizes = [integer(s, f"{field}.shape[{i}]") for i, s in enumerate(shape)]
    if any(s < 0 for s in sizes):
        raise ValueError(f"{field}.shape={short_repr(shape)}; expected sizes >= 0")
    flat = _from_sequence(value["values"], f"{field}.values", kind).reshape(-1)
    if flat.numel() != math.prod(sizes):
        raise ValueError(
            f"{field} has {flat.numel()} values for shape {tuple(sizes)}; expected {math.prod(sizes)}"
        )
    return flat.reshape(sizes)


def as_tensor(value: Any, field: str, kind: Kind) -> torch.Tensor:
    """``value`` as a tensor of the field's kind.

    * ``"real"``: a floating tensor is kept as it is (device, dtype and autograd graph); an
      integer tensor, an integer or floating array, a scalar or a nested sequence of real
      numbers becomes float64.
    * ``"bool"``: a boolean tensor is kept; a boolean array or nested sequence of booleans is
      converted.
    * ``"int"``: any integer tensor, array or nested sequence becomes int64.
    """
    if isinstance(value, torch.Tensor):
        if _dtype_kind(value.dtype) not in _ACCEPTED_KINDS[kind]:
            raise ValueError(f"{field} is a tensor of dtype {value.dtype}; expected {_EXPECTED[kind]}")
        if kind == "real":
            return value if value.is_floating_point() else value.to(torch.float64)
        return value if kind == "bool" else value.to(torch.int64)
    if isinstance(value, np.ndarray):
        value_kind = _dtype_kind(value.dtype)
        if value_kind not in _ACCEPTED_KINDS[kind]:
            raise ValueError(f"{field} is an array of dtype {value.dtype}; expected {_EXPECTED[kind]}")
        if kind == "int" and value.dtype == np.uint64 and value.size and value.max() > _INT64_MAX:
            raise ValueError(f"{field} has entries above the int64 range; expected integers in the int64 range")
        return torch.from_numpy(np.array(value, dtype=_NUMPY_DTYPE[kind]))
    if isinstance(value, (list, tuple, range)):
        return _from_sequence(list(value) if isinstance(value, range) else value, field, kind)
    if isinstance(value, dict):
        return _shaped(value, field, kind)
    if _scalar_kind(value) in _ACCEPTED_KINDS[kind]:
        return _from_sequence(value, field, kind)
    raise ValueError(
        f"{field}={short_repr(value)} (type {type(value).__name__}); expected a tensor, an array "
        f"or a nested sequence of {_EXPECTED[kind]}"
    )


def tensor_validator(kind: Kind) -> Callable[[Any, ValidationInfo], torch.Tensor]:
    """A pydantic before-validator converting a field's value with :func:`as_tensor` (the
    field's name comes from pydantic's ``info``)."""

    def validate(value: Any, info: ValidationInfo) -> torch.Tensor:
        return as_tensor(value, info.field_name or "value", kind)

    validate.__name__ = f"as_{kind}_tensor"
    return validate


def from_json(info: ValidationInfo) -> bool:
    """Whether the model is being validated by :func:`~otalign.constraints.parse` (which passes
    the context ``{"json": True}``)."""
    return isinstance(info.context, dict) and bool(info.context.get("json"))
