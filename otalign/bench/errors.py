"""The one independent error measurement applied to every library's answer (float64 NumPy).

Nothing here uses a solver: the plan a library returns is converted to a float64 NumPy array and
compared with the problem's constraints and, where given, with a float64 reference plan.

Per problem of a batch (``P`` of shape ``(n, m)``, weights ``a``, ``b``, cost ``C``):

* ``marginal_l1``: ``||P 1 - a||_1 + ||P^T 1 - b||_1``, the L1 violation of the hard marginals
  (balanced problems).
* ``partial_violation``: ``||(P 1 - a)_+||_1 + ||(P^T 1 - b)_+||_1 + |sum P - mass|``, the L1
  violation of the constraints of partial transport.
* ``plan_l1``: ``||P - P*||_1 = sum_ij |P_ij - P*_ij|`` to the float64 reference plan ``P*``.
* ``cost_rel``: ``|<C, P> - <C, P*>| / |<C, P*>|``.

The headline ``error`` (the one compared with the target in time-to-tolerance) is

* balanced: ``marginal_l1`` (what the constraints ask, needs no reference);
* unbalanced: ``plan_l1`` (there is no hard marginal; the answer is right when it is the plan);
* partial: ``plan_l1`` (a tiny-mass plan satisfies the caps, so the violation alone cannot say
  that the answer is right; ``plan_l1`` bounds the violation since ``P*`` is feasible).

A batch reports the worst problem (largest error). A plan with a non-finite entry gets
``error = inf`` and ``finite = False``.

Point-cloud problems (no ``n x m`` plan anywhere) are measured from the returned potentials by
:func:`measure_potentials`: the marginals of the plan they define are streamed over tiles of
rows in float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "Measured",
    "to_numpy64",
    "marginal_l1",
    "partial_violation",
    "plan_l1",
    "transport_cost",
    "measure_plan",
    "unbalanced_kkt_residual",
    "potential_marginals",
    "measure_potentials",
]


def to_numpy64(x: Any) -> np.ndarray:
    """Any array (NumPy, torch on any device, JAX) as a float64 NumPy array on the host."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _batched(x: np.ndarray, ndim: int) -> np.ndarray:
    return x[None] if x.ndim == ndim - 1 else x


def marginal_l1(plan: Any, a: Any, b: Any) -> np.ndarray:
    """``(B,)`` ``||P 1 - a||_1 + ||P^T 1 - b||_1`` for plans ``(B, n, m)`` or ``(n, m)``."""
    P = _batched(to_numpy64(plan), 3)
    a = _batched(to_numpy64(a), 2)
    b = _batched(to_numpy64(b), 2)
    return np.abs(P.sum(2) - a).sum(1) + np.abs(P.sum(1) - b).sum(1)


def partial_violation(plan: Any, a: Any, b: Any, mass: float) -> np.ndarray:
    """``(B,)`` ``||(P 1 - a)_+||_1 + ||(P^T 1 - b)_+||_1 + |sum P - mass|``."""
    P = _batched(to_numpy64(plan), 3)
    a = _batched(to_numpy64(a), 2)
    b = _batched(to_numpy64(b), 2)
    rows = np.clip(P.sum(2) - a, 0.0, None).sum(1)
    cols = np.clip(P.sum(1) - b, 0.0, None).sum(1)
    return rows + cols + np.abs(P.sum((1, 2)) - mass)


def plan_l1(plan: Any, reference: Any) -> np.ndarray:
    """``(B,)`` ``sum_ij |P_ij - P*_ij|``."""
    P = _batched(to_numpy64(plan), 3)
    R = _batched(to_numpy64(reference), 3)
    return np.abs(P - R).sum((1, 2))


def transport_cost(plan: Any, cost: Any) -> np.ndarray:
    """``(B,)`` ``<C, P>``."""
    P = _batched(to_numpy64(plan), 3)
    C = _batched(to_numpy64(cost), 3)
    return (P * C).sum((1, 2))


