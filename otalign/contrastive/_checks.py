"""Validation of the contrastive layer's hyper-parameters (the boundary: ``ValueError`` naming the
argument, the value and what was expected).

Real hyper-parameters are Python or NumPy real scalars (``bool`` is refused), finite unless said
otherwise, and representable in float32 (magnitude at most ``3.4e38``), since float32 is the
dtype the losses compute in for float32, float16 and bfloat16 inputs.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["F32_MAX", "F32_TINY", "check_real", "check_int", "check_bool", "check_choice"]

F32_MAX = float(np.finfo(np.float32).max)  # 3.4e38
F32_TINY = float(np.finfo(np.float32).tiny)  # 1.2e-38, the smallest normal float32


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_real(
    name: str,
    value: Any,
    *,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
    allow_inf: bool = False,
    expected: str,
) -> float:
    """``float(value)`` if it is a real number in the range, else ``ValueError``.

    ``low``/``high`` are inclusive bounds (``low_open=True``: ``value > low``); every finite value
    must also be representable in float32; ``allow_inf=True`` admits ``+inf`` (e.g. a hard
    marginal, ``rho = inf``).
    """
    message = f"{name}={value!r}; expected {expected}"
    if not _is_real(value):
        raise ValueError(message)
    x = float(value)
    if math.isnan(x) or (math.isinf(x) and not (allow_inf and x > 0)):
        raise ValueError(message)
    if math.isfinite(x) and abs(x) > F32_MAX:
        raise ValueError(f"{message} (representable in float32: |{name}| <= {F32_MAX:.3g})")
    if low is not None and (x < low or (low_open and x == low)):
        raise ValueError(message)
    if high is not None and x > high:
        raise ValueError(message)
    return x


def check_int(name: str, value: Any, *, low: int = 0, high: int = 2**31 - 1) -> int:
    """``int(value)`` for an integer (Python or NumPy, not ``bool``) in ``[low, high]``."""
    if not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r}; expected an integer in [{low}, {high}]")
    v = int(value)
    if not low <= v <= high:
        raise ValueError(f"{name}={value!r}; expected an integer in [{low}, {high}]")
    return v


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r}; expected True or False")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(repr(c) for c in choices)}")
    return value
