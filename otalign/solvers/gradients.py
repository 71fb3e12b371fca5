"""Gradient modes other than unrolling: implicit differentiation and the envelope theorem.

Both run the forward iterations without autograd (no graph, reusable buffers), then attach
gradients at the solution:

* ``implicit``: the final duals ``d*`` are a fixed point of one engine sweep, ``d* = T(d*, theta)``
  (``theta``: the cost and every constraint tensor that requires grad). The implicit function
  theorem gives ``dL/dtheta = (dT/dtheta)^T lam`` with ``lam = (dT/dd)^T lam + dL/dd*``, solved
  matrix-free by fixed-point (Neumann) iteration on vector-Jacobian products of ONE sweep, to its
  own tolerance. Generic over constraint types (the sweep is the engine's), no dense Jacobian, and
  the backward graph is one sweep whatever the number of forward iterations.
* ``envelope``: ``value = max_d D(d, theta)`` (strong duality), so by Danskin's theorem
  ``dvalue/dtheta = dD/dtheta`` at ``d*`` with ``d*`` held fixed: ``dvalue/dC = plan``, and the
  weight gradients come from the potentials. Only ``value`` is differentiable in this mode.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .engine import sweep
from .footprint import ROW
from .plan import LogPlan
from .problem import safe_logsumexp
from .registry import Projector

__all__ = ["implicit_duals", "dual_value", "EnvelopeGuard"]


def _pack(tensors: list[Optional[torch.Tensor]]) -> torch.Tensor:
    B = next(t for t in tensors if t is not None).shape[0]
    return torch.cat([t.reshape(B, -1) for t in tensors if t is not None], dim=1)


def _unpack(flat: torch.Tensor, like: list[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
    out, start = [], 0
    for t in like:
        if t is None:
            out.append(None)
            continue
        size = t[0].numel()
        out.append(flat[:, start:start + size].reshape(t.shape))
        start += size
    return out


def implicit_duals(
    make_plan,
    projectors: list[Projector],
    duals: list[Optional[torch.Tensor]],
    *,
    tol: float,
    max_iter: int,
) -> list[Optional[torch.Tensor]]:
    """Duals equal to ``duals`` in value whose gradient is given by the implicit function theorem.

    ``make_plan(duals)`` builds a differentiable :class:`LogPlan` from the problem's tensors (which
    carry the graph to ``theta``) and the given duals. The adjoint equation is iterated until the
    relative change of ``lam`` is below ``tol`` (at most ``max_iter`` VJPs).

    Row sharding (the plan's ``reducer``): each rank holds a copy of the replicated duals (every
    footprint but ``ROW``) and its cotangent for that copy; only their sum over ranks is the
    adjoint of the global problem. The iteration therefore replaces them by their mean over
    ranks after every VJP (the differences between copies are a fixed direction of the extended
    iteration, which would otherwise accumulate), and stops on the largest change over ranks.
    """
    ids = [k for k, p in enumerate(projectors) if p.footprint is not None]
    if not ids:
        return duals
    with torch.enable_grad():
        z0 = [None if d is None else d.detach().requires_grad_(True) for d in duals]
        state = make_plan(z0)
        reducer = state.reducer
        sweep(state, projectors, ids, None)
        swept = list(state.duals)
        t_flat = _pack(swept)
        inputs = [z0[k] for k in ids]
        # value: exactly the forward duals; gradient path: through one sweep, to theta
        out = t_flat - t_flat.detach() + _pack(duals).detach()

    local = [projectors[k].footprint is ROW for k in range(len(duals))]

    def symmetrize(flat: torch.Tensor) -> torch.Tensor:
        """Replicated duals' cotangents: their mean over ranks (their sum is what counts)."""
        if not reducer.sharded:
            return flat
        parts = _unpack(flat, duals)
        parts = [p if p is None or local[k] else reducer.sum(p.detach()) / reducer.world for k, p in enumerate(parts)]
        return _pack(parts)

    def adjoint(grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if grad is None:
            return None
        grad = symmetrize(grad)
        lam = grad
        scale = grad.abs().amax().clamp(min=torch.finfo(grad.dtype).tiny)
        for _ in range(max_iter):
            vjp = torch.autograd.grad(
                [swept[k] for k in ids], inputs,
                grad_outputs=[g for g in _unpack(lam, swept) if g is not None],
                retain_graph=True, allow_unused=True,
            )
            parts = [torch.zeros_like(x) if g is None else g for g, x in zip(vjp, inputs)]
            new = symmetrize(_pack(parts)) + grad
            change = reducer.max_float(float((new - lam).abs().amax()))
            lam = new
            scale = reducer.amax(torch.maximum(scale, lam.abs().amax()))
            if change <= tol * float(scale) or not math.isfinite(change):
                break
        return lam

    if out.requires_grad:
        out.register_hook(adjoint)
    return _unpack(out, duals)


def dual_value(state: LogPlan, projectors: list[Projector], entropy: str) -> torch.Tensor:
    """``(B,)`` dual objective ``D(d, theta) = sum_k -Phi_k*(-d_k) - eps * (sum P - sum R)``.

    (``sum R`` only for ``entropy="kl"``; ``"shannon"`` drops the constant as the primal does.)
    At the optimum it equals the primal value (strong duality). The plan's mass comes from its
    row marginal: no ``n x m`` array.
    """
    # fresh: cached marginals may lack the graph
    total = torch.exp(state.reducer.lse(safe_logsumexp(state._row_lse(), -1)))
    value = -state.eps * total
    if entropy == "kl":
        value = value + state.eps * state.reference_mass()
    for proj, d in zip(projectors, state.duals):
        if d is not None:
            term = proj.dual_objective(d)
            value = value + (state.reducer.sum(term) if proj.footprint is ROW else term)
    return value


class EnvelopeGuard(torch.autograd.Function):
    """Identity in the forward pass; the backward pass raises: in ``grad="envelope"`` mode only
    ``value`` is differentiable."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:  # noqa: D401
        ctx.name = "this output"
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise RuntimeError(
            "grad='envelope' differentiates res.value only (Danskin's theorem); use "
            "grad='implicit' or grad='unroll' to differentiate the plan, potentials or marginals"
        )
