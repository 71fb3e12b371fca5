"""Broadcast log-sum-exp reductions ``log sum_dim exp(base + vec)`` for the barycentre iterations.

``base`` is the log-kernel ``-C / epsilon`` (``(B', 1, n, m)``, ``-inf`` on forbidden pairs) and
``vec`` a log-scaling broadcast along one axis (``(B, K, 1, m)`` or ``(B, K, n, 1)``). Without
autograd the sum runs inside one reusable ``(B, K, n, m)`` buffer (no ``n x m`` temporary per
iteration); with autograd a custom function saves only its inputs and output and recomputes the
softmax in the backward pass, so unrolled iterations grow the graph by ``O(K (n + m))`` per
reduction, not by ``O(K n m)``. :func:`lse_keep` is the opposite trade for the implicit
gradient's adjoint iteration, which differentiates the same reduction many times: it keeps the
softmax, so that each vector-Jacobian product is a batched matrix-vector product.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["lse", "lse_keep", "exp_floor"]

_NEG_INF = -math.inf


def exp_floor(dtype: torch.dtype) -> float:
    """Smallest argument whose ``exp`` is a normal float. Shifted logits are clamped there before
    ``exp``: on CPU, exp of arguments with denormal results runs a slow scalar path, while those
    terms are below the resolution of a sum whose largest term is 1."""
    return math.log(torch.finfo(dtype).tiny) + 1.0


def _lse_into(base: torch.Tensor, vec: torch.Tensor, dim: int, buf: torch.Tensor) -> torch.Tensor:
    torch.add(base, vec, out=buf)
    shift = torch.amax(buf, dim=dim, keepdim=True)
    empty = shift == _NEG_INF
    shift = torch.where(empty, torch.zeros_like(shift), shift)
    buf.sub_(shift).clamp_(min=exp_floor(buf.dtype)).exp_()
    out = buf.sum(dim).log_().add_(shift.squeeze(dim))
    return out.masked_fill_(empty.squeeze(dim), _NEG_INF)


class _BroadcastLSE(torch.autograd.Function):
    """Differentiable broadcast log-sum-exp with a memory-light backward (softmax recomputed)."""

    @staticmethod
    def forward(ctx, base: torch.Tensor, vec: torch.Tensor, dim: int) -> torch.Tensor:  # noqa: ANN001
        shape = torch.broadcast_shapes(base.shape, vec.shape)
        buf = torch.empty(shape, dtype=vec.dtype, device=vec.device)
        out = _lse_into(base, vec, dim, buf)
        ctx.save_for_backward(base, vec, out)
        ctx.dim = dim
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        base, vec, out = ctx.saved_tensors
        dim = ctx.dim
        live = torch.isfinite(out)
        safe = torch.where(live, out, torch.zeros_like(out)).unsqueeze(dim)
        weights = torch.exp(base + vec - safe)  # softmax along dim; 0 on -inf entries
        weights.mul_(torch.where(live, grad, torch.zeros_like(grad)).unsqueeze(dim))
        grad_base = weights.sum_to_size(base.shape) if ctx.needs_input_grad[0] else None
        grad_vec = weights.sum_to_size(vec.shape) if ctx.needs_input_grad[1] else None
        return grad_base, grad_vec, None


def lse(base: torch.Tensor, vec: torch.Tensor, dim: int, buf: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``log sum exp(base + vec)`` along ``dim`` (broadcasting ``base`` and ``vec``).

    Entirely ``-inf`` slices give ``-inf`` (with a zero, not NaN, gradient). ``buf`` is scratch
    space of the broadcast shape, used when no gradient is recorded.
    """
    if torch.is_grad_enabled() and (base.requires_grad or vec.requires_grad):
        return _BroadcastLSE.apply(base, vec, dim)
    if buf is None:
        buf = torch.empty(torch.broadcast_shapes(base.shape, vec.shape), dtype=vec.dtype, device=vec.device)
    return _lse_into(base, vec, dim, buf)


class _KeptSoftmaxLSE(torch.autograd.Function):
    """Broadcast log-sum-exp that keeps its softmax ``S`` (the full broadcast shape); the gradient
    w.r.t. ``vec`` is then a batched matrix-vector product with ``S``. ``base`` gets no gradient."""

    @staticmethod
    def forward(ctx, base: torch.Tensor, vec: torch.Tensor, dim: int) -> torch.Tensor:  # noqa: ANN001
        x = base + vec
        out = torch.logsumexp(x, dim)
        live = torch.isfinite(out)
        safe = torch.where(live, out, torch.zeros_like(out)).unsqueeze(dim)
        soft = torch.exp(x.sub_(safe)).mul_(live.unsqueeze(dim))  # 0 on -inf entries and empty slices
        soft = torch.where(torch.isnan(soft), 0.0, soft)
        ctx.save_for_backward(soft)
        ctx.dim = dim
        return torch.where(live, out, _NEG_INF)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (soft,) = ctx.saved_tensors
        grad = torch.where(torch.isfinite(grad), grad, 0.0)
        if ctx.dim in (-1, soft.dim() - 1):  # out_i = LSE_j: d vec_j = sum_i S_ij grad_i
            grad_vec = torch.matmul(grad.unsqueeze(-2), soft)
        else:  # out_j = LSE_i: d vec_i = sum_j S_ij grad_j
            grad_vec = torch.matmul(soft, grad.unsqueeze(-1))
        return None, grad_vec, None


def lse_keep(base: torch.Tensor, vec: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`lse` over the last (``dim=-1``) or second-to-last (``dim=-2``) axis of a 4-D
    broadcast, differentiable w.r.t. ``vec`` only, with a backward of one batched mat-vec."""
    if base.requires_grad:
        raise ValueError("lse_keep does not differentiate w.r.t. base")
    return _KeptSoftmaxLSE.apply(base, vec, dim)
