"""Gradient modes other than unrolling: implicit differentiation and the envelope theorem.

Both run the forward iterations without autograd (no graph, reusable buffers), then attach
gradients at the solution:

* ``value`` (in both modes): ``value = max_d D(d, theta)`` (strong duality), so by Danskin's
  theorem ``dvalue/dtheta = dD/dtheta`` at ``d*`` with ``d*`` held fixed: ``dvalue/dC = plan``,
  and the weight gradients come from the potentials. Exact at the optimum, no adjoint solve: a
  value-only loss costs one extra reduction in its backward pass.
* ``implicit``, every other output: the final duals ``d*`` are a fixed point of one engine
  sweep, ``d* = T(d*, theta)`` (``theta``: the cost and every constraint tensor that requires
  grad). The implicit function theorem gives ``dL/dtheta = (dT/dtheta)^T lam`` with
  ``(I - J^T) lam = dL/dd*``, ``J = dT/dd``, solved matrix-free by restarted GMRES on
  vector-Jacobian products of ONE sweep (as OTT-JAX's ``implicit_diff`` does with its linear
  solvers), stopped on the relative residual of the linear system, with the fixed-point
  (Neumann) iteration as a fall-back. Generic over constraint types (the sweep is the engine's),
  no dense Jacobian, and the backward graph is one sweep whatever the number of forward
  iterations. The balanced gauge ``(f + t, g - t)`` makes ``I - J^T`` singular, but the
  right-hand side of a gauge-invariant output is orthogonal to it, so the system is consistent.
* ``envelope``: only ``value`` is differentiable.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from .engine import sweep
from .footprint import ROW
from .plan import LogPlan
from .problem import safe_logsumexp
from .registry import Projector
from ..warnings import NonConvergenceWarning

__all__ = ["AdjointReport", "gmres", "implicit_duals", "dual_value", "EnvelopeGuard"]


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


@dataclass
class AdjointReport:
    """What the implicit backward did, per problem (``res.adjoint``). Filled by the backward pass:
    the fields are None until one ran (and describe the last one).

    Attributes:
        converged: ``(B,)`` the relative residual ``||A lam - r|| / ||r||`` reached ``tol``.
        residual: ``(B,)`` that relative residual.
        n_iters: vector-Jacobian products of one sweep that the solve used (all problems).
        method: ``"gmres"``, or ``"gmres+fixed-point"`` when the fall-back ran.
        tol: the tolerance asked for.
    """

    tol: float
    converged: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None
    n_iters: Optional[int] = None
    method: Optional[str] = None


#: restart length of GMRES (Krylov vectors kept; each is the size of the duals)
RESTART = 30


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum(-1)


def _safe_div(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    ok = (d > 0)[:, None]
    return torch.where(ok, x / torch.where(d > 0, d, torch.ones_like(d))[:, None], torch.zeros_like(x))


def gmres(apply_a, rhs: torch.Tensor, x0: torch.Tensor, *, tol: float, max_iter: int, restart: int = RESTART):
    """Batched restarted GMRES for ``A x = rhs``, one independent system per row of ``(B, k)``.

    ``apply_a`` maps ``(B, k)`` to ``(B, k)``. Arnoldi with modified Gram-Schmidt and Givens
    rotations, per problem; stops when every problem's relative residual ``||rhs - A x|| /
    ||rhs||`` is ``<= tol`` or after ``max_iter`` products. Returns ``(x, relative residual (B,),
    products used)``; the residual is recomputed from ``A x`` at the end of each cycle.
    """
    B = rhs.shape[0]
    norm_rhs = rhs.norm(dim=-1)
    scale = torch.where(norm_rhs > 0, norm_rhs, torch.ones_like(norm_rhs))
    x = x0.clone()
    r = rhs - apply_a(x)
    used = 1
    rel = r.norm(dim=-1) / scale
    while used < max_iter and bool((rel > tol).any()):
        beta = r.norm(dim=-1)
        V = [_safe_div(r, beta)]
        H = torch.zeros(B, restart + 1, restart, dtype=rhs.dtype, device=rhs.device)
        cs = torch.zeros(B, restart, dtype=rhs.dtype, device=rhs.device)
        sn = torch.zeros_like(cs)
        g = torch.zeros(B, restart + 1, dtype=rhs.dtype, device=rhs.device)
        g[:, 0] = beta
        j = 0
        for j in range(min(restart, max_iter - used)):
            w = apply_a(V[j])
            used += 1
            for i in range(j + 1):  # modified Gram-Schmidt
                h = _dot(w, V[i])
                H[:, i, j] = h
                w = w - h[:, None] * V[i]
            h_next = w.norm(dim=-1)
            H[:, j + 1, j] = h_next
            V.append(_safe_div(w, h_next))
            for i in range(j):  # previous rotations on the new column
                hij, hi1j = H[:, i, j].clone(), H[:, i + 1, j].clone()
                H[:, i, j] = cs[:, i] * hij + sn[:, i] * hi1j
                H[:, i + 1, j] = -sn[:, i] * hij + cs[:, i] * hi1j
            a_, b_ = H[:, j, j].clone(), H[:, j + 1, j].clone()
            den = torch.sqrt(a_ * a_ + b_ * b_)
            ok = den > 0
            den1 = torch.where(ok, den, torch.ones_like(den))
            cs[:, j] = torch.where(ok, a_ / den1, torch.ones_like(den))
            sn[:, j] = torch.where(ok, b_ / den1, torch.zeros_like(den))
            H[:, j, j] = torch.where(ok, den, a_)
            H[:, j + 1, j] = 0.0
            g[:, j + 1] = -sn[:, j] * g[:, j]
            g[:, j] = cs[:, j] * g[:, j]
            if bool((g[:, j + 1].abs() / scale <= tol).all()):
                break
        k = j + 1
        R = H[:, :k, :k]
        diag = torch.diagonal(R, dim1=-2, dim2=-1)
        # singular directions (exact breakdown, or a consistent singular system): drop them
        R = R + torch.diag_embed(torch.where(diag == 0, torch.ones_like(diag), torch.zeros_like(diag)))
        y = torch.linalg.solve_triangular(R, g[:, :k, None], upper=True)[..., 0]
        y = torch.where(torch.isfinite(y), y, torch.zeros_like(y))
        x = x + torch.einsum("bk,kbn->bn", y, torch.stack(V[:k]))
        r = rhs - apply_a(x)
        used += 1
        rel = r.norm(dim=-1) / scale
    return x, rel, used


def implicit_duals(
    make_plan,
    projectors: list[Projector],
    duals: list[Optional[torch.Tensor]],
    *,
    tol: float,
    max_iter: int,
    warn: bool = True,
) -> tuple[list[Optional[torch.Tensor]], AdjointReport]:
    """Duals equal to ``duals`` in value whose gradient is given by the implicit function theorem.

    ``make_plan(duals)`` builds a differentiable :class:`LogPlan` from the problem's tensors (which
    carry the graph to ``theta``) and the given duals. In the backward pass the adjoint equation
    ``(I - J^T) lam = dL/dd*`` (``J`` the Jacobian of one sweep w.r.t. the duals) is solved by
    GMRES on vector-Jacobian products, stopped on its relative residual ``<= tol`` (at most
    ``max_iter`` products); if GMRES does not get there, the fixed-point iteration
    ``lam <- J^T lam + dL/dd*`` continues from its best iterate for the remaining budget. The
    outcome is recorded in the returned :class:`AdjointReport` (and warned about with
    :class:`~otalign.NonConvergenceWarning` when ``warn``).

    Row sharding (the plan's ``reducer``): each rank holds a copy of the replicated duals (every
    footprint but ``ROW``) and its cotangent for that copy; only their sum over ranks is the
    adjoint of the global problem. The sharded backward runs the fixed-point iteration (GMRES's
    inner products would need a collective each), replacing the copies by their mean over ranks
    after every VJP (the differences between copies are a fixed direction of the extended
    iteration, which would otherwise accumulate), and stops on the largest change over ranks.
    """
    report = AdjointReport(tol=tol)
    ids = [k for k, p in enumerate(projectors) if p.footprint is not None]
    if not ids:
        return duals, report
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

    def jt(lam: torch.Tensor) -> torch.Tensor:  # J^T lam
        vjp = torch.autograd.grad(
            [swept[k] for k in ids], inputs,
            grad_outputs=[g for g in _unpack(lam, swept) if g is not None],
            retain_graph=True, allow_unused=True,
        )
        return _pack([torch.zeros_like(x) if g is None else g for g, x in zip(vjp, inputs)])

    local = [projectors[k].footprint is ROW for k in range(len(duals))]

    def symmetrize(flat: torch.Tensor) -> torch.Tensor:
        """Replicated duals' cotangents: their mean over ranks (their sum is what counts)."""
        if not reducer.sharded:
            return flat
        parts = _unpack(flat, duals)
        parts = [p if p is None or local[k] else reducer.sum(p.detach()) / reducer.world for k, p in enumerate(parts)]
        return _pack(parts)

    def sharded_fixed_point(grad: torch.Tensor):
        grad = symmetrize(grad)
        lam = grad
        scale = grad.abs().amax().clamp(min=torch.finfo(grad.dtype).tiny)
        change, used = math.inf, 0
        while used < max_iter:
            new = symmetrize(jt(lam)) + grad
            used += 1
            change = reducer.max_float(float((new - lam).abs().amax()))
            lam = new
            scale = reducer.amax(torch.maximum(scale, lam.abs().amax()))
            if change <= tol * float(scale) or not math.isfinite(change):
                break
        rel = torch.full((grad.shape[0],), change / float(scale), dtype=grad.dtype, device=grad.device)
        return lam, rel, used

    def gmres_then_fixed_point(grad: torch.Tensor):
        lam, rel, used = gmres(lambda v: v - jt(v), grad, grad, tol=tol, max_iter=max_iter)
        if not bool((rel > tol).any()) or used >= max_iter:
            return lam, rel, used, "gmres"
        scale = grad.norm(dim=-1).clamp(min=torch.finfo(grad.dtype).tiny)
        fp = lam
        while used < max_iter:
            step = jt(fp) + grad
            used += 1
            res_fp = (step - fp).norm(dim=-1) / scale  # residual of the linear system at fp
            better = res_fp < rel
            lam = torch.where(better[:, None], fp, lam)
            rel = torch.where(better, res_fp, rel)
            fp = step
            if bool((rel <= tol).all()) or not bool(torch.isfinite(step).all()):
                break
        return lam, rel, used, "gmres+fixed-point"

    def adjoint(grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if grad is None:
            return None
        with torch.no_grad():
            if reducer.sharded:
                lam, rel, used = sharded_fixed_point(grad)
                method = "fixed-point (sharded)"
            else:
                lam, rel, used, method = gmres_then_fixed_point(grad)
        converged = rel <= tol
        report.converged, report.residual, report.n_iters, report.method = converged, rel, used, method
        if warn and not bool(converged.all()):
            warnings.warn(
                f"the implicit backward's adjoint system did not converge for {int((~converged).sum())} of "
                f"{converged.numel()} problem(s) (largest relative residual {float(rel.max()):.3g} > "
                f"adjoint_tol={tol:g} after {used} products): the gradient is approximate. Solve the forward "
                "problem more tightly, raise adjoint_max_iter, or use grad='unroll'. See res.adjoint.",
                NonConvergenceWarning,
                stacklevel=2,
            )
        return lam

    if out.requires_grad:
        out.register_hook(adjoint)
    return _unpack(out, duals), report


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
