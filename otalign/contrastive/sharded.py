"""GCA losses whose plan is split across ``torch.distributed`` ranks (``shard_plan=True``).

With ``gather_distributed=True`` alone, every rank gathers the global batch (``N = W B`` samples,
``2N`` views) and solves the whole ``(2N, 2N)`` joint plan. With ``shard_plan=True`` rank ``r``
solves only ITS rows of that plan: its own views ``[z_a_r; z_b_r]`` (``2B`` rows) against the
gathered views ``[Z_a; Z_b]`` (``2N`` columns), with ``ota.solve(..., shard="rows")`` (column
updates all-reduced). The divergence terms of the supported presets are per anchor (per row), so
each rank computes its anchors' terms and the loss is their all-reduced sum over ``2N``.

Gradients: the gather's backward sums every rank's cotangents for each rank's views, the solve's
collectives are autograd-aware, and the returned loss is replicated with a ``1/W`` gradient, so
that when every rank backpropagates the loss, each rank's ``z_a.grad``, ``z_b.grad`` are exactly
the slices of the single-process gradient on the global batch. Memory and compute per rank fall as
``1/W`` (the plan block is ``(2B, 2N)``).

Supported: the joint layout, paired-views targets, ``"renormalised"`` read-out, unit-marginal
constraints (balanced or KL-relaxed: the presets' ``cl.unit_marginals``), preset costs, and
divergences whose terms are per anchor (``KL``, ``Robust`` and their weighted sums; not
``Uniformity``, whose term sums over the whole plan). Anything else raises ``ValueError``.
"""

from __future__ import annotations

import math
import torch

from .. import constraints as C
from ..solvers import solve
from ..solvers.distributed import RowShardReducer, make_reducer
from .costs import _PRESETS, CostSpec
from .divergences import Divergence, PlanView, Uniformity
from .distributed import gather
from .functional import FLOAT64_BELOW_EPSILON, ConstraintSpec, LossComponents, _sum, _taus
from .targets import Target, TargetPlan

__all__ = ["check_shardable", "sharded_contrastive_loss"]


def check_shardable(*, constraints: ConstraintSpec, target: Target, divergence: Divergence, layout: str,
                    readout: str, cost: CostSpec) -> None:
    """``ValueError`` naming the option that ``shard_plan=True`` does not support (module docstring)."""
    if layout != "joint":
        raise ValueError(f"shard_plan=True with layout={layout!r}; expected layout='joint'")
    if readout != "renormalised":
        raise ValueError(f"shard_plan=True with readout={readout!r}; expected readout='renormalised' "
                         "(the raw read-out of hard column marginals reads whole columns)")
    if not isinstance(cost, str):
        raise ValueError(f"shard_plan=True with cost={cost!r}; expected a preset cost name ({', '.join(_PRESETS)})")
    if not getattr(constraints, "unit_marginals", False):
        raise ValueError(f"shard_plan=True with constraints={constraints!r}; expected the unit-marginal "
                         "constraints of the presets (None or cl.unit_marginals(rho))")
    if not target.is_paired:
        raise ValueError(f"shard_plan=True with target={target!r}; expected the paired-views target (PairedViews)")
    if any(isinstance(d, Uniformity) for _, d in divergence.parts()):
        raise ValueError("shard_plan=True with a Uniformity term; expected per-anchor divergences (KL, Robust): "
                         "the uniformity term sums over the whole plan")


