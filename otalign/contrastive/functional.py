"""Pure functional core of the contrastive layer.

Contrastive learning as distribution alignment (Chen et al., NeurIPS 2024). Two views
``z_a``, ``z_b`` of shape ``(B, D)``:

* **joint** layout (default): ``Z = [z_a; z_b]`` with L2-normalised rows (``N = 2B``), cost
  ``C = -Z Z^T`` (minus the cosine), Gibbs kernel ``K = exp(-C / epsilon)`` with the diagonal
  forbidden (self-pairs are never candidates); row ``i``'s positive is ``t(i) = i +- B``.
* **cross** layout: the ``B x B`` plan between the views, cost ``-z_a z_b^T``, positives on the
  diagonal; the loss is averaged over both directions (a -> b and b -> a).

The plan is computed by the solver layer (:func:`otalign.solve`, Shannon entropy, the given
constraint set, unrolled gradients), started from ``v = 1`` and run for exactly ``n_iter`` sweeps
(rows then columns). Every loss depends on the plan only through ``K diag(v)``: the plan with its
row scaling removed, whose log is returned as ``logits`` (``log K_ij + log v_j``). With
``n_iter = 0``, ``v = 1`` and the solver is not called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F

from .. import constraints as C
from ..solvers import OTResult, solve
from .divergences import Divergence
from .targets import Target

__all__ = ["LAYOUTS", "views_cost", "unit_marginals", "plan_logits", "LossComponents", "contrastive_loss"]

LAYOUTS = ("joint", "cross")

ConstraintSpec = Union[C.ConstraintSet, Callable[..., Any], None]


def views_cost(z_a: torch.Tensor, z_b: torch.Tensor, layout: str = "joint") -> torch.Tensor:
    """Cost ``-cos`` between normalised views: ``(2B, 2B)`` (joint) or ``(B, B)`` (cross)."""
    za, zb = F.normalize(z_a, dim=-1), F.normalize(z_b, dim=-1)
    if layout == "cross":
        return -(za @ zb.T)
    z = torch.cat([za, zb], dim=0)
    return -(z @ z.T)


def unit_marginals(rho: Union[float, tuple[float, float], None] = None) -> Callable[..., C.ConstraintSet]:
    """Constraint factory: every row and column of the plan has target mass 1 (hard, or
    KL-relaxed with strength ``rho``, a number or a pair; ``math.inf`` = hard)."""

    def build(n: int, *, device=None, dtype=torch.float32, **_: Any) -> C.ConstraintSet:
        ones = torch.ones(n, device=device, dtype=dtype)
        if rho is None:
            return C.balanced(ones, ones)
        return C.unbalanced(rho, ones, ones)

    build.__doc__ = f"unit marginals, rho={rho!r}"
    build.rho = rho  # type: ignore[attr-defined]
    return build


def _constraint_set(spec: ConstraintSpec, n: int, **context: Any) -> C.ConstraintSet:
    if spec is None:
        return unit_marginals()(n, **context)
    if isinstance(spec, (C.ConstraintSet, C.Constraint, list, tuple)):
        return C.as_constraint_set(spec)
    return C.as_constraint_set(spec(n, **context))


def plan_logits(
    cost: torch.Tensor,
    *,
    epsilon: float,
    n_iter: int,
    constraints: ConstraintSpec = None,
    layout: str = "joint",
    detach_scalings: bool = False,
    domains: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, Optional[OTResult]]:
    """``log K_ij + log v_j`` (``(N, N)``, ``-inf`` on the forbidden diagonal in the joint layout)
    after ``n_iter`` sweeps of the solver under ``constraints``, and the solver's result (None for
    ``n_iter = 0``)."""
    N = cost.shape[0]
    logits = -cost / epsilon
    if layout == "joint":
        logits = logits.masked_fill(torch.eye(N, dtype=torch.bool, device=cost.device), -math.inf)
    if n_iter == 0:
        return logits, None
    cons = _constraint_set(constraints, N, device=cost.device, dtype=cost.dtype, domains=domains, labels=labels)
    if layout == "joint":
        cons = cons + [C.Forbid(mask="diagonal")]
    res = solve(
        cost, cons, epsilon=epsilon, tol=torch.finfo(torch.float64).tiny, max_iter=n_iter,
        check_every=n_iter, entropy="shannon", grad="unroll", center=False, translation=False, warn=False,
    )
    # log P_ij - f_i / eps = (g_j + block duals - C_ij) / eps: the plan with its rows unscaled
    scaled = res.log_plan - (res.f / epsilon)[:, None]
    if detach_scalings:  # keep the value, cut the gradient through the scalings
        finite = torch.isfinite(logits) & torch.isfinite(scaled)
        shift = torch.where(finite, scaled - logits, torch.zeros_like(scaled)).detach()
        scaled = torch.where(torch.isfinite(scaled), logits + shift, scaled.detach())
    return scaled, res


@dataclass
class LossComponents:
    """Everything a training loop may log (all 0-dim tensors except ``per_anchor``)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]  # mean of each divergence term
    per_anchor: torch.Tensor  # (N,) loss of each anchor (averaged over directions in cross layout)
    marginal_error: torch.Tensor  # mean L1 distance of the plan's row and column sums to 1
    plan_entropy: torch.Tensor  # mean entropy of the rows of the row-normalised plan (nats)


