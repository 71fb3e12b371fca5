"""Autograd-aware gathering across ``torch.distributed`` ranks.

Every rank gathers the embeddings of all ranks and computes the loss of the whole (global)
batch. The backward pass of the gather SUMS the gradients that every rank's loss sends to each
rank's embeddings, so that after DistributedDataParallel averages parameter gradients over the
``W`` ranks, the gradient equals the one of a single process on the whole batch
(``sum_k dL/dz_r / W = dL/dz_r`` since every rank computes the same ``L``). Plain
``dist.all_gather`` would cut the gradient to the local slot only (a ``1/W`` error).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "rank", "gather", "gather_no_grad"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        local = grad.shape[0] // dist.get_world_size()
        start = dist.get_rank() * local
        return grad[start:start + local]


def _check_equal_batches(x: torch.Tensor) -> None:
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    values = [int(s) for s in sizes]
    if len(set(values)) > 1:
        raise ValueError(
            f"local batch sizes differ across ranks ({values}); gather_distributed needs the same "
            "batch size on every rank (use drop_last=True in the DataLoader)"
        )


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (``(B, ...)`` on each rank) over ranks in rank order: ``(W B, ...)``,
    with a summing backward. Identity outside ``torch.distributed``."""
    if world_size() == 1:
        return x
    _check_equal_batches(x)
    return _Gather.apply(x)


def gather_no_grad(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Concatenate annotations (labels, domains) over ranks; no gradient."""
    if x is None or world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