def sharded_contrastive_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    *,
    epsilon: float,
    n_iter: int,
    divergence: Divergence,
    constraints: ConstraintSpec,
    readout: str,
    cost: str,
    detach_scalings: bool = False,
    diagnostics: bool = True,
    group=None,
) -> LossComponents:
    """The loss of the global batch computed from this rank's rows of the joint plan.

    ``z_a``, ``z_b``: this rank's views ``(B, D)`` (the same ``B`` on every rank). Returns the
    global loss, term means, marginal error and entropy (identical on every rank) and
    ``per_anchor``: the ``(2B,)`` values of this rank's anchors (its ``z_a`` rows then its ``z_b``
    rows).
    """
    reducer = make_reducer("rows", group)
    assert isinstance(reducer, RowShardReducer)
    dtype = torch.float64 if z_a.dtype == torch.float64 else torch.float32
    compute = torch.float64 if epsilon < FLOAT64_BELOW_EPSILON else dtype
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        z_a, z_b = z_a.to(dtype), z_b.to(dtype)
        Z_a, Z_b = gather(z_a), gather(z_b)  # checks equal batch sizes on every rank
        B, N = z_a.shape[0], Z_a.shape[0]
        offset = reducer.rank * B
        prepare, pairwise = _PRESETS[cost]
        rows = torch.cat([prepare(z_a.to(compute)), prepare(z_b.to(compute))])  # (2B, D)
        cols = torch.cat([prepare(Z_a.to(compute)), prepare(Z_b.to(compute))])  # (2N, D)
        cost_rows = pairwise(rows, cols)  # (2B, 2N)
        dev = cost_rows.device
        local = torch.arange(B, device=dev)
        self_col = torch.cat([offset + local, N + offset + local])  # each row's own column
        partner = torch.cat([N + offset + local, offset + local])  # each row's positive
        forbidden = torch.zeros(2 * B, 2 * N, dtype=torch.bool, device=dev)
        forbidden[torch.arange(2 * B, device=dev), self_col] = True
        logits = (-cost_rows / epsilon).masked_fill(forbidden, -math.inf)
        res = None
        if n_iter == 0:
            log_u = -torch.logsumexp(logits, dim=-1)
        else:
            rho = constraints.rho  # type: ignore[union-attr]
            ones_r = torch.ones(2 * B, dtype=compute, device=dev)
            ones_c = torch.ones(2 * N, dtype=compute, device=dev)
            cons = C.balanced(ones_r, ones_c) if rho is None else C.unbalanced(rho, ones_r, ones_c)
            cons = cons + [C.Forbid(mask=forbidden)]
            res = solve(
                cost_rows, cons, epsilon=epsilon, tol=torch.finfo(torch.float64).tiny, max_iter=n_iter,
                check_every=n_iter, entropy="shannon", grad="unroll", center=False, translation=False, warn=False,
                shard="rows", group=group,
            )
            scaled = res.log_plan - (res.f / epsilon)[:, None]
            if detach_scalings:
                finite = torch.isfinite(logits) & torch.isfinite(scaled)
                shift = torch.where(finite, scaled - logits, torch.zeros_like(scaled)).detach()
                scaled = torch.where(torch.isfinite(scaled), logits + shift, scaled.detach())
            logits = scaled
            log_u = res.f / epsilon
            if detach_scalings:
                log_u = log_u.detach()
        view = PlanView(logits, log_u, readout=readout, n_iter=n_iter, taus=_taus(constraints, epsilon))

        def one_hot() -> torch.Tensor:
            T = torch.zeros(2 * B, 2 * N, dtype=logits.dtype, device=dev)
            return T.scatter_(1, partner[:, None], 1.0)

        terms = divergence.terms(view, TargetPlan(one_hot, partner))
        per_anchor = _sum(list(terms.values())).values()
        count = 2 * N

        def global_mean(values: torch.Tensor) -> torch.Tensor:
            return reducer.replicated(reducer.sum(values.sum()) / count)

        loss = global_mean(per_anchor)
        means = {k: global_mean(v.values()) for k, v in terms.items()}
        nan = torch.full((), math.nan, dtype=logits.dtype, device=dev)
        error, entropy = (_diagnostics(view, res, reducer, count) if diagnostics else (nan, nan))
        return LossComponents(
            loss=loss.to(dtype),
            terms={k: v.to(dtype) for k, v in means.items()},
            per_anchor=per_anchor.to(dtype),
            marginal_error=error.to(dtype),
            plan_entropy=entropy.to(dtype),
        )


def _diagnostics(view: PlanView, res, reducer: RowShardReducer, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global marginal error and mean row entropy (as :func:`functional._diagnostics`)."""
    with torch.no_grad():
        logits = view.logits
        if res is None:
            plan = torch.exp(logits)
            rows, cols = plan.sum(1), reducer.sum(plan.sum(0))
        else:
            rows, cols = res.marginals
        error = (reducer.sum((rows - 1).abs().sum()) + (cols - 1).abs().sum()) / (2 * count)
        logp = torch.log_softmax(logits, dim=-1)
        ent = -(torch.exp(logp) * torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))).sum(-1)
        return error, reducer.sum(ent.sum()) / count
