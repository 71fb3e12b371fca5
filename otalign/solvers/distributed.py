"""Row sharding over ``torch.distributed``: the reducer the engine calls for cross-rank sums.

A row-sharded solve (``ota.solve(..., shard="rows")``) keeps rank ``r``'s rows ``I_r`` of the
problem on that rank: its cost block ``(B, n_r, m)`` (or point cloud ``x_r``), its slice of every
row-side tensor, its row duals. Columns, column duals, total-mass and block duals are replicated.
Every reduction of the plan over rows is a partial result on each rank, combined here:

* column (and block, and total-mass) log-sum-exps: ``all_reduce(MAX)`` of the local maxima, then
  ``all_reduce(SUM)`` of the shifted exponentials (:meth:`Reducer.lse`), in the compute dtype;
* additive ``(B,)`` quantities of row-footprint constraints (violations, gaps, penalties, dual
  objective terms) and row totals: ``all_reduce(SUM)`` (:meth:`Reducer.sum`);
* decisions (finiteness, kernel-domain drift): ``all_reduce(MIN/MAX)``, so every rank takes the
  same branch and stops at the same sweep.

Gradients. Each rank holds a copy of the replicated quantities; the collectives are
autograd-aware with the adjoint of a sum: the backward of ``y = sum_r x_r`` all-reduces the
cotangents, so the gradient of ``sum_r L_r`` (``L_r`` what rank ``r`` backpropagates) reaches
every rank's inputs exactly. Outputs that are the same on every rank (``g``, ``value``, ...)
are passed through :meth:`Reducer.replicated`, which scales their gradient by ``1/W``: when every
rank backpropagates the replicated ``value``, the global objective counts it once and each rank
receives exactly its slice of the single-process gradient (no factor ``W``).

:class:`Reducer` (one process) is the identity; :class:`RowShardReducer` wraps a process group.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["Reducer", "RowShardReducer", "IDENTITY", "make_reducer"]


class Reducer:
    """The identity reducer of a single-process solve: every method returns its input."""

    world: int = 1
    rank: int = 0
    sharded: bool = False

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of a partial sum (any shape; differentiable)."""
        return x

    def lse(self, x: torch.Tensor) -> torch.Tensor:
        """``log sum_r exp(x_r)`` entrywise over ranks (``x``: local log-sum-exps; differentiable)."""
        return x

    def amax(self, x: torch.Tensor) -> torch.Tensor:
        """Entrywise maximum over ranks (no gradient)."""
        return x

    def all(self, flags: torch.Tensor) -> torch.Tensor:
        """Entrywise logical AND over ranks of a bool tensor."""
        return flags

    def max_float(self, value: float) -> float:
        """The largest of a Python float over ranks."""
        return value

    def replicated(self, t: torch.Tensor) -> torch.Tensor:
        """An output that is identical on every rank, with its gradient scaled by ``1 / W``."""
        return t

    def sizes(self, value: int) -> list[int]:
        """``value`` of every rank, in rank order."""
        return [value]

    def agree(self, error: Optional[BaseException]) -> None:
        """Raise ``ValueError`` on every rank when any rank met one (no rank left in a collective)."""
        if error is not None:
            raise error


IDENTITY = Reducer()


class _AllReduceSum(torch.autograd.Function):
    """``sum_r x_r`` on every rank; the backward all-reduces the cotangents (adjoint of a sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = x.detach().clone().contiguous()
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.detach().clone().contiguous()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM, group=ctx.group)
        return total, None


class _AllReduceLSE(torch.autograd.Function):
    """``log sum_r exp(x_r)``: one MAX and one SUM all-reduce; entries that are ``-inf`` on every
    rank stay ``-inf`` (zero gradient). Backward: one SUM all-reduce of the cotangents, times the
    rank's softmax share ``exp(x_r - out)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        dist = torch.distributed
        shift = x.detach().clone().contiguous()
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
        empty = shift == -math.inf
        shift = torch.where(empty, torch.zeros_like(shift), shift)
        total = torch.exp(x.detach() - shift).contiguous()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        out = torch.log(total) + shift
        out = torch.where(empty, torch.full_like(out, -math.inf), out)
        ctx.group = group
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, out = ctx.saved_tensors
        total = grad.detach().clone().contiguous()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM, group=ctx.group)
        live = torch.isfinite(out) & (x > -math.inf)
        share = torch.exp(torch.where(live, x - out, torch.zeros_like(x)))
        return torch.where(live, total * share, torch.zeros_like(total)), None


class RowShardReducer(Reducer):
    """Collectives over a ``torch.distributed`` process group (``group=None``: the default one)."""

    sharded = True

    def __init__(self, group=None) -> None:
        dist = torch.distributed
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        backend = dist.get_backend(group)
        # the device a collective's tensors must live on (NCCL: the rank's CUDA device)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _on(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(self._on(x), self.group).to(x.device)

    def lse(self, x: torch.Tensor) -> torch.Tensor:
        return _AllReduceLSE.apply(self._on(x), self.group).to(x.device)

    def amax(self, x: torch.Tensor) -> torch.Tensor:
        out = self._on(x.detach()).clone().contiguous()
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return out.to(x.device)

    def all(self, flags: torch.Tensor) -> torch.Tensor:
        as_int = self._on(flags.to(torch.int32)).contiguous()
        torch.distributed.all_reduce(as_int, op=torch.distributed.ReduceOp.MIN, group=self.group)
        return as_int.to(flags.device) > 0

    def max_float(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return float(t)

    def replicated(self, t: torch.Tensor) -> torch.Tensor:
        if not t.requires_grad:
            return t
        fixed = t.detach()
        return fixed + (t - fixed) / self.world

    def sizes(self, value: int) -> list[int]:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        parts = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(parts, t, group=self.group)
        return [int(p) for p in parts]

    def agree(self, error: Optional[BaseException]) -> None:
        """Exchange whether each rank met a ``ValueError``; raise the first rank's message on
        every rank (prefixed with the rank it came from)."""
        messages: list = [None] * self.world
        torch.distributed.all_gather_object(messages, None if error is None else str(error), group=self.group)
        for r, msg in enumerate(messages):
            if msg is not None:
                if error is not None and r == self.rank:
                    raise ValueError(f"rank {r}: {msg}") from error
                raise ValueError(f"rank {r}: {msg}")


def make_reducer(shard: Optional[str], group=None) -> Reducer:
    """The reducer for ``shard`` (None: one process; ``"rows"``: the process group ``group``).
    ``ValueError`` (on every rank that calls it) when no process group is initialised."""
    if shard is None:
        if group is not None:
            raise ValueError("group is given but shard=None; expected shard='rows' to solve across a process group")
        return IDENTITY
    if shard != "rows":
        raise ValueError(f"shard={shard!r}; expected None or 'rows'")
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "shard='rows' needs an initialised torch.distributed process group; expected "
            "torch.distributed.init_process_group(...) (or torchrun) before the solve"
        )
    return RowShardReducer(group)
