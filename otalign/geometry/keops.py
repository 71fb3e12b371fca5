"""The ``"keops"`` backend of :class:`~otalign.geometry.PointCloud`: the streaming reductions of
:mod:`otalign.geometry.streaming` written as pykeops ``LazyTensor`` formulas (compiled once per
formula and dtype, then cached by KeOps on disk; gradients by KeOps' own autograd).

Optional: ``pip install otalign[keops]`` (pykeops needs a C++ compiler). The log-plan of a pair
is ``a'_i + b'_j + k <u_i, v_j> + <e_i, h_j> - big * [l_i == l_j]`` where the named cost fuses into
``a'``, ``b'``, ``u``, ``v`` exactly as in the online backend, block duals ``H`` become the dot
product of a one-hot row group ``e_i`` and the column ``h_j = H[:, g_j]``, and labels forbid
pairs through a large negative term (``exp`` of it is exactly 0). Callable costs are not
supported (KeOps needs a formula): use ``"online"`` for them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from .base import PairTerms

if TYPE_CHECKING:  # pragma: no cover
    from .pointcloud import PointCloud

__all__ = ["require", "lse", "block_lse", "apply", "weighted_cost", "log_plan"]

_BIG = {torch.float32: 1e30, torch.float64: 1e300}


def require():
    """The ``pykeops.torch.LazyTensor`` class, or an ImportError that says how to install it."""
    try:
        from pykeops.torch import LazyTensor
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "backend='keops' needs pykeops (and a C++ compiler): pip install 'otalign[keops]'; "
            "backend='online' needs nothing more and works everywhere"
        ) from exc
    return LazyTensor


def _logits(geom: "PointCloud", eps: float, alpha: torch.Tensor, beta: torch.Tensor, terms: PairTerms,
            rows: Optional[torch.Tensor] = None, cols: Optional[torch.Tensor] = None):
    """The ``(B, n, m)`` symbolic log-plan; ``rows``/``cols`` (bool masks) restrict the pairs."""
    LazyTensor = require()
    if terms.mask is not None:
        raise ValueError("backend='keops' takes no pair mask; forbid pairs by groups: Forbid(row_groups=..., col_groups=...)")
    B = alpha.shape[0]
    a, b = alpha, beta
    if geom.cost == "sqeuclidean":
        a = a - geom._row_sq / eps
        b = b - geom._col_sq / eps
    elif geom.cost == "cosine":
        a = a - 1.0 / eps
    u, v = geom._u.expand(B, -1, -1), geom._v.expand(B, -1, -1)
    big = _BIG[alpha.dtype]
    # -inf weights (padding, forced zeros) become -big: exp is exactly 0, and no inf - inf in KeOps
    a = torch.where(torch.isfinite(a), a, torch.full_like(a, -big))
    b = torch.where(torch.isfinite(b), b, torch.full_like(b, -big))
    if rows is not None:
        a = torch.where(rows, a, torch.full_like(a, -big))
    if cols is not None:
        b = torch.where(cols, b, torch.full_like(b, -big))
    A = LazyTensor(a.contiguous()[:, :, None, None])
    Bj = LazyTensor(b.contiguous()[:, None, :, None])
    U = LazyTensor(u.contiguous()[:, :, None, :])
    V = LazyTensor(v.contiguous()[:, None, :, :])
    out = A + Bj + (geom._scale / eps) * (U | V)
    for fp, dual in terms.blocks:
        gr = fp.row_groups.expand(B, -1)
        gc = fp.col_groups.expand(B, -1)
        onehot = torch.nn.functional.one_hot(gr.remainder(fp.n_row_groups + 1), fp.n_row_groups + 1)[..., :-1]
        padded = torch.nn.functional.pad(dual, (0, 1))  # column group -1 -> zero column
        cols_h = padded.gather(2, gc.remainder(fp.n_col_groups + 1)[:, None, :].expand(B, fp.n_row_groups, -1))
        E = LazyTensor(onehot.to(alpha.dtype).contiguous()[:, :, None, :])
        Hj = LazyTensor(cols_h.transpose(1, 2).contiguous()[:, None, :, :])
        out = out + (E | Hj) / eps
    for row_labels, col_labels in terms.forbid_labels:
        r = row_labels.expand(B, -1).to(alpha.dtype)
        c = torch.where(col_labels >= 0, col_labels, torch.full_like(col_labels, -3)).expand(B, -1).to(alpha.dtype)
        Lr = LazyTensor(r.contiguous()[:, :, None, None])
        Lc = LazyTensor(c.contiguous()[:, None, :, None])
        out = out - big * (0.5 - (Lr - Lc).abs()).step()
    return out


def _finish(log_sums: torch.Tensor) -> torch.Tensor:
    """KeOps' log-sum-exp of an all-``-big`` slice is ~``-big``: report it as ``-inf``."""
    big = _BIG[log_sums.dtype]
    return torch.where(log_sums < -0.5 * big, torch.full_like(log_sums, -math.inf), log_sums)


