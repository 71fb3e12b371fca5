"""The configuration of one pretraining run: :class:`TrainConfig`, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

__all__ = ["TrainConfig", "DATASETS", "AUGMENTATION_PRESETS", "OPTIMIZERS", "LR_SCHEDULES"]

DATASETS = ("digits", "mnist1d")
AUGMENTATION_PRESETS = ("standard", "extreme")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")


def _fail(field: str, value: Any, expected: str) -> None:
    raise ValueError(f"TrainConfig.{field}={value!r}; expected {expected}")


def _check_int(field: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(field, value, f"an integer >= {low}" + (" or None" if allow_none else ""))


def _check_float(field: str, value: Any, low: float, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        _fail(field, value, f"a finite number {'>' if strict else '>='} {low}")


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(field, value, f"one of {choices}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one SimCLR-style pretraining run and its evaluation.

    The defaults are sized for ``load_digits`` on 2 CPU cores: one run (pretraining and
    evaluation) with NT-Xent takes about 7 s, so a comparison of 2 losses x 3 seeds takes ~40 s.
    Invalid values raise ``ValueError`` naming the field, the value and what was expected.

    Attributes:
        dataset: ``"digits"`` (scikit-learn ``load_digits``, images ``(1, 8, 8)``) or
            ``"mnist1d"`` (generated locally by the ``mnist1d`` package, signals ``(1, 40)``).
        augmentation: ``"standard"`` or ``"extreme"`` (see :mod:`otalign.experiments.augment`).
        domains: split the data into 4 style domains (digits only, see
            :mod:`otalign.experiments.domains`); the loss is then called with ``domains=d``.
        epochs: passes over the training split.
        batch_size: samples per step B (the loss sees two ``(B, projection_dim)`` views); the
            last incomplete batch of an epoch is dropped.
        lr: peak learning rate.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        weight_decay: L2 penalty (decoupled for ``"adamw"``).
        lr_schedule: ``"constant"`` or ``"cosine"`` (per step, from ``lr`` to 0).
        seed: seeds model initialisation, batching and augmentations (independent streams).
        width: channels of the first convolution (later layers use ``2 * width``).
        embedding_dim: dimension of the encoder output (the frozen features that are evaluated).
        projection_dim: dimension of the projection head output (what the loss sees).
        subset: use only the first ``subset`` training samples (for smoke tests); None = all.
            The test split is always complete.
        knn_k: number of neighbours of the kNN evaluation.
        output_dir: where result files are written (None: nothing is written).
        device: torch device string, e.g. ``"cpu"`` or ``"cuda"``.
        num_threads: torch intra-op and BLAS threads during the run (restored afterwards); a fixed
            count keeps CPU results reproducible (it changes how reductions are split). None
            keeps the current setting.
        progress: show a tqdm progress bar during pretraining.
    """

    dataset: str = "digits"
    augmentation: str = "standard"
    domains: bool = False
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-6
    lr_schedule: str = "cosine"
    seed: int = 0
    width: int = 32
    embedding_dim: int = 128
    projection_dim: int = 64
    subset: Optional[int] = None
    knn_k: int = 5
    output_dir: Optional[str] = None
    device: str = "cpu"
    num_threads: Optional[int] = 1
    progress: bool = True

    def __post_init__(self) -> None:
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("augmentation", self.augmentation, AUGMENTATION_PRESETS)
        if not isinstance(self.domains, bool):
            _fail("domains", self.domains, "a bool")
        if self.domains and self.dataset != "digits":
            _fail(
                "domains",
                self.domains,
                f"False for dataset={self.dataset!r} (domains are defined for 'digits')",
            )
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 2)
        _check_float("lr", self.lr, 0.0, strict=True)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_float("weight_decay", self.weight_decay, 0.0, strict=False)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_int("seed", self.seed, 0)
        _check_int("width", self.width, 1)
        _check_int("embedding_dim", self.embedding_dim, 1)
        _check_int("projection_dim", self.projection_dim, 1)
        _check_int("subset", self.subset, 2, allow_none=True)
        _check_int("knn_k", self.knn_k, 1)
        if self.output_dir is not None and not isinstance(self.output_dir, (str, Path)):
            _fail("output_dir", self.output_dir, "a path string or None")
        if self.output_dir is not None:
            object.__setattr__(self, "output_dir", str(self.output_dir))
        self._check_device()
        _check_int("num_threads", self.num_threads, 1, allow_none=True)
        if not isinstance(self.progress, bool):
            _fail("progress", self.progress, "a bool")

    def _check_device(self) -> None:
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            _fail("device", self.device, "a torch device string such as 'cpu' or 'cuda'")
        if device.type == "cuda" and not torch.cuda.is_available():
            _fail("device", self.device, "an available device (torch.cuda.is_available() is False)")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Union[str, int, float, bool, None]]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TrainConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**values)