@dataclass
class Measured:
    """Errors of one answer (worst problem of the batch; NaN where not applicable).

    Attributes:
        error: headline error (see the module docstring).
        marginal_error: hard-marginal L1 violation (balanced) or partial-constraint violation
            (partial); NaN for unbalanced problems.
        plan_error: ``||P - P*||_1`` (NaN without a reference).
        cost_rel_error: ``|<C,P> - <C,P*>| / |<C,P*>|`` (NaN without a reference).
        mass: total mass of the plan (of the worst problem for ``error``).
        finite: every entry of the plan is finite.
    """

    error: float
    marginal_error: float
    plan_error: float
    cost_rel_error: float
    mass: float
    finite: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _worst(values: np.ndarray) -> float:
    if values.size == 0:
        return math.nan
    if np.isnan(values).all():
        return math.nan
    return float(np.nanmax(values))


def measure_plan(
    plan: Any,
    *,
    kind: str,
    a: Any,
    b: Any,
    cost: Any,
    mass: Optional[float] = None,
    reference_plan: Any = None,
    reference_cost: Optional[np.ndarray] = None,
) -> Measured:
    """Measure one answer of shape ``(B, n, m)`` (or ``(n, m)``) in float64.

    Args:
        plan: the library's plan (any array type, any device).
        kind: ``"balanced"``, ``"unbalanced"`` or ``"partial"``.
        a, b: ``(B, n)``, ``(B, m)`` weights of the problem (the hard marginals).
        cost: ``(B, n, m)`` cost (float64 preferred).
        mass: total mass (partial).
        reference_plan: ``(B, n, m)`` float64 reference plan, or None.
        reference_cost: ``(B,)`` ``<C, P*>``; computed from ``reference_plan`` when None.

    Returns:
        A :class:`Measured`.
    """
    P = _batched(to_numpy64(plan), 3)
    C = _batched(to_numpy64(cost), 3)
    if P.shape != C.shape:
        raise ValueError(f"plan has shape {P.shape}; expected {C.shape} (the cost's shape)")
    finite = bool(np.isfinite(P).all())
    if kind == "balanced":
        marginal = marginal_l1(P, a, b)
    elif kind == "partial":
        if mass is None:
            raise ValueError("kind='partial' needs mass=")
        marginal = partial_violation(P, a, b, mass)
    elif kind == "unbalanced":
        marginal = np.full(P.shape[0], math.nan)
    else:
        raise ValueError(f"kind={kind!r}; expected 'balanced', 'unbalanced' or 'partial'")
    if reference_plan is not None:
        R = _batched(to_numpy64(reference_plan), 3)
        plan_err = plan_l1(P, R)
        ref_cost = transport_cost(R, C) if reference_cost is None else np.asarray(reference_cost, np.float64)
        cost_rel = np.abs(transport_cost(P, C) - ref_cost) / np.maximum(np.abs(ref_cost), 1e-300)
    else:
        plan_err = np.full(P.shape[0], math.nan)
        cost_rel = np.full(P.shape[0], math.nan)
    headline = marginal if kind == "balanced" else plan_err
    if not finite:
        error = math.inf
    else:
        error = _worst(headline)
    masses = P.sum((1, 2))
    worst_k = int(np.nanargmax(headline)) if finite and not np.isnan(headline).all() else 0
    return Measured(
        error=error,
        marginal_error=_worst(marginal) if finite else math.inf if kind != "unbalanced" else math.nan,
        plan_error=_worst(plan_err) if finite else (math.inf if reference_plan is not None else math.nan),
        cost_rel_error=_worst(cost_rel) if finite else (math.inf if reference_plan is not None else math.nan),
        mass=float(masses[worst_k]),
        finite=finite,
    )


