"""One runner per library (otalign, POT, GeomLoss, OTT-JAX) behind one interface.

``--libraries`` items are ``library`` (its default configurations) or ``library:config``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .base import DEFAULT_KNOBS, Call, Runner, RunRecord, SolveOutput
from .geomloss_runner import GeomlossRunner
from .otalign_runner import OtalignRunner
from .ott_runner import OttRunner
from .pot_runner import PotRunner

__all__ = [
    "RUNNERS",
    "Runner",
    "RunRecord",
    "SolveOutput",
    "Call",
    "DEFAULT_KNOBS",
    "OtalignRunner",
    "PotRunner",
    "GeomlossRunner",
    "OttRunner",
    "parse_libraries",
    "make_runners",
]

#: Library name (as on the command line) -> runner class, in table order.
RUNNERS: dict[str, type[Runner]] = {
    "otalign": OtalignRunner,
    "pot": PotRunner,
    "geomloss": GeomlossRunner,
    "ott": OttRunner,
}
_ALIASES = {"ott-jax": "ott", "ottjax": "ott", "ot": "pot"}


def parse_libraries(items: Optional[Sequence[str]]) -> list[tuple[str, Optional[str]]]:
    """Validate ``--libraries`` items into ``(library, config or None)`` pairs.

    ``None`` or empty selects every library with its default configurations.

    Raises:
        ValueError: unknown library or configuration (the message lists the valid ones).
    """
    if not items:
        return [(lib, None) for lib in RUNNERS]
    chosen: list[tuple[str, Optional[str]]] = []
    for item in items:
        lib, _, config = item.strip().partition(":")
        lib = _ALIASES.get(lib.lower(), lib.lower())
        if lib not in RUNNERS:
            raise ValueError(f"unknown library {item!r}; expected one of {', '.join(RUNNERS)} (optionally 'library:config')")
        if config:
            configs = RUNNERS[lib].CONFIGS
            if config not in configs:
                raise ValueError(f"{lib} has no configuration {config!r}; expected one of {', '.join(configs)}")
        pair = (lib, config or None)
        if pair not in chosen:
            chosen.append(pair)
    return chosen


def make_runners(
    selection: Sequence[tuple[str, Optional[str]]], *, device: Any, dtype: torch.dtype
) -> tuple[list[Runner], list[str]]:
    """Instantiate the selected runners; libraries (and configurations, e.g. GeomLoss's online
    backend without pykeops) that cannot run are left out with a notice.

    Returns:
        ``(runners, notices)``.
    """
    runners: list[Runner] = []
    notices: list[str] = []
    seen_unavailable: set[str] = set()
    for lib, config in selection:
        cls = RUNNERS[lib]
        reason = cls.unavailable(device, dtype)
        if reason is not None:
            if lib not in seen_unavailable:
                notices.append(f"{cls.label} skipped: {reason}")
                seen_unavailable.add(lib)
            continue
        configs = [config] if config else list(cls.default_configs())
        for name in configs:
            if any(r.library == lib and r.config == name for r in runners):
                continue
            runner = cls(name, device=device, dtype=dtype)
            why = runner.unavailable_config()
            if why is not None:
                notices.append(f"{runner.name} skipped: {why}")
                continue
            runners.append(runner)
    return runners, notices
