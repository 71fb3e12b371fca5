"""A constraint type added purely through the registry (no engine edit): a marginal band.

``lower <= P^T 1 <= upper`` (e.g. cluster sizes kept within bounds). This is the worked example of
``docs/constraints.md``; the reference is the independent dual solver with the band split into a
lower-bound dual (>= 0) and an upper-bound dual (<= 0).
"""

import numpy as np
import torch

import otalign as ota
from conftest import random_problem, t64
from otalign import constraints as C
from otalign.constraints.base import Tensor
from otalign.solvers import COL, ROW, Projector, Support, kl_step, register, safe_log


class MarginalBand(C.Constraint):
    """``lower <= marginal <= upper`` on one axis."""

    axis: int
    lower: Tensor
    upper: Tensor


@register(MarginalBand)
class MarginalBandProjector(Projector):
    hard = True
    needs_certificate = True

    def __init__(self, constraint, problem):
        super().__init__(constraint, problem)
        self.axis = constraint.axis
        self.footprint = ROW if self.axis == 0 else COL
        self.lower = problem.vector(constraint.lower, self.axis, "MarginalBand.lower")
        self.upper = problem.vector(constraint.upper, self.axis, "MarginalBand.upper")
        self.log_lower, self.log_upper = safe_log(self.lower), safe_log(self.upper)

    def support(self):
        live = self.upper > 0
        return Support(rows=live) if self.axis == 0 else Support(cols=live)

    def init_dual(self):
        size = self.problem.size(self.axis)
        return torch.zeros(self.problem.batch, size, dtype=self.problem.dtype, device=self.problem.device)

    def update(self, dual, log_marginal, eps):
        # maximise lower * max(f, 0) + upper * min(f, 0) - eps * sum_j P_ij(f): f = 0 if the
        # marginal is inside the band, else the exact projection onto the violated bound;
        # since lower <= upper, that is median(f_lower, 0, f_upper)
        to_lower = kl_step(dual, self.log_lower, log_marginal, eps)
        to_upper = kl_step(dual, self.log_upper, log_marginal, eps)
        return torch.clamp(torch.zeros_like(dual), min=to_lower, max=to_upper)

    def violation(self, log_marginal):
        mu = torch.exp(log_marginal)
        return (torch.clamp(self.lower - mu, min=0) + torch.clamp(mu - self.upper, min=0)).sum(-1)

    def dual_objective(self, dual):
        return (self.lower * dual.clamp(min=0) + self.upper * dual.clamp(max=0)).sum(-1)

    def certificate(self, dual, log_marginal):
        # complementarity: a positive dual holds the marginal at its lower bound, a negative one
        # at its upper bound; the mass by which it misses is the residual (no smooth part)
        mu = torch.exp(log_marginal)
        residual = torch.where(dual > 0, (mu - self.lower).clamp(min=0), torch.zeros_like(mu))
        residual = residual + torch.where(dual < 0, (self.upper - mu).clamp(min=0), torch.zeros_like(mu))
        return torch.zeros_like(residual[..., 0]), residual.sum(-1)


def test_band_matches_the_reference_dual_solver():
    M, a, _ = random_problem(np.random.default_rng(8), 8, 4)
    lower, upper = np.full(4, 0.2), np.full(4, 0.3)
    cons = [C.Marginal(axis=0, weights=a), MarginalBand(axis=1, lower=lower, upper=upper)]
    res = ota.solve(t64(M), cons, epsilon=0.05, tol=1e-12, max_iter=100_000)
    ref = _band_reference(M, a, lower, upper, 0.05)
    assert bool(res.converged)
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-8)
    col = res.plan.sum(0).numpy()
    assert np.all(col >= lower - 1e-10) and np.all(col <= upper + 1e-10)
    assert np.isclose(col, upper, atol=1e-9).any() and np.isclose(col, lower, atol=1e-9).any()  # both bind


def _band_reference(M, a, lower, upper, eps):
    """Dual: <a, f> + <lower, p> + <upper, q> - eps sum R exp((f + p + q - C)/eps), p >= 0, q <= 0."""
    from scipy.optimize import minimize

    n, m = M.shape
    R = np.outer(a, np.full(m, 1 / m))

    def neg(x):
        f, p, q = x[:n], x[n:n + m], x[n + m:]
        P = R * np.exp((f[:, None] + (p + q)[None, :] - M) / eps)
        val = a @ f + lower @ p + upper @ q - eps * P.sum()
        g = np.concatenate([a - P.sum(1), lower - P.sum(0), upper - P.sum(0)])
        return -val, -g

    bounds = [(None, None)] * n + [(0, None)] * m + [(None, 0)] * m
    res = minimize(neg, np.zeros(n + 2 * m), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 100000, "ftol": 1e-30, "gtol": 1e-14, "maxcor": 50})
    f, p, q = res.x[:n], res.x[n:n + m], res.x[n + m:]
    return R * np.exp((f[:, None] + (p + q)[None, :] - M) / eps)


def test_band_round_trips_through_json_and_batches():
    band = MarginalBand(axis=1, lower=[0.1, 0.1, 0.1, 0.1], upper=[0.4, 0.4, 0.4, 0.4])
    cons = C.ConstraintSet([C.Marginal(axis=0)]) + band
    assert C.parse(C.dumps(cons)) == cons
    M = torch.rand(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = ota.solve(M, cons, epsilon=0.1, tol=1e-10, max_iter=10_000)
    for k in range(3):
        one = ota.solve(M[k], cons, epsilon=0.1, tol=1e-10, max_iter=10_000)
        torch.testing.assert_close(res.plan[k], one.plan, atol=1e-12, rtol=0)


def test_band_wider_than_the_marginal_changes_nothing():
    M, a, b = random_problem(np.random.default_rng(2), 5, 4)
    free = ota.solve(t64(M), [C.Marginal(axis=0, weights=a)], epsilon=0.1, tol=1e-12)
    wide = ota.solve(t64(M), [C.Marginal(axis=0, weights=a), MarginalBand(axis=1, lower=[0.0] * 4, upper=[1.0] * 4)], epsilon=0.1, tol=1e-12)
    torch.testing.assert_close(free.plan, wide.plan, atol=1e-12, rtol=0)
