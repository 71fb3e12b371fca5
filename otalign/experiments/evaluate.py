"""Evaluation of a pretrained model on frozen features: :func:`evaluate` -> :class:`Metrics`.

* Class accuracy of a linear probe and of a cosine kNN vote on the encoder features ``h``
  (before the projection head), fitted on the training split, scored on the test split.
* Alignment and uniformity of the L2-normalised projections ``z`` (the embeddings the loss acts
  on): alignment over two augmented views of every test sample (fixed generator seed
  :data:`EVAL_SEED`, so all runs see the same views), uniformity over the clean test samples.
* With domains, the linear probe's accuracy at predicting the domain id from ``h``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .augment import PRESETS
from .config import TrainConfig
from .data import Dataset
from .metrics import alignment, knn_accuracy, linear_probe_accuracy, uniformity
from .models import SimCLRModel
from .reproducibility import deterministic

__all__ = ["Metrics", "evaluate", "extract", "EVAL_SEED"]

#: Seed of the augmentations that make the positive pairs of the alignment metric.
EVAL_SEED = 12345


@dataclass(frozen=True)
class Metrics:
    """Final metrics of a run (accuracies in [0, 1]).

    Attributes:
        linear_probe_acc: class accuracy of the linear probe on frozen features.
        knn_acc: class accuracy of the cosine kNN vote on frozen features.
        alignment: mean squared distance of positive pairs of normalised projections (lower: better).
        uniformity: log mean Gaussian potential over pairs of normalised projections (lower: more uniform).
        domain_probe_acc: domain accuracy of the linear probe (None without domains).
    """

    linear_probe_acc: float
    knn_acc: float
    alignment: float
    uniformity: float
    domain_probe_acc: Optional[float] = None

    def to_dict(self) -> dict[str, Optional[float]]:
        return asdict(self)


@torch.no_grad()
def extract(model: SimCLRModel, x: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``h`` ``(N, embedding_dim)`` and projections ``z`` ``(N, projection_dim)`` of
    ``x`` ``(N, *S)``, computed in eval mode (batch-norm running statistics) and returned on the CPU.
    The model's train/eval mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hs, zs = [], []
    for start in range(0, x.shape[0], batch_size):
        h, z = model(x[start : start + batch_size].to(device))
        hs.append(h.cpu())
        zs.append(z.cpu())
    model.train(was_training)
    return torch.cat(hs), torch.cat(zs)


def evaluate(model: SimCLRModel, data: Dataset, config: TrainConfig) -> Metrics:
    """All metrics of ``model`` on ``data`` (see the module docstring).

    Uses ``config.augmentation`` for the positive pairs, ``config.knn_k`` for kNN and
    ``config.device`` for the views' generator, and ``config.num_threads`` threads.
    """
    with deterministic(config.num_threads):
        return _evaluate(model, data, config)


def _evaluate(model: SimCLRModel, data: Dataset, config: TrainConfig) -> Metrics:
    h_train, _ = extract(model, data.x_train)
    h_test, z_test = extract(model, data.x_test)
    generator = torch.Generator(device=config.device).manual_seed(EVAL_SEED)
    augment = PRESETS[config.augmentation]
    x_test = data.x_test.to(config.device)
    _, z_a = extract(model, augment(x_test, generator))
    _, z_b = extract(model, augment(x_test, generator))
    domain_acc = None
    if data.d_train is not None and data.d_test is not None:
        domain_acc = linear_probe_accuracy(h_train, data.d_train, h_test, data.d_test)
    return Metrics(
        linear_probe_acc=linear_probe_accuracy(h_train, data.y_train, h_test, data.y_test),
        knn_acc=knn_accuracy(h_train, data.y_train, h_test, data.y_test, k=config.knn_k),
        alignment=alignment(z_a, z_b),
        uniformity=uniformity(z_test),
        domain_probe_acc=domain_acc,
    )
