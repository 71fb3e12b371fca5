"""Footprints: how a dual variable enters the log-plan, and which marginal of the plan it controls.

Every dual update in otalign has the same shape: read a marginal of the current plan, move the
dual, which rescales the entries of the plan it touches. The footprint says which entries:

* ``ROW``: a vector ``(B, n)`` added to every entry of its row; controls the row sums ``P 1``.
* ``COL``: a vector ``(B, m)`` added to every entry of its column; controls ``P^T 1``.
* ``SCALAR``: one number per problem ``(B,)`` added everywhere; controls the total mass.
* :class:`Groups`: a matrix ``(B, Gr, Gc)`` added to the entries of block ``(r, c)``; controls the
  block masses ``sum_{i in r, j in c} P_ij``.

A dual ``d`` with footprint ``F`` adds ``expand_F(d) / epsilon`` to ``log P``; the corresponding
marginal is the adjoint reduction (a log-sum-exp over the same entries).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Footprint", "ROW", "COL", "SCALAR", "Groups"]


class Footprint:
    """Base class; the three separable footprints are singletons, :class:`Groups` has data."""

    name = "footprint"

    def __repr__(self) -> str:
        return self.name.upper()


class _Row(Footprint):
    name = "row"


class _Col(Footprint):
    name = "col"


class _Scalar(Footprint):
    name = "scalar"


ROW: Footprint = _Row()
COL: Footprint = _Col()
SCALAR: Footprint = _Scalar()


@dataclass(eq=False)
class Groups(Footprint):
    """Block footprint: rows in ``row_groups`` (``(B', n)``, ids ``0..Gr-1`` or ``-1`` for none),
    columns in ``col_groups`` (``(B', m)``). The dual has shape ``(B, Gr, Gc)``."""

    row_groups: torch.Tensor
    col_groups: torch.Tensor
    n_row_groups: int
    n_col_groups: int
    name = "groups"

    def expand(self, dual: torch.Tensor) -> torch.Tensor:
        """``(B, Gr, Gc) -> (B, n, m)``: entry ``(i, j)`` gets ``dual[gr_i, gc_j]`` (0 if ungrouped)."""
        B = dual.shape[0]
        padded = torch.nn.functional.pad(dual, (0, 1, 0, 1))  # group -1 -> the zero pad
        gr = self.row_groups.remainder(self.n_row_groups + 1)  # -1 -> Gr
        gc = self.col_groups.remainder(self.n_col_groups + 1)
        n, m = gr.shape[-1], gc.shape[-1]
        rows = padded.gather(1, gr.expand(B, n)[:, :, None].expand(B, n, self.n_col_groups + 1))
        return rows.gather(2, gc.expand(B, m)[:, None, :].expand(B, n, m))

    def expand_tile(self, dual: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """The ``(B, tn, tm)`` tile ``rows x cols`` of :meth:`expand`."""
        B = dual.shape[0]
        padded = torch.nn.functional.pad(dual, (0, 1, 0, 1))
        gr = self.row_groups[:, rows].remainder(self.n_row_groups + 1)
        gc = self.col_groups[:, cols].remainder(self.n_col_groups + 1)
        tn, tm = gr.shape[-1], gc.shape[-1]
        picked = padded.gather(1, gr.expand(B, tn)[:, :, None].expand(B, tn, self.n_col_groups + 1))
        return picked.gather(2, gc.expand(B, tm)[:, None, :].expand(B, tn, tm))

    def log_reduce(self, log_p: torch.Tensor) -> torch.Tensor:
        """``(B, n, m) -> (B, Gr, Gc)``: log of the block sums of ``exp(log_p)``, stably."""
        return self.log_reduce_tile(log_p, slice(0, log_p.shape[1]), slice(0, log_p.shape[2]))

    def log_reduce_tile(self, log_p: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """``(B, Gr, Gc)`` log block sums of a tile ``(B, tn, tm)`` of the log-plan (rows
        ``rows``, columns ``cols``)."""
        B, n, m = log_p.shape
        gr = self.row_groups[:, rows].remainder(self.n_row_groups + 1).expand(B, n)
        gc = self.col_groups[:, cols].remainder(self.n_col_groups + 1).expand(B, m)
        per_col_group = _group_lse(log_p, gc[:, None, :].expand(B, n, m), self.n_col_groups + 1)
        out = _group_lse(
            per_col_group.transpose(1, 2),
            gr[:, None, :].expand(B, self.n_col_groups + 1, n),
            self.n_row_groups + 1,
        ).transpose(1, 2)
        return out[:, : self.n_row_groups, : self.n_col_groups]


def _group_lse(x: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Log-sum-exp of ``x`` along the last dim within groups given by ``index`` (same shape)."""
    shape = x.shape[:-1] + (n_groups,)
    neg_inf = torch.full(shape, -torch.inf, dtype=x.dtype, device=x.device)
    shift = neg_inf.scatter_reduce(-1, index, x.detach(), reduce="amax", include_self=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    sums = torch.zeros(shape, dtype=x.dtype, device=x.device).scatter_add(
        -1, index, torch.exp(x - shift.gather(-1, index))
    )
    positive = sums > 0
    log_sums = torch.log(torch.where(positive, sums, torch.ones_like(sums)))
    return torch.where(positive, log_sums + shift, torch.full_like(sums, -torch.inf))
