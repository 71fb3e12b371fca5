"""Pure functional core of the contrastive layer.

Contrastive learning as distribution alignment (Chen et al., NeurIPS 2024). Two views
``z_a``, ``z_b`` of shape ``(B, D)``:

* **joint** layout (default): ``Z = [z_a; z_b]`` (``N = 2B``), cost ``C`` (default minus the
  cosine, ``-Z Z^T`` with L2-normalised rows), Gibbs kernel ``K = exp(-C / epsilon)`` with the diagonal
  forbidden (self-pairs are never candidates); row ``i``'s positive is ``t(i) = i +- B``.
* **cross** layout: the ``B x B`` plan between the views (default cost ``-z_a z_b^T``), positives on the
  diagonal; the loss is averaged over both directions (a -> b and b -> a).

The plan is computed by the solver layer (:func:`otalign.solve`, Shannon entropy, the given
constraint set, unrolled gradients), started from ``v = 1`` and run for exactly ``n_iter`` sweeps
(rows then columns). Every loss depends on the plan only through ``K diag(v)``: the plan with its
row scaling removed, whose log is returned as ``logits`` (``log K_ij + log v_j``). With
``n_iter = 0``, ``v = 1`` and the solver is not called. The losses read the plan through a
:class:`~otalign.contrastive.divergences.PlanView` (``logits``, the last row scaling ``log u``,
the read-out).

The cost is a preset (``"cosine"``: ``C = -cos``, default; ``"cosine_distance"``;
``"sqeuclidean"``) or a caller's callable, see :mod:`otalign.contrastive.costs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

from .. import constraints as C
from ..solvers import OTResult, solve
from ._checks import check_real
from .costs import CostSpec, views_cost
from .divergences import READOUTS, Divergence, PlanView, Term, total_mean
from .targets import Target, TargetPlan, partner_index

__all__ = ["LAYOUTS", "READOUTS", "FLOAT64_BELOW_EPSILON", "views_cost", "unit_marginals", "plan_logits",
           "learned_plan", "LossComponents", "contrastive_loss"]

LAYOUTS = ("joint", "cross")

#: Below this epsilon, losses of float32 (and float16/bfloat16) views are computed in float64 and
#: returned in float32. Logits ``-C / epsilon`` of magnitude up to ``1 / epsilon`` carry an
#: absolute rounding error of ``u / epsilon`` in float32 (``u = 6e-8``), which the exponentials of
#: the robust terms and the solver's potentials turn into a relative error of up to ~10 u / epsilon
#: (measured): 6e-5 at epsilon = 0.01, 6e-4 at 1e-3. In float64 it is below 1e-12.
FLOAT64_BELOW_EPSILON = 0.01

ConstraintSpec = Union[C.ConstraintSet, Callable[..., Any], None]


def _check_rho(rho: Any) -> Union[float, tuple[float, float]]:
    expected = "a number > 0 (math.inf: hard marginals) or a pair of them (rows, columns)"
    if isinstance(rho, (tuple, list)):
        if len(rho) != 2:
            raise ValueError(f"rho={rho!r}; expected {expected}")
        return tuple(check_real("rho", r, low=0.0, low_open=True, allow_inf=True, expected=expected) for r in rho)  # type: ignore[return-value]
    return check_real("rho", rho, low=0.0, low_open=True, allow_inf=True, expected=expected)


def unit_marginals(rho: Union[float, tuple[float, float], None] = None) -> Callable[..., C.ConstraintSet]:
    """Constraint factory: every row and column of the plan has target mass 1 (hard, or
    KL-relaxed with strength ``rho``, a number or a pair; ``math.inf`` = hard)."""
    if rho is not None:
        rho = _check_rho(rho)

    def build(n: int, *, device=None, dtype=torch.float32, **_: Any) -> C.ConstraintSet:
        ones = torch.ones(n, device=device, dtype=dtype)
        if rho is None:
            return C.balanced(ones, ones)
        return C.unbalanced(rho, ones, ones)

    build.__doc__ = f"unit marginals, rho={rho!r}"
    build.rho = rho  # type: ignore[attr-defined]
    build.unit_marginals = True  # type: ignore[attr-defined]
    return build


def _taus(spec: ConstraintSpec, epsilon: float) -> Optional[tuple[float, float]]:
    """Exponents ``rho / (rho + eps)`` of the row and column steps of unit marginals (None if
    ``spec`` is not a :func:`unit_marginals` factory)."""
    if spec is None:
        return (1.0, 1.0)
    if not getattr(spec, "unit_marginals", False):
        return None
    rho = spec.rho  # type: ignore[union-attr]
    pair = (rho, rho) if not isinstance(rho, tuple) else rho
    return tuple(1.0 if r is None or math.isinf(r) else r / (r + epsilon) for r in pair)  # type: ignore[return-value]


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
        check_every=n_iter, entropy="shannon", grad="unroll", center=False, translation=False, overrelax=None, warn=False,
    )
    # log P_ij - f_i / eps = (g_j + block duals - C_ij) / eps: the plan with its rows unscaled
    scaled = res.log_plan - (res.f / epsilon)[:, None]
    if detach_scalings:  # keep the value, cut the gradient through the scalings
        finite = torch.isfinite(logits) & torch.isfinite(scaled)
        shift = torch.where(finite, scaled - logits, torch.zeros_like(scaled)).detach()
        scaled = torch.where(torch.isfinite(scaled), logits + shift, scaled.detach())
    return scaled, res


def learned_plan(
    cost: torch.Tensor,
    *,
    epsilon: float,
    n_iter: int,
    constraints: ConstraintSpec = None,
    layout: str = "joint",
    readout: str = "renormalised",
    detach_scalings: bool = False,
    domains: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
) -> tuple[PlanView, Optional[OTResult]]:
    """The plan after ``n_iter`` sweeps as a :class:`PlanView` (logits ``(N, N)``, last row
    scaling ``log u`` ``(N,)``, the read-out), and the solver's result (None for ``n_iter = 0``)."""
    logits, res = plan_logits(cost, epsilon=epsilon, n_iter=n_iter, constraints=constraints, layout=layout,
                              detach_scalings=detach_scalings, domains=domains, labels=labels)
    if res is None:  # one row projection of the kernel: u = 1 / (K 1)
        log_u = -torch.logsumexp(logits, dim=-1)
    else:
        log_u = res.f / epsilon
        if detach_scalings:
            log_u = log_u.detach()
    view = PlanView(logits, log_u, readout=readout, n_iter=n_iter, taus=_taus(constraints, epsilon))
    return view, res


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


