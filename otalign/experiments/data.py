"""Data sets that ship with the dependencies (no network): loading, fixed splits, scaling.

* ``"digits"``: scikit-learn's ``load_digits``, 1,797 images of 8x8 pixels, 10 classes. Pixel
  values 0..16 are scaled to [0, 1] (background 0); a fixed stratified split (seed
  :data:`SPLIT_SEED`) keeps 25% for testing.
* ``"mnist1d"``: 5,000 signals of length 40 in 10 classes, generated locally with
  ``mnist1d.data.make_dataset`` and its default arguments (its own fixed seed and 80/20 split);
  the package already centres the signals and scales them to unit standard deviation.

Images stay in their natural range so that augmentations and style transforms act on pixel
values; the encoder standardises its input with the training split's mean and standard deviation
(:attr:`Dataset.mean`, :attr:`Dataset.std`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .config import TrainConfig
from .domains import DOMAIN_STYLES, apply_domain_styles, assign_domains

__all__ = ["Dataset", "load_dataset", "SPLIT_SEED"]

#: Seed of the train/test split of ``digits`` and of the domain assignment; independent of the
#: training seed so that every run is evaluated on the same test samples.
SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """A train/test split. ``S`` is the sample shape: ``(1, 8, 8)`` (digits) or ``(1, 40)`` (mnist1d).

    Attributes:
        name: the data set's name.
        x_train, x_test: ``(N, *S)`` and ``(M, *S)`` float32 inputs.
        y_train, y_test: ``(N,)`` and ``(M,)`` int64 class labels in ``[0, n_classes)``.
        d_train, d_test: ``(N,)`` and ``(M,)`` int64 domain ids in ``[0, n_domains)``, or None.
        n_classes: number of classes.
        n_domains: number of domains (1 without domains).
        mean, std: scalar statistics of ``x_train`` used to standardise the encoder's input.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    d_train: Optional[torch.Tensor]
    d_test: Optional[torch.Tensor]
    n_classes: int
    n_domains: int
    mean: float
    std: float

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``S``, the shape of one sample (channels first)."""
        return tuple(self.x_train.shape[1:])


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SPLIT_SEED, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # optional dependency
        raise ImportError(
            "dataset='mnist1d' needs the mnist1d package: pip install 'mnist1d>=0.0.2'"
        ) from exc
    # make_dataset seeds numpy's and Python's global generators; restore them afterwards
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_tr = data["x"].astype(np.float32)[:, None]  # (4000, 1, 40)
    x_te = data["x_test"].astype(np.float32)[:, None]  # (1000, 1, 40)
    return x_tr, data["y"].astype(np.int64), x_te, data["y_test"].astype(np.int64)


def load_dataset(config: TrainConfig) -> Dataset:
    """Load ``config.dataset`` with its fixed split; apply ``config.domains`` and ``config.subset``.

    With ``config.domains`` every sample gets one of 4 style domains (assigned by a fixed seeded
    permutation, balanced) and is rendered in that style (:mod:`otalign.experiments.domains`).
    ``config.subset`` keeps the first ``subset`` training samples (the split is already shuffled);
    it must not exceed the training split's size.
    """
    x_tr, y_tr, x_te, y_te = _digits() if config.dataset == "digits" else _mnist1d()
    if config.subset is not None and config.subset > len(y_tr):
        raise ValueError(
            f"TrainConfig.subset={config.subset}; expected at most {len(y_tr)} "
            f"(the size of the {config.dataset} training split)"
        )
    x_train, x_test = torch.from_numpy(x_tr), torch.from_numpy(x_te)
    y_train, y_test = torch.from_numpy(y_tr), torch.from_numpy(y_te)
    d_train = d_test = None
    n_domains = 1
    if config.domains:
        d_train = assign_domains(len(y_train), seed=SPLIT_SEED)
        d_test = assign_domains(len(y_test), seed=SPLIT_SEED + 1)
        x_train, x_test = apply_domain_styles(x_train, d_train), apply_domain_styles(x_test, d_test)
        n_domains = len(DOMAIN_STYLES)
    if config.subset is not None:
        x_train, y_train = x_train[: config.subset], y_train[: config.subset]
        d_train = None if d_train is None else d_train[: config.subset]
    return Dataset(
        name=config.dataset,
        x_train=x_train.contiguous(),
        y_train=y_train,
        x_test=x_test.contiguous(),
        y_test=y_test,
        d_train=d_train,
        d_test=d_test,
        n_classes=int(torch.cat([y_train, y_test]).max()) + 1,
        n_domains=n_domains,
        mean=float(x_train.mean()),
        std=float(x_train.std()),
    )
