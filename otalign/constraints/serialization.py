"""JSON round trip of constraint sets: ``parse(dumps(cs)) == cs``.

The JSON form is a list of objects, each ``{"type": <class name>, <fields>...}``; tensors are
nested lists (read back as float64, int64 or bool tensors), ``math.inf`` is the string
``"Infinity"``. A tensor with an empty dimension that nested lists cannot express (an empty batch
such as ``(0, n)``) is written as ``{"shape": [0, n], "values": []}``. A dict
``{"constraints": [...]}`` (e.g. a section of a config file) is accepted too.

:func:`parse` raises ``ValueError`` only, whatever the input (bad JSON, nesting deeper than
Python's recursion limit, wrong types anywhere), with a message of at most
:data:`MAX_ERROR_LENGTH` characters that names the entry and the field.
"""

from __future__ import annotations

import json
from typing import Any, Union

from pydantic import ValidationError

from .base import Constraint, ConstraintSet, as_constraint_set
from .coerce import short_repr

__all__ = ["dumps", "parse", "to_dict", "MAX_ERROR_LENGTH"]

#: The longest message of a ``ValueError`` raised by :func:`parse` (characters).
MAX_ERROR_LENGTH = 1000
#: How many field errors of one entry a message lists.
_MAX_FIELD_ERRORS = 3


def to_dict(constraints: Any) -> list[dict[str, Any]]:
    """The JSON-compatible form (a list of dicts) of a constraint set."""
    out = []
    for c in as_constraint_set(constraints):
        body = json.loads(c.model_dump_json())  # pydantic writes inf and NaN as strings here only
        out.append({"type": type(c).__name__, **body})
    return out


def dumps(constraints: Any, **json_kwargs: Any) -> str:
    """Serialise a constraint (set) to strict JSON text (``math.inf`` is the string
    ``"Infinity"``); keyword arguments go to :func:`json.dumps`."""
    json_kwargs.setdefault("allow_nan", False)
    return json.dumps(to_dict(constraints), **json_kwargs)


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_ERROR_LENGTH else message[: MAX_ERROR_LENGTH - 3] + "..."


def _field_errors(exc: ValidationError) -> str:
    """pydantic's errors as ``field: message`` items, at most :data:`_MAX_FIELD_ERRORS` of them,
    each shortened (pydantic's own text grows with the number of errors)."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    items = []
    for err in errors[:_MAX_FIELD_ERRORS]:
        loc = ".".join(str(part) for part in err["loc"]) or "entry"
        msg = err["msg"].removeprefix("Value error, ")
        items.append(f"{loc[:80]}: {msg[:300]}")
    more = len(errors) - _MAX_FIELD_ERRORS
    return "; ".join(items) + (f"; and {more} more error(s)" if more > 0 else "")


def _load(source: Union[str, bytes, bytearray]) -> Any:
    try:
        return json.loads(source)
    except RecursionError:
        raise ValueError(
            "the constraint JSON is nested too deeply to read; expected a list of constraint objects"
        ) from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"the constraint text is not valid JSON: {short_repr(str(exc), 200)}") from None


def parse(source: Union[str, bytes, bytearray, dict, list]) -> ConstraintSet:
    """Build a :class:`ConstraintSet` from JSON text, a list of dicts or ``{"constraints": [...]}``.

    Raises ``ValueError`` (and nothing else) naming the entry and the problem for invalid JSON,
    unknown types or invalid fields; values are echoed shortened, so the message stays under
    :data:`MAX_ERROR_LENGTH` characters whatever the size of the input. The special floats
    ``"Infinity"``, ``"-Infinity"`` and ``"NaN"`` (as :func:`dumps` writes them) are read as
    numbers; other strings are not numbers.
    """
    data = _load(source) if isinstance(source, (str, bytes, bytearray)) else source
    if isinstance(data, dict):
        data = data["constraints"] if "constraints" in data else [data]
    if not isinstance(data, list):
        raise ValueError(
            f"constraints={short_repr(data)} (type {type(data).__name__}); expected a JSON list of "
            "constraint objects"
        )
    return ConstraintSet([_entry(k, entry) for k, entry in enumerate(data)])


def _entry(k: int, entry: Any) -> Constraint:
    """The constraint of ``constraints[k]``."""
    if not isinstance(entry, dict) or "type" not in entry:
        raise ValueError(
            f"constraints[{k}]={short_repr(entry)}; expected an object with a 'type' key"
        )
    fields = dict(entry)
    name = fields.pop("type")
    known = ", ".join(sorted(Constraint.registry))
    cls = Constraint.registry.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(_bounded(f"constraints[{k}] has type={short_repr(name)}; expected one of: {known}"))
    try:
        return cls.model_validate(fields, context={"json": True})
    except ValidationError as exc:
        raise ValueError(_bounded(f"constraints[{k}] ({name}): {_field_errors(exc)}")) from None
    except RecursionError:
        raise ValueError(f"constraints[{k}] ({name}) is nested too deeply; expected numbers or lists of numbers") from None