def _one_direction(z_a, z_b, *, epsilon, n_iter, constraints, target, divergence, layout, readout, cost, domains,
                   labels, detach_scalings, diagnostics, compute):
    if isinstance(cost, str):  # presets: the cosines themselves in the computation dtype
        C_ab = views_cost(z_a.to(compute), z_b.to(compute), layout, cost)
    else:  # a caller's cost sees the views in their (promoted) dtype; its output is cast
        C_ab = views_cost(z_a, z_b, layout, cost).to(compute)
    view, res = learned_plan(C_ab, epsilon=epsilon, n_iter=n_iter, constraints=constraints, layout=layout,
                             readout=readout, detach_scalings=detach_scalings, domains=domains, labels=labels)
    B = z_a.shape[0]
    dev = view.logits.device
    tgt = TargetPlan(lambda: target.matrix(B, layout, domains=domains, labels=labels, dtype=view.logits.dtype, device=dev),
                     partner_index(B, layout, dev) if target.is_paired else None)
    terms = divergence.terms(view, tgt)
    nan = torch.full((), math.nan, dtype=view.logits.dtype, device=view.logits.device)
    error, entropy = _diagnostics(view.logits, res) if diagnostics else (nan, nan)
    return terms, error, entropy


def _sum(terms: list[Term]) -> Term:
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


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
    readout: str = "renormalised",
    cost: CostSpec = "cosine",
    domains: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    detach_scalings: bool = False,
    diagnostics: bool = True,
) -> LossComponents:
    """The generalised contrastive loss of two views ``(B, D)`` (mean over anchors).

    Inputs in float16/bfloat16 are computed in float32 (autocast is disabled inside), and float32
    ones in float64 when ``epsilon < FLOAT64_BELOW_EPSILON`` (0.01); the loss, its terms and
    gradients are returned in float64 for float64 views and in float32 otherwise.
    ``diagnostics=False`` skips the marginal error and entropy (reported as NaN), which a plain
    forward pass does not need. The loss, the term means and the per-anchor values are never NaN
    for finite inputs: beyond the dtype's range they saturate to ``+-inf`` with the right sign.
    """
    dtype = torch.float64 if z_a.dtype == torch.float64 else torch.float32
    compute = torch.float64 if epsilon < FLOAT64_BELOW_EPSILON else dtype
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        z_a, z_b = z_a.to(dtype), z_b.to(dtype)
        kw = dict(epsilon=epsilon, n_iter=n_iter, constraints=constraints, target=target, divergence=divergence,
                  layout=layout, readout=readout, cost=cost, domains=domains, labels=labels,
                  detach_scalings=detach_scalings, diagnostics=diagnostics, compute=compute)
        terms, err, ent = _one_direction(z_a, z_b, **kw)
        per_anchor = _sum(list(terms.values())).values()
        if layout == "cross":  # both directions: symmetric in (z_a, z_b)
            back, err2, ent2 = _one_direction(z_b, z_a, **kw)
            per_anchor = ((_sum(list(terms.values())) + _sum(list(back.values()))) * 0.5).values()
            terms = {k: v.cat(back[k]) for k, v in terms.items()}
            err, ent = (err + err2) / 2, (ent + ent2) / 2
        return LossComponents(
            loss=total_mean(list(terms.values())).to(dtype),
            terms={k: v.mean().to(dtype) for k, v in terms.items()},
            per_anchor=per_anchor.to(dtype),
            marginal_error=err.to(dtype),
            plan_entropy=ent.to(dtype),
        )
