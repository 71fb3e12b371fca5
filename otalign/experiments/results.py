"""The record of one run (:class:`RunResult`), its JSON file, and mean/std aggregation."""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .config import TrainConfig
from .evaluate import Metrics
from .files import atomic_write_text

__all__ = ["RunResult", "write_json", "mean_std", "run_filename"]

PathLike = Union[str, Path]


def _environment() -> dict[str, str]:
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


@dataclass
class RunResult:
    """Everything a run reports; round-trips through JSON (:meth:`save`, :meth:`load`).

    Attributes:
        name: the loss's name (the key of its factory).
        config: the run's configuration.
        epoch_losses: mean training loss of every epoch, ``(epochs,)``.
        step_losses: training loss of every step, ``(epochs * steps_per_epoch,)``.
        metrics: final metrics on frozen features.
        timings: seconds: ``pretrain``, ``evaluate``, ``total``.
        environment: torch, Python and platform versions.
        loss: the loss's description (name and hyper-parameters, JSON values), when its factory
            has a ``describe()`` method (the named losses of :mod:`~otalign.experiments.losses`
            do); None otherwise. Resuming compares it (:mod:`~otalign.experiments.outputs`).
    """

    name: str
    config: TrainConfig
    epoch_losses: list[float]
    step_losses: list[float]
    metrics: Metrics
    timings: dict[str, float]
    environment: dict[str, str] = field(default_factory=_environment)
    loss: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config.to_dict(),
            "epoch_losses": list(self.epoch_losses),
            "step_losses": list(self.step_losses),
            "metrics": self.metrics.to_dict(),
            "timings": dict(self.timings),
            "environment": dict(self.environment),
            "loss": None if self.loss is None else dict(self.loss),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunResult:
        return cls(
            name=values["name"],
            config=TrainConfig.from_dict(values["config"]),
            epoch_losses=list(values["epoch_losses"]),
            step_losses=list(values["step_losses"]),
            metrics=Metrics(**values["metrics"]),
            timings=dict(values["timings"]),
            environment=dict(values["environment"]),
            loss=None if values.get("loss") is None else dict(values["loss"]),
        )

    def save(self, path: PathLike) -> Path:
        """Write the JSON record to ``path`` atomically (parent folders are created); returns the
        path."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: PathLike) -> RunResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


def run_filename(name: str, seed: int) -> str:
    """File name of a run's record: the name with unsafe characters replaced, and the seed."""
    return f"{re.sub(r'[^A-Za-z0-9_.+=-]', '_', name)}_seed{seed}.json"


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON (no NaN) to ``path``, creating parent folders.

    The write is atomic (:func:`~otalign.experiments.files.atomic_write`): an interrupted write
    leaves the previous file, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def mean_std(values: Sequence[Optional[float]]) -> dict[str, Optional[float]]:
    """``{"mean", "std", "n"}`` of the non-None values; ``std`` is the sample standard deviation
    (``ddof=1``), None with fewer than 2 values; ``mean`` is None without values."""
    vals = np.array([v for v in values if v is not None], dtype=np.float64)
    if vals.size and not np.isfinite(vals).all():
        raise ValueError(f"values={list(values)!r}; expected finite numbers or None")
    mean = float(vals.mean()) if vals.size else None
    std = float(vals.std(ddof=1)) if vals.size >= 2 else None
    return {"mean": mean, "std": std, "n": int(vals.size)}
