"""Exact (unregularised) transport, ``epsilon=0``: POT's network simplex and exact partial solver.

Supported constraint sets: balanced (hard row and column equalities, optionally with ``Forbid``)
and partial (row and column caps with a ``TotalMass``, optionally with ``Forbid``). Forbidden
pairs get a cost larger than any feasible plan can pay, and a plan that still uses one is reported
infeasible. The solvers run on the CPU in float64, one problem at a time (they are sequential
C++ codes), and the results come back on the input's device and dtype.

Gradients: the optimal value is differentiable (envelope theorem: ``dvalue/dC = plan``,
``dvalue/da = f``, ``dvalue/db = g`` for balanced problems); the plan is piecewise constant in
the inputs and is returned without a gradient.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .projectors.marginal import MarginalProjector
from .projectors.mass import TotalMassProjector
from .projectors.support import ForbidProjector
from .setup import Prepared

__all__ = ["ExactResult", "solve_exact"]


class ExactResult:
    """Result of an exact solve; same attributes as :class:`~otalign.solvers.result.OTResult`
    (``errors`` is empty: there are no iterations, ``n_iters`` counts none)."""

    def __init__(self, plan, f, g, value, cost_value, converged, batched, constraints):
        self._plan, self._f, self._g = plan, f, g
        self._value, self._cost_value, self._conv = value, cost_value, converged
        self._batched = batched
        self.constraints = constraints
        self.epsilon = 0.0
        self.check_iters: list[int] = []

    def _out(self, t):
        return t if self._batched else t[0]

    plan = property(lambda self: self._out(self._plan))
    log_plan = property(lambda self: self._out(torch.log(self._plan)))
    f = property(lambda self: self._out(self._f))
    g = property(lambda self: self._out(self._g))
    value = property(lambda self: self._out(self._value))
    transport_cost = property(lambda self: self._out(self._cost_value))
    converged = property(lambda self: self._out(self._conv))
    diverged = property(lambda self: self._out(torch.zeros_like(self._conv)))
    stalled = diverged
    n_iters = property(lambda self: self._out(torch.zeros(self._conv.shape, dtype=torch.long, device=self._conv.device)))
    marginals = property(lambda self: (self._out(self._plan.sum(-1)), self._out(self._plan.sum(-2))))
    mass = property(lambda self: self._out(self._plan.sum((-2, -1))))
    duals = property(lambda self: (self.f, self.g))
    errors = property(lambda self: self._out(torch.zeros(self._conv.shape + (0,), dtype=self._plan.dtype)))
    error = property(lambda self: self._out(torch.zeros(self._conv.shape, dtype=self._plan.dtype)))
    gap = error  # the network simplex's plan and potentials are optimal: no gap

    def __repr__(self) -> str:
        return f"ExactResult(converged={int(self._conv.sum())}/{self._conv.numel()})"


def _classify(prep: Prepared) -> tuple[str, list, Optional[TotalMassProjector], Optional[torch.Tensor]]:
    rows, cols, mass, forbidden = [], [], None, None
    for k, p in enumerate(prep.projectors):
        if isinstance(p, MarginalProjector) and p.kind == "hard":
            (rows if p.axis == 0 else cols).append(p)
        elif isinstance(p, TotalMassProjector) and mass is None:
            mass = p
        elif isinstance(p, ForbidProjector):
            mask = p.forbidden
            if mask is None:  # forbidden by labels
                rows, cols = p.labels
                mask = (rows[:, :, None] == cols[:, None, :]) & (rows[:, :, None] >= 0)
            forbidden = mask if forbidden is None else forbidden | mask
        else:
            raise ValueError(
                f"epsilon=0 (exact OT) supports balanced and partial constraint sets (with Forbid); "
                f"constraints[{k}] ({type(p.constraint).__name__}"
                f"{', penalty ' + p.kind if isinstance(p, MarginalProjector) else ''}) is not supported: "
                "use epsilon > 0"
            )
    if len(rows) == 1 and len(cols) == 1:
        rels = (rows[0].relation, cols[0].relation)
        if rels == ("==", "==") and mass is None:
            return "balanced", [rows[0], cols[0]], None, forbidden
        if rels == ("<=", "<=") and mass is not None:
            return "partial", [rows[0], cols[0]], mass, forbidden
    raise ValueError(
        "epsilon=0 (exact OT) needs one hard row and one hard column marginal: both '==' "
        "(balanced) or both '<=' with a TotalMass (partial); use epsilon > 0 for other sets"
    )


def solve_exact(prep: Prepared, cost_in: torch.Tensor) -> ExactResult:
    import ot  # imported on first use: POT's backends import JAX and KeOps when installed (seconds)

    kind, (pr, pc), mass_p, forbidden = _classify(prep)
    B, n, m = prep.problem.batch, prep.problem.n, prep.problem.m
    cost = prep.geometry.dense().expand(B, n, m)
    a_all, b_all = pr.weights.expand(B, n), pc.weights.expand(B, m)
    C = cost.detach().cpu().double().numpy()
    span = float(np.ptp(C)) if C.size else 1.0
    big = float(C.max()) + (span + 1.0) * (n + m + 1) * 10.0
    plans, fs, gs, ok = [], [], [], []
    for k in range(B):  # sequential C++ solvers: one call per problem
        Ck = C[k].copy()
        if forbidden is not None:
            mask = forbidden.expand(B, n, m)[k].cpu().numpy()
            Ck[mask] = big
        a = a_all[k].detach().cpu().double().numpy()
        b = b_all[k].detach().cpu().double().numpy()
        # POT's solvers take unit-scale masses (weights ~1e-200 crash its network simplex): solve
        # the problem scaled to unit mass; the plan scales back, the potentials do not change
        scale = max(a.sum(), b.sum())
        if scale == 0:  # a problem of zero mass: the zero plan
            plans.append(np.zeros((n, m))), fs.append(np.zeros(n)), gs.append(np.zeros(m)), ok.append(True)
            continue
        if kind == "balanced":
            P, log = ot.emd(a / a.sum(), b / b.sum(), Ck, log=True)
            P = P * a.sum()
            f, g = log["u"], log["v"]
            good = log["result_code"] == 1
        else:
            mass = float(mass_p.mass.expand(B)[k])
            P, log = ot.partial.partial_wasserstein(a / scale, b / scale, Ck, m=mass / scale, log=True)
            P = P * scale
            f, g = np.zeros(n), np.zeros(m)
            good = log.get("warning") is None
        if forbidden is not None and P[mask].sum() > 0:
            good = False  # no feasible plan avoids the forbidden pairs
        plans.append(P), fs.append(f), gs.append(g), ok.append(good)
    dtype, device = prep.out_dtype, cost_in.device
    P = torch.as_tensor(np.stack(plans), dtype=prep.problem.dtype, device=device)
    f = torch.as_tensor(np.stack(fs), dtype=prep.problem.dtype, device=device)
    g = torch.as_tensor(np.stack(gs), dtype=prep.problem.dtype, device=device)
    linear = (P * cost).sum((-2, -1))  # differentiable in the cost: dvalue/dC = plan
    value = linear
    if kind == "balanced":  # envelope gradients for the weights
        value = value + (f * (a_all - a_all.detach())).sum(-1) + (g * (b_all - b_all.detach())).sum(-1)
    converged = torch.tensor(ok, device=device)
    return ExactResult(P.to(dtype), f.to(dtype), g.to(dtype), value.to(dtype), linear.to(dtype), converged,
                       prep.batched, prep.constraints)
