"""What a geometry is: the object that answers the engine's only questions about costs.

The engine never touches a cost matrix. It holds the duals and asks a geometry for reductions of
the log-plan

    log P_ij = alpha_i + beta_j + (-C_ij + E_ij) / epsilon      (-inf on forbidden pairs)

where ``alpha``, ``beta`` (``(B, n)``, ``(B, m)``) carry the row and column duals and the log
reference weights, and :class:`PairTerms` the pairwise additions of the constraints: block duals
``E_ij = H[g_i, h_j]``, pairs forbidden by a mask or by equal group labels. The reductions are
log-sum-exps over rows, columns and blocks, products ``P v`` and ``P^T u``, ``<C, P>``, and the
dense plan on request (:mod:`otalign.geometry.streaming` computes them tile by tile for any
geometry that can produce cost tiles; :class:`~otalign.geometry.dense.Dense` holds the matrix).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..solvers.footprint import Groups

__all__ = ["Geometry", "PairTerms", "memory_budget", "available_memory", "DENSE_FRACTION"]

#: fraction of the available memory (host RAM, or free CUDA memory) that ``backend="auto"`` lets a
#: dense cost take (with the solver's scratch buffer, a dense solve holds about twice that)
DENSE_FRACTION = 1 / 8


def available_memory(device: torch.device) -> int:
    """Bytes available on ``device``: free CUDA memory, or the host's ``MemAvailable``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def memory_budget(device: torch.device, fraction: float = DENSE_FRACTION) -> int:
    """The bytes a dense ``(B, n, m)`` array may take on ``device`` (``fraction`` of what is free)."""
    return int(available_memory(device) * fraction)


@dataclass
class PairTerms:
    """What the constraints add to the log-kernel pair by pair (beyond ``-C / epsilon``).

    Attributes:
        mask: ``(B', n, m)`` bool, True where a pair is allowed (dense geometries only), or None.
        forbid_labels: pairs ``(row_labels (B', n), col_labels (B', m))`` of int64 labels: a pair
            whose labels are equal is forbidden (``-1`` never matches).
        blocks: ``(footprint, dual)`` for block duals ``(B, Gr, Gc)`` in cost units: entry
            ``(i, j)`` gets ``dual[g_i, h_j] / epsilon`` (0 when either group is ``-1``).
    """

    mask: Optional[torch.Tensor] = None
    forbid_labels: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    blocks: list[tuple["Groups", torch.Tensor]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.mask is None and not self.forbid_labels and not self.blocks


class Geometry:
    """Base class: a batch of ``B'`` cost matrices ``(n, m)`` (``B'`` in ``{1, B}``), held or
    computed on demand.

    Subclasses set ``n``, ``m``, ``batch``, ``dtype`` (the compute dtype: float32 or float64),
    ``out_dtype`` (the input dtype, for results), ``device``, and implement :meth:`cost_tile`
    (the cost of a block of rows and columns) and :meth:`extent`. Everything else the engine
    needs is derived from tiles by :mod:`otalign.geometry.streaming`; a geometry may override it
    with something faster (:class:`~otalign.geometry.dense.Dense` does).
    """

    n: int
    m: int
    batch: int
    dtype: torch.dtype
    out_dtype: torch.dtype
    device: torch.device
    #: True when the whole cost is held as a tensor (``dense()`` is free)
    is_dense: bool = False
    #: the input had a batch dimension (results keep it)
    batched_input: bool = False
    #: rows (columns) of a ragged batch that are padding: ``(B', n)`` bool, True = a real point
    valid_rows: Optional[torch.Tensor] = None
    valid_cols: Optional[torch.Tensor] = None

    # -- to implement ---------------------------------------------------------------------------
    def cost_tile(self, rows: slice, cols: slice) -> torch.Tensor:
        """``(B', len(rows), len(cols))`` costs, differentiable w.r.t. the geometry's tensors."""
        raise NotImplementedError

    def extent(self) -> tuple[float, float]:
        """``(magnitude, spread)``: an upper bound of ``max |C_ij|`` and of the largest cost range
        ``max - min`` over the batch (used to validate epsilon and to start epsilon scaling)."""
        raise NotImplementedError

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The caller's tensors the geometry computes from, named (for gradients and for the
        check that they were not modified in place after a solve)."""
        return []

    # -- provided -------------------------------------------------------------------------------
    @property
    def reductions(self):
        """The module computing the reductions (``lse``, ``block_lse``, ``apply``,
        ``weighted_cost``, ``log_plan``): :mod:`otalign.geometry.streaming` by default."""
        from . import streaming

        return streaming

    def dense(self) -> torch.Tensor:
        """The whole ``(B', n, m)`` cost (computed tile by tile for a lazy geometry)."""
        return self.cost_tile(slice(0, self.n), slice(0, self.m))

    def tile_logits(
        self,
        rows: slice,
        cols: slice,
        eps: float,
        alpha: torch.Tensor,
        beta: torch.Tensor,
        terms: PairTerms,
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, tn, tm)`` log-plan entries of a tile: ``alpha_i + beta_j + (E_ij - C_ij) / eps``,
        ``-inf`` on forbidden pairs. ``alpha``, ``beta`` are the tile's slices ``(B, tn)``,
        ``(B, tm)``. ``out`` (no autograd): a buffer of that shape to write into. Subclasses may
        fuse the cost into one matrix product (:class:`PointCloud`)."""
        if out is None:
            logits = self.cost_tile(rows, cols) * (-1.0 / eps)
            logits = logits + alpha[:, :, None] + beta[:, None, :]
            return apply_pair_terms(logits, rows, cols, eps, terms)
        torch.mul(self.cost_tile(rows, cols), -1.0 / eps, out=out)
        out.add_(alpha[:, :, None]).add_(beta[:, None, :])
        return apply_pair_terms(out, rows, cols, eps, terms, inplace=True)

    def __repr__(self) -> str:
        batch = f"B={self.batch}, " if self.batch > 1 else ""
        return f"{type(self).__name__}({batch}n={self.n}, m={self.m}, dtype={self.dtype})"


def apply_pair_terms(logits: torch.Tensor, rows: slice, cols: slice, eps: float, terms: PairTerms,
                     inplace: bool = False) -> torch.Tensor:
    """Add the block duals and put ``-inf`` on the forbidden pairs of a tile ``(B, tn, tm)``
    (in place with ``inplace=True``, for buffers outside autograd)."""
    for fp, dual in terms.blocks:
        block = fp.expand_tile(dual, rows, cols)
        logits = logits.add_(block, alpha=1.0 / eps) if inplace else logits + block / eps
    if terms.mask is not None:
        drop = ~terms.mask[:, rows, cols]
        logits = logits.masked_fill_(drop, -math.inf) if inplace else logits.masked_fill(drop, -math.inf)
    for row_labels, col_labels in terms.forbid_labels:
        same = (row_labels[:, rows, None] == col_labels[:, None, cols]) & (row_labels[:, rows, None] >= 0)
        logits = logits.masked_fill_(same, -math.inf) if inplace else logits.masked_fill(same, -math.inf)
    return logits
