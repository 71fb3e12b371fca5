"""Reductions of the log-plan computed tile by tile: never more than one ``(B, tn, tm)`` block.

Every function takes a :class:`~otalign.geometry.base.Geometry` (which produces the log-plan of
a tile, :meth:`Geometry.tile_logits`), the entropic strength, the row and column terms ``alpha``
(``(B, n)``) and ``beta`` (``(B, m)``) and the :class:`PairTerms`. Log-sum-exps are combined
across tiles in log space (max-shifted), so the result equals the one-shot reduction to rounding.

Gradients: when autograd is recording and an input requires grad, each tile is computed under
:func:`torch.utils.checkpoint.checkpoint`, which keeps only the tile's inputs (slices of ``x``,
``y``, ``alpha``, ``beta``, ...) and recomputes the tile in the backward pass: the backward never
holds more than a tile either, whatever the cost function (a callable cost is differentiated by
autograd on its tile).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint

from .base import Geometry, PairTerms

__all__ = ["tile_sizes", "lse", "block_lse", "apply", "weighted_cost", "log_plan", "TILE_BYTES"]

#: bytes of one tile of the log-plan ``(B, tn, tm)`` (a few such buffers live at once)
TILE_BYTES = 64 * 2**20


def tile_sizes(geom: Geometry, batch: int, tile_bytes: Optional[int] = None) -> tuple[int, int]:
    """``(tn, tm)`` such that ``batch * tn * tm`` entries take about ``tile_bytes``."""
    budget = getattr(geom, "tile_bytes", None) or tile_bytes or TILE_BYTES
    itemsize = torch.finfo(geom.dtype).bits // 8
    entries = max(budget // (itemsize * max(batch, 1)), 1)
    if geom.m * 64 <= entries:  # whole rows fit: tile rows only
        return max(1, min(geom.n, entries // geom.m)), geom.m
    side = max(int(math.isqrt(entries)), 1)
    return min(geom.n, side), min(geom.m, max(side, entries // min(geom.n, side)))


def _blocks(size: int, step: int) -> Iterator[slice]:
    for start in range(0, size, step):
        yield slice(start, min(start + step, size))


def _needs_graph(*tensors: Optional[torch.Tensor], geom: Geometry, terms: PairTerms) -> bool:
    if not torch.is_grad_enabled():
        return False
    own = [t for _, t in geom.tensors()] + [d for _, d in terms.blocks]
    return any(t is not None and t.requires_grad for t in (*tensors, *own))


def _run(fn: Callable[..., torch.Tensor], graph: bool, *args) -> torch.Tensor:
    if graph:
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _safe_lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` that is ``-inf`` (with a zero gradient) where every entry is ``-inf``."""
    shift = x.detach().amax(dim, keepdim=True)
    empty = shift == -math.inf
    shift = torch.where(empty, torch.zeros_like(shift), shift)
    total = torch.exp(x - shift).sum(dim, keepdim=True)
    out = torch.log(torch.where(empty, torch.ones_like(total), total)) + shift
    return torch.where(empty, torch.full_like(out, -math.inf), out).squeeze(dim)


