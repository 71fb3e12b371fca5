"""argparse ``type=`` functions for the command line: every numeric option is checked while the
arguments are parsed, so a bad value ends in argparse's usage message and exit status 2 (naming
the option) and never reaches the library.

Each factory returns a function ``text -> value`` that raises ``argparse.ArgumentTypeError``
with a message saying what was expected; argparse prefixes it with ``argument --option:``.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Optional

__all__ = ["integer", "real", "integer_list", "real_list", "available_cpus", "MAX_COUNT"]

#: Upper bound of counts (iterations, epochs, sample sizes): the int32 range, beyond which torch
#: and the solvers cannot index or count.
MAX_COUNT = 2**31 - 1


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def integer(low: int, high: Optional[int] = None, what: str = "an integer") -> Callable[[str], int]:
    """An integer in ``[low, high]`` (``high`` None: no upper bound)."""
    expected = f"{what} >= {low}" if high is None else f"{what} in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not an integer; expected {expected}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{_shown(text)}; expected {expected}")
        return value

    parse.__name__ = "integer"
    return parse


def real(
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
    note: str = "",
) -> Callable[[str], float]:
    """A finite number in the interval given by ``low``/``high`` (open ends with ``*_open``);
    ``allow_inf``: ``inf`` is accepted too (when ``high`` is None). NaN is never accepted."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    expected = ("a finite number" if not allow_inf else "a number") + (" " + " and ".join(bounds) if bounds else "")
    if allow_inf:
        expected += " (or inf)"
    expected += note

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a number; expected {expected}") from None
        ok = not math.isnan(value) and (math.isfinite(value) or (allow_inf and value == math.inf and high is None))
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"{_shown(text)}; expected {expected}")
        return value

    parse.__name__ = "number"
    return parse


def _items(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{_shown(text)} has an empty item; expected a comma-separated list")
    return items


def integer_list(low: int, high: Optional[int] = None, what: str = "integers") -> Callable[[str], list[int]]:
    """A comma-separated list of distinct integers in ``[low, high]``."""
    item = integer(low, high)

    def parse(text: str) -> list[int]:
        values = [item(t) for t in _items(text)]
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{_shown(text)} repeats a value; expected distinct {what}")
        return values

    parse.__name__ = "list"
    return parse


def real_list(
    low: Optional[float] = None, high: Optional[float] = None, key: Callable[[float], object] = float, what: str = "numbers"
) -> Callable[[str], list[float]]:
    """A comma-separated list of finite numbers in ``[low, high]``, distinct under ``key``."""
    item = real(low, high)

    def parse(text: str) -> list[float]:
        values = [item(t) for t in _items(text)]
        if len({key(v) for v in values}) != len(values):
            raise argparse.ArgumentTypeError(f"{_shown(text)} repeats a value; expected distinct {what}")
        return values

    parse.__name__ = "list"
    return parse
