"""SimCLR-style pretraining with any contrastive loss: :func:`pretrain`.

Each step draws a batch of ``B`` training samples, makes two random views of it with the
configured augmentation preset, encodes both (one forward pass over the ``2B`` views) and calls
``loss_fn(z_a, z_b)`` on the projections ``z_a, z_b`` of shape ``(B, projection_dim)`` (row ``i``
of both is the positive pair of sample ``i``), or ``loss_fn(z_a, z_b, domains=d)`` with
``d`` the ``(B,)`` int64 domain ids when the data have domains. The loss must return a 0-dim
tensor. Losses with parameters (e.g. a learnable temperature) are trained with the model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import PRESETS
from .config import TrainConfig
from .data import Dataset, load_dataset
from .models import SimCLRModel, build_model
from .reproducibility import deterministic, seed_streams

__all__ = ["TrainResult", "pretrain", "batch_loss", "build_optimizer", "LossFn"]

#: A contrastive loss: ``loss_fn(z_a, z_b, **kw) -> 0-dim tensor`` (usually an ``nn.Module``).
LossFn = Callable[..., torch.Tensor]


@dataclass
class TrainResult:
    """Outcome of :func:`pretrain`.

    Attributes:
        config: the run's configuration.
        model: the trained model (in eval mode, on ``config.device``).
        data: the data set it was trained on.
        step_losses: loss of every optimisation step, in order (``epochs * steps_per_epoch``).
        epoch_losses: mean step loss of every epoch (``epochs``).
        seconds: wall-clock time of the training loop.
    """

    config: TrainConfig
    model: SimCLRModel
    data: Dataset
    step_losses: list[float]
    epoch_losses: list[float]
    seconds: float


def build_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``config.optimizer`` with ``config.lr`` and ``config.weight_decay``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )


def _lr_factor(schedule: str, total_steps: int):
    if schedule == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def batch_loss(
    model: SimCLRModel,
    loss_fn: LossFn,
    x: torch.Tensor,
    domains: Optional[torch.Tensor],
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    """The loss of one batch ``x`` ``(B, *S)``: two views ``augment(x, generator)``, encoded in
    one pass over ``(2B, *S)``, split into projections ``z_a, z_b`` ``(B, projection_dim)``, then
    ``loss_fn(z_a, z_b)`` (or with ``domains=`` the ``(B,)`` ids). Returns the 0-dim loss;
    ``ValueError`` if the loss returns anything else."""
    _, z = model(torch.cat([augment(x, generator), augment(x, generator)]))
    z_a, z_b = z.chunk(2)
    loss = loss_fn(z_a, z_b) if domains is None else loss_fn(z_a, z_b, domains=domains)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn returned {got}; expected a 0-dim tensor")
    return loss


def pretrain(config: TrainConfig, loss_fn: LossFn, data: Optional[Dataset] = None) -> TrainResult:
    """Train a fresh encoder and projection head with ``loss_fn``.

    Args:
        config: the run's configuration; ``config.seed`` fixes model initialisation, batch order
            and augmentations, so the same config and loss give the same losses and model.
        loss_fn: ``loss_fn(z_a, z_b, **kw) -> 0-dim tensor`` with ``z_a, z_b`` of shape
            ``(B, projection_dim)``; called with ``domains=`` ``(B,)`` int64 when ``data`` has domains.
        data: the data set; None loads it from ``config`` (pass it to reuse one load across runs).

    Raises:
        ValueError: the batch size exceeds the training split, or the loss does not return a
            0-dim tensor.
        FloatingPointError: the loss is not finite.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config is a {type(config).__name__}; expected a TrainConfig")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn={loss_fn!r}; expected a callable loss_fn(z_a, z_b, **kw) -> 0-dim tensor")
    data = load_dataset(config) if data is None else data
    n = data.x_train.shape[0]
    if config.batch_size > n:
        raise ValueError(
            f"TrainConfig.batch_size={config.batch_size}; expected at most {n} (the training samples)"
        )
    device = torch.device(config.device)
    streams = seed_streams(config.seed)
    augment = PRESETS[config.augmentation]
    steps_per_epoch = n // config.batch_size
    total = config.epochs * steps_per_epoch

    with deterministic(config.num_threads):
        torch.default_generator.manual_seed(streams.init)  # model init draws from it (on the CPU)
        model = build_model(
            data.sample_shape, config.width, config.embedding_dim, config.projection_dim, data.mean, data.std
        )
        model = model.to(device)
        if isinstance(loss_fn, nn.Module):
            loss_fn = loss_fn.to(device)
        params = list(model.parameters()) + (
            list(loss_fn.parameters()) if isinstance(loss_fn, nn.Module) else []
        )
        optimizer = build_optimizer(params, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config.lr_schedule, total))
        batch_gen = torch.Generator().manual_seed(streams.batches)
        aug_gen = torch.Generator(device=device).manual_seed(streams.augment)
        x_train = data.x_train.to(device)
        d_train = None if data.d_train is None else data.d_train.to(device)

        step_losses: list[float] = []
        epoch_losses: list[float] = []
        model.train()
        start = time.perf_counter()
        with tqdm(
            total=total,
            desc=f"pretrain seed={config.seed}",
            unit="step",
            disable=not config.progress,
            leave=False,
        ) as bar:
            for epoch in range(config.epochs):
                order = torch.randperm(n, generator=batch_gen).to(device)
                for step in range(steps_per_epoch):
                    idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                    domains = None if d_train is None else d_train[idx]
                    loss = batch_loss(model, loss_fn, x_train[idx], domains, augment, aug_gen)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"loss is {value} at epoch {epoch}, step {step}; expected finite"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    step_losses.append(value)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{value:.4f}")
                epoch_losses.append(sum(step_losses[-steps_per_epoch:]) / steps_per_epoch)
        seconds = time.perf_counter() - start
    model.eval()
    return TrainResult(config, model, data, step_losses, epoch_losses, seconds)