def _diagnostics(logits: torch.Tensor, res: Optional[OTResult]) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginal error of the plan (mean L1 distance of row and column sums to 1) and the mean
    entropy of the rows of the row-normalised plan."""
    with torch.no_grad():
        if res is None:
            plan = torch.exp(logits)
            rows, cols = plan.sum(1), plan.sum(0)
        else:
            rows, cols = res.marginals
        error = ((rows - 1).abs().sum() + (cols - 1).abs().sum()) / (2 * rows.shape[0])
        logp = torch.log_softmax(logits, dim=-1)
        entropy = -(torch.exp(logp) * torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))).sum(-1).mean()
    return error, entropy


def _one_direction(z_a, z_b, *, epsilon, n_iter, constraints, target, divergence, layout, domains, labels,
                   detach_scalings, diagnostics):
    cost = views_cost(z_a, z_b, layout)
    logits, res = plan_logits(cost, epsilon=epsilon, n_iter=n_iter, constraints=constraints, layout=layout,
                              detach_scalings=detach_scalings, domains=domains, labels=labels)
    B = z_a.shape[0]
    T = target.matrix(B, layout, domains=domains, labels=labels, dtype=logits.dtype, device=logits.device)
    terms = divergence.terms(logits, T)
    nan = torch.full((), math.nan, dtype=logits.dtype, device=logits.device)
    error, entropy = _diagnostics(logits, res) if diagnostics else (nan, nan)
    return terms, error, entropy


def contrastive_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    *,
    epsilon: float,
    n_iter: int,
    divergence: Divergence,
    target: Target,
    constraints: ConstraintSpec = None,
    layout: str = "joint",
    domains: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    detach_scalings: bool = False,
    diagnostics: bool = True,
) -> LossComponents:
    """The generalised contrastive loss of two views ``(B, D)`` (mean over anchors).

    Inputs in float16/bfloat16 are computed in float32 (autocast is disabled inside); the loss is
    returned in the computation dtype. ``diagnostics=False`` skips the marginal error and entropy
    (reported as NaN), which a plain forward pass does not need.
    """
    dtype = torch.float64 if z_a.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        z_a, z_b = z_a.to(dtype), z_b.to(dtype)
        kw = dict(epsilon=epsilon, n_iter=n_iter, constraints=constraints, target=target, divergence=divergence,
                  layout=layout, domains=domains, labels=labels, detach_scalings=detach_scalings,
                  diagnostics=diagnostics)
        terms, err, ent = _one_direction(z_a, z_b, **kw)
        if layout == "cross":  # both directions: symmetric in (z_a, z_b)
            back, err2, ent2 = _one_direction(z_b, z_a, **kw)
            terms = {k: (v + back[k]) / 2 for k, v in terms.items()}
            err, ent = (err + err2) / 2, (ent + ent2) / 2
        per_anchor = sum(terms.values())
        return LossComponents(
            loss=per_anchor.mean(),
            terms={k: v.mean() for k, v in terms.items()},
            per_anchor=per_anchor,
            marginal_error=err,
            plan_entropy=ent,
        )