def _combine(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else _safe_lse(torch.stack(parts, dim=-1), -1)


def _scratch(geom: Geometry, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A reusable buffer of ``shape`` held by the geometry (a fresh ``(tn, tm)`` block per tile
    would be page-faulted anew by the allocator at every reduction)."""
    cache = geom.__dict__.setdefault("_scratch_buffers", {})
    buf = cache.get((shape, dtype))
    if buf is None:
        cache.clear()  # one size at a time (tiles only differ at the edges)
        buf = cache[(shape, dtype)] = torch.empty(shape, dtype=dtype, device=geom.device)
    return buf


def _tile_buffer(geom: Geometry, B: int, tn: int, tm: int, rows: slice, cols: slice, dtype: torch.dtype) -> torch.Tensor:
    """The ``(B, rows, cols)`` view of the geometry's reusable ``(B, tn, tm)`` buffer."""
    buf = _scratch(geom, (B, tn, tm), dtype)
    size = (B, rows.stop - rows.start, cols.stop - cols.start)
    return buf if size == buf.shape else buf.view(-1)[: size[0] * size[1] * size[2]].view(size)


def _lse_into(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` along ``dim`` computed in place in ``logits`` (destroyed)."""
    shift = torch.amax(logits, dim=dim, keepdim=True)
    empty = shift == -math.inf
    shift.masked_fill_(empty, 0.0)
    logits.sub_(shift).clamp_(min=math.log(torch.finfo(logits.dtype).tiny) + 1.0).exp_()
    out = logits.sum(dim).log_().add_(shift.squeeze(dim))
    return out.masked_fill_(empty.squeeze(dim), -math.inf)


def lse(geom: Geometry, eps: float, alpha: torch.Tensor, beta: torch.Tensor, terms: PairTerms, dim: int) -> torch.Tensor:
    """``log sum_j P_ij`` (``dim=-1``, ``(B, n)``) or ``log sum_i P_ij`` (``dim=-2``, ``(B, m)``)."""
    B = alpha.shape[0]
    tn, tm = tile_sizes(geom, B)
    graph = _needs_graph(alpha, beta, geom=geom, terms=terms)
    reduce_dim = -1 if dim == -1 else -2

    def tile(a, b, rows, cols):
        if graph:
            return _safe_lse(geom.tile_logits(rows, cols, eps, a, b, terms), reduce_dim)
        buf = _tile_buffer(geom, B, tn, tm, rows, cols, a.dtype)
        return _lse_into(geom.tile_logits(rows, cols, eps, a, b, terms, out=buf), reduce_dim)

    out = []
    if dim == -1:
        for rows in _blocks(geom.n, tn):
            parts = [_run(lambda a, b, r=rows, c=cols: tile(a, b, r, c), graph, alpha[:, rows], beta[:, cols])
                     for cols in _blocks(geom.m, tm)]
            out.append(_combine(parts))
    else:
        for cols in _blocks(geom.m, tm):
            parts = [_run(lambda a, b, r=rows, c=cols: tile(a, b, r, c), graph, alpha[:, rows], beta[:, cols])
                     for rows in _blocks(geom.n, tn)]
            out.append(_combine(parts))
    return torch.cat(out, dim=1)


def block_lse(geom: Geometry, eps: float, alpha: torch.Tensor, beta: torch.Tensor, terms: PairTerms, footprint) -> torch.Tensor:
    """``(B, Gr, Gc)`` log of the block sums of the plan over the groups of ``footprint``."""
    B = alpha.shape[0]
    tn, tm = tile_sizes(geom, B)
    graph = _needs_graph(alpha, beta, geom=geom, terms=terms)

    def tile(a, b, rows, cols):
        return footprint.log_reduce_tile(geom.tile_logits(rows, cols, eps, a, b, terms), rows, cols)

    parts = [_run(lambda a, b, r=rows, c=cols: tile(a, b, r, c), graph, alpha[:, rows], beta[:, cols])
             for rows in _blocks(geom.n, tn) for cols in _blocks(geom.m, tm)]
    return _combine(parts)


def apply(
    geom: Geometry, eps: float, alpha: torch.Tensor, beta: torch.Tensor, terms: PairTerms, v: torch.Tensor,
    transpose: bool, log_norm: torch.Tensor,
) -> torch.Tensor:
    """``P v`` (``v``: ``(B, m, k)``, result ``(B, n, k)``) or ``P^T v`` (``transpose``: ``v``
    ``(B, n, k)``, result ``(B, m, k)``). ``log_norm`` is the log marginal on the result's side
    (``(B, n)`` or ``(B, m)``): entries are exponentiated relative to it (no overflow)."""
    B = alpha.shape[0]
    tn, tm = tile_sizes(geom, B)
    graph = _needs_graph(alpha, beta, v, log_norm, geom=geom, terms=terms)
    norm = torch.where(torch.isfinite(log_norm), log_norm, torch.zeros_like(log_norm))

    def tile(a, b, vv, nn, rows, cols):
        shift = nn[:, None, :] if transpose else nn[:, :, None]
        if graph:
            weights = torch.exp(geom.tile_logits(rows, cols, eps, a, b, terms) - shift)
        else:  # in the reusable buffer
            weights = geom.tile_logits(rows, cols, eps, a, b, terms, out=_tile_buffer(geom, B, tn, tm, rows, cols, a.dtype))
            weights.sub_(shift).exp_()
        # (B, tn, tm) entries of P relative to the marginal on the result's side: <= 1
        return weights.transpose(1, 2) @ vv if transpose else weights @ vv

    out = []
    if transpose:
        for cols in _blocks(geom.m, tm):
            acc = sum(_run(lambda a, b, vv, nn, r=rows, c=cols: tile(a, b, vv, nn, r, c), graph,
                           alpha[:, rows], beta[:, cols], v[:, rows], norm[:, cols]) for rows in _blocks(geom.n, tn))
            out.append(acc)
    else:
        for rows in _blocks(geom.n, tn):
            acc = sum(_run(lambda a, b, vv, nn, r=rows, c=cols: tile(a, b, vv, nn, r, c), graph,
                           alpha[:, rows], beta[:, cols], v[:, cols], norm[:, rows]) for cols in _blocks(geom.m, tm))
            out.append(acc)
    return torch.cat(out, dim=1) * torch.exp(norm)[:, :, None]


def weighted_cost(geom: Geometry, eps: float, alpha: torch.Tensor, beta: torch.Tensor, terms: PairTerms) -> torch.Tensor:
    """``(B,)`` transport cost ``<C, P>``."""
    B = alpha.shape[0]
    tn, tm = tile_sizes(geom, B)
    graph = _needs_graph(alpha, beta, geom=geom, terms=terms)

    def tile(a, b, rows, cols):
        cost = geom.cost_tile(rows, cols).expand(B, -1, -1)
        if graph:
            plan = torch.exp(geom.tile_logits(rows, cols, eps, a, b, terms))
            return torch.where(plan > 0, plan * cost, torch.zeros_like(plan)).sum((-2, -1))
        plan = geom.tile_logits(rows, cols, eps, a, b, terms, out=_tile_buffer(geom, B, tn, tm, rows, cols, a.dtype))
        plan.exp_()
        # <P, C> as a batched dot product: no temporary the size of the tile
        return torch.bmm(plan.reshape(B, 1, -1), cost.reshape(B, -1, 1)).reshape(B)

    return sum(_run(lambda a, b, r=rows, c=cols: tile(a, b, r, c), graph, alpha[:, rows], beta[:, cols])
               for rows in _blocks(geom.n, tn) for cols in _blocks(geom.m, tm))


def log_plan(geom: Geometry, eps: float, alpha: torch.Tensor, beta: torch.Tensor, terms: PairTerms) -> torch.Tensor:
    """The dense ``(B, n, m)`` log-plan, assembled from tiles."""
    B = alpha.shape[0]
    tn, tm = tile_sizes(geom, B)
    rows_out = []
    for rows in _blocks(geom.n, tn):
        rows_out.append(torch.cat([geom.tile_logits(rows, cols, eps, alpha[:, rows], beta[:, cols], terms)
                                   for cols in _blocks(geom.m, tm)], dim=2))
    return torch.cat(rows_out, dim=1)


def cost_extent(geom: Geometry) -> tuple[float, float]:
    """``(max |C|, max over the batch of max C - min C)``, one pass over the cost tiles; raises
    ``ValueError`` on a non-finite cost (a callable cost is only checked this way)."""
    tn, tm = tile_sizes(geom, geom.batch)
    low = torch.full((geom.batch,), math.inf, dtype=geom.dtype, device=geom.device)
    high = torch.full((geom.batch,), -math.inf, dtype=geom.dtype, device=geom.device)
    with torch.no_grad():
        for rows in _blocks(geom.n, tn):
            for cols in _blocks(geom.m, tm):
                tile = geom.cost_tile(rows, cols).expand(geom.batch, -1, -1)
                if not bool(torch.isfinite(tile).all()):
                    raise ValueError("cost callable returned non-finite values; expected finite costs")
                lo, hi = torch.aminmax(tile.flatten(1), dim=1)
                low, high = torch.minimum(low, lo), torch.maximum(high, hi)
    magnitude = float(torch.maximum(low.abs(), high.abs()).max())
    return magnitude, float((high - low).max())