def lse(geom, eps, alpha, beta, terms, dim):
    """Row (``dim=-1``) or column (``dim=-2``) log-sum-exp of the plan."""
    logits = _logits(geom, eps, alpha, beta, terms)
    out = logits.logsumexp(dim=2 if dim == -1 else 1)
    return _finish(out[..., 0])


def block_lse(geom, eps, alpha, beta, terms, footprint):
    """``(B, Gr, Gc)`` block log-sums: one row reduction per column group, then rows by group."""
    B = alpha.shape[0]
    gc = footprint.col_groups.expand(B, -1)
    gr = footprint.row_groups.expand(B, -1)
    per_col_group = []
    for c in range(footprint.n_col_groups):
        logits = _logits(geom, eps, alpha, beta, terms, cols=gc == c)
        per_col_group.append(_finish(logits.logsumexp(dim=2)[..., 0]))  # (B, n)
    rows = torch.stack(per_col_group, dim=1)  # (B, Gc, n)
    out = []
    for r in range(footprint.n_row_groups):
        sel = torch.where((gr == r)[:, None, :], rows, torch.full_like(rows, -math.inf))
        out.append(torch.logsumexp(sel, dim=-1))  # (B, Gc)
    return torch.stack(out, dim=1)


def apply(geom, eps, alpha, beta, terms, v, transpose, log_norm):
    """``P v`` or ``P^T v`` (``v``: ``(B, m, k)`` or ``(B, n, k)``)."""
    LazyTensor = require()
    norm = torch.where(torch.isfinite(log_norm), log_norm, torch.zeros_like(log_norm))
    if transpose:
        logits = _logits(geom, eps, alpha, beta - norm, terms)
        W = LazyTensor(v.contiguous()[:, :, None, :])
        out = (logits.exp() * W).sum(dim=1)
    else:
        logits = _logits(geom, eps, alpha - norm, beta, terms)
        W = LazyTensor(v.contiguous()[:, None, :, :])
        out = (logits.exp() * W).sum(dim=2)
    return out * torch.exp(norm)[:, :, None]


def weighted_cost(geom, eps, alpha, beta, terms):
    """``(B,)`` ``<C, P>``; the cost is the named cost of the geometry, as a formula."""
    LazyTensor = require()
    logits = _logits(geom, eps, alpha, beta, terms)
    B = alpha.shape[0]
    X = LazyTensor(geom.x.expand(B, -1, -1).contiguous()[:, :, None, :])
    Y = LazyTensor(geom.y.expand(B, -1, -1).contiguous()[:, None, :, :])
    if geom.cost == "sqeuclidean":
        cost = ((X - Y) ** 2).sum(-1)
    elif geom.cost == "cosine":
        U = LazyTensor(geom._u.expand(B, -1, -1).contiguous()[:, :, None, :])
        V = LazyTensor(geom._v.expand(B, -1, -1).contiguous()[:, None, :, :])
        cost = 1.0 - (U | V)
    else:
        cost = -(X | Y)
    return (logits.exp() * cost).sum(dim=2)[..., 0].sum(-1)


def log_plan(geom, eps, alpha, beta, terms):
    """The dense log-plan (tile by tile, through the online backend)."""
    from . import streaming

    return streaming.log_plan(geom, eps, alpha, beta, terms)
