"""JSON round trip of constraint sets: ``parse(dumps(cs)) == cs``.

The JSON form is a list of objects, each ``{"type": <class name>, <fields>...}``; tensors are
nested lists (read back as float64, int64 or bool tensors), ``math.inf`` is the string
``"Infinity"``. A dict ``{"constraints": [...]}`` (e.g. a section of a config file) is accepted too.
"""

from __future__ import annotations

import json
from typing import Any, Union

from .base import Constraint, ConstraintSet, as_constraint_set

__all__ = ["dumps", "parse", "to_dict"]


def to_dict(constraints: Any) -> list[dict[str, Any]]:
    """The JSON-compatible form (a list of dicts) of a constraint set."""
    out = []
    for c in as_constraint_set(constraints):
        body = c.model_dump(mode="json")
        out.append({"type": type(c).__name__, **body})
    return out


def dumps(constraints: Any, **json_kwargs: Any) -> str:
    """Serialise a constraint (set) to JSON text; keyword arguments go to :func:`json.dumps`."""
    return json.dumps(to_dict(constraints), **json_kwargs)


def parse(source: Union[str, bytes, dict, list]) -> ConstraintSet:
    """Build a :class:`ConstraintSet` from JSON text, a list of dicts or ``{"constraints": [...]}``.

    Raises ``ValueError`` naming the entry and the problem for unknown types or invalid fields.
    """
    data = json.loads(source) if isinstance(source, (str, bytes)) else source
    if isinstance(data, dict):
        data = data["constraints"] if "constraints" in data else [data]
    if not isinstance(data, list):
        raise ValueError(f"expected a JSON list of constraints, got {type(data).__name__}")
    items = []
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or "type" not in entry:
            raise ValueError(f"constraints[{k}]={entry!r}; expected an object with a 'type' key")
        fields = dict(entry)
        name = fields.pop("type")
        cls = Constraint.registry.get(name)
        if cls is None:
            known = ", ".join(sorted(Constraint.registry))
            raise ValueError(f"constraints[{k}] has type={name!r}; expected one of: {known}")
        items.append(cls.model_validate(fields))
    return ConstraintSet(items)