def unbalanced_kkt_residual(plan: Any, a: Any, b: Any, cost: Any, epsilon: float, rho: float) -> np.ndarray:
    """``(B,)`` optimality residual of a KL-unbalanced plan, from the plan alone.

    The minimiser of ``<C,P> + eps KL(P || a (x) b) + rho KL(P 1 || a) + rho KL(P^T 1 || b)``
    is ``P = a (x) b * exp((f_i + g_j - C_ij) / eps)`` with ``f = -rho log(P 1 / a)`` and
    ``g = -rho log(P^T 1 / b)``. The residual is the L1 distance between ``P`` and the plan
    those potentials give (0 exactly at the optimum); it checks the reference solutions.
    """
    P = _batched(to_numpy64(plan), 3)
    a = _batched(to_numpy64(a), 2)
    b = _batched(to_numpy64(b), 2)
    C = _batched(to_numpy64(cost), 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = -rho * np.log(P.sum(2) / a)
        g = -rho * np.log(P.sum(1) / b)
        rebuilt = a[:, :, None] * b[:, None, :] * np.exp((f[:, :, None] + g[:, None, :] - C) / epsilon)
    return np.abs(P - rebuilt).sum((1, 2))


def potential_marginals(
    f: Any, g: Any, *, x: Any, y: Any, a: Any, b: Any, epsilon: float, tile: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column sums of ``P_ij = a_i b_j exp((f_i + g_j - |x_i - y_j|^2) / epsilon)``,
    streamed over tiles of rows in float64 (no ``n x m`` array; ``tile x m`` at a time).

    Args:
        f, g: ``(n,)``, ``(m,)`` potentials in cost units (any array type).
        x, y: ``(n, d)``, ``(m, d)`` points; the cost is ``|x_i - y_j|^2``.
        a, b: ``(n,)``, ``(m,)`` weights. epsilon: entropic strength.
        tile: rows per tile (default: ``2^22 / m``, i.e. 32 MB float64 arrays).

    Returns:
        ``(P 1, P^T 1)`` as float64 NumPy arrays (``inf``/``nan`` where the potentials overflow).
    """
    f, g = (torch.as_tensor(to_numpy64(t)).reshape(-1) for t in (f, g))
    x, y = (torch.as_tensor(to_numpy64(t)) for t in (x, y))
    log_a = torch.log(torch.as_tensor(to_numpy64(a)).reshape(-1))
    log_b = torch.log(torch.as_tensor(to_numpy64(b)).reshape(-1))
    if f.shape != log_a.shape or g.shape != log_b.shape:
        raise ValueError(f"potentials of shapes {tuple(f.shape)}, {tuple(g.shape)}; expected {tuple(log_a.shape)}, {tuple(log_b.shape)}")
    tile = tile if tile is not None else max(1, 2**22 // max(1, y.shape[0]))
    y2 = (y * y).sum(-1)
    col_terms = log_b + g / epsilon  # (m,)
    rows = torch.empty_like(f)
    col_lse = torch.full_like(g, -math.inf)
    for start in range(0, x.shape[0], tile):
        xs = x[start : start + tile]
        cost = ((xs * xs).sum(-1)[:, None] + y2[None, :] - 2.0 * xs @ y.T).clamp_min_(0.0)
        logp = (log_a[start : start + tile] + f[start : start + tile] / epsilon)[:, None] + col_terms[None, :]
        logp -= cost / epsilon
        rows[start : start + tile] = torch.logsumexp(logp, dim=1)
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(logp, dim=0))
    return torch.exp(rows).numpy(), torch.exp(col_lse).numpy()


def measure_potentials(
    f: Any, g: Any, *, kind: str, x: Any, y: Any, a: Any, b: Any, epsilon: float
) -> Measured:
    """Measure a point-cloud answer given as potentials (balanced problems; no plan, no reference).

    The plan the potentials define, ``P_ij = a_i b_j exp((f_i + g_j - |x_i - y_j|^2) / epsilon)``
    (every runner converts its library's output to this convention), is reduced by
    :func:`potential_marginals`; ``error`` is ``||P 1 - a||_1 + ||P^T 1 - b||_1``.
    ``plan_error`` and ``cost_rel_error`` are NaN (there is no reference plan).
    """
    if kind != "balanced":
        raise ValueError(f"kind={kind!r}; point-cloud answers are measured for 'balanced' problems only")
    rows, cols = potential_marginals(f, g, x=x, y=y, a=a, b=b, epsilon=epsilon)
    a64 = to_numpy64(a).reshape(-1)
    b64 = to_numpy64(b).reshape(-1)
    finite = bool(np.isfinite(rows).all() and np.isfinite(cols).all())
    error = float(np.abs(rows - a64).sum() + np.abs(cols - b64).sum()) if finite else math.inf
    return Measured(
        error=error, marginal_error=error, plan_error=math.nan, cost_rel_error=math.nan,
        mass=float(rows.sum()) if finite else math.nan, finite=finite,
    )
