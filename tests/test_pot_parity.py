"""Agreement with POT in float64 (POT run to a tight threshold so that the test checks otalign)."""

import math

import numpy as np
import ot
import pytest
import torch

import otalign as ota
from conftest import random_problem, t64
from otalign import constraints as C

TIGHT = dict(tol=1e-13, max_iter=100_000)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_balanced_matches_sinkhorn_log(seed, eps):
    M, a, b = random_problem(np.random.default_rng(seed), 9, 7)
    res = ota.solve(t64(M), C.balanced(a, b), epsilon=eps, **TIGHT)
    ref = ot.sinkhorn(a, b, M, eps, method="sinkhorn_log", stopThr=1e-15, numItermax=1_000_000)
    assert bool(res.converged)
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-10, rtol=0)


def test_balanced_value_matches_ot_solve_kl():
    M, a, b = random_problem(np.random.default_rng(7), 8, 6)
    res = ota.solve(t64(M), C.balanced(a, b), epsilon=0.1, **TIGHT)
    ref = ot.solve(M, a, b, reg=0.1, reg_type="KL", max_iter=1_000_000, tol=1e-15)
    assert float(res.value) == pytest.approx(float(ref.value), abs=1e-10)
    assert float(res.transport_cost) == pytest.approx(float(ref.value_linear), abs=1e-10)


@pytest.mark.parametrize("entropy, reg_type", [("kl", "kl"), ("shannon", "entropy")])
@pytest.mark.parametrize("rho", [0.1, 1.0, (0.3, 2.0)])
def test_unbalanced_matches_pot(entropy, reg_type, rho):
    M, a, b = random_problem(np.random.default_rng(3), 8, 6)
    b = 1.5 * b  # unequal masses
    res = ota.solve(t64(M), C.unbalanced(rho, a, b), epsilon=0.1, entropy=entropy, **TIGHT)
    ref = ot.unbalanced.sinkhorn_unbalanced(
        a, b, M, 0.1, rho, reg_type=reg_type, stopThr=1e-16, numItermax=1_000_000
    )
    assert bool(res.converged)
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("entropy, reg_type", [("kl", "kl"), ("shannon", "entropy")])
@pytest.mark.parametrize("rho", [(math.inf, 0.5), (0.5, math.inf)])
def test_semi_relaxed_matches_pot(entropy, reg_type, rho):
    M, a, b = random_problem(np.random.default_rng(4), 7, 9)
    res = ota.solve(t64(M), C.unbalanced(rho, a, b * 0.7), epsilon=0.2, entropy=entropy, **TIGHT)
    ref = ot.unbalanced.sinkhorn_unbalanced(
        a, b * 0.7, M, 0.2, rho, reg_type=reg_type, stopThr=1e-16, numItermax=1_000_000
    )
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-10, rtol=0)
    hard_side = 0 if math.isinf(rho[0]) else 1
    target = a if hard_side == 0 else b * 0.7
    np.testing.assert_allclose(res.marginals[hard_side].numpy(), target, atol=1e-12)


def test_unbalanced_value_matches_ot_solve_entropy():
    M, a, b = random_problem(np.random.default_rng(5), 6, 8)
    res = ota.solve(t64(M), C.unbalanced(0.5, a, b), epsilon=0.1, entropy="shannon", **TIGHT)
    ref = ot.solve(M, a, b, reg=0.1, reg_type="entropy", unbalanced=0.5, max_iter=1_000_000, tol=1e-16)
    assert float(res.value) == pytest.approx(float(ref.value), abs=1e-8)


@pytest.mark.parametrize("mass", [0.3, 0.6, 0.95])
def test_partial_matches_entropic_partial_wasserstein(mass):
    M, a, b = random_problem(np.random.default_rng(6), 7, 5)
    res = ota.solve(t64(M), C.partial(mass, a, b), epsilon=0.1, entropy="shannon", **TIGHT)
    ref = ot.partial.entropic_partial_wasserstein(a, b, M, 0.1, m=mass, numItermax=20_000)
    assert bool(res.converged)
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-10, rtol=0)
    assert float(res.mass) == pytest.approx(mass, abs=1e-12)


def test_forbidden_diagonal_matches_a_huge_diagonal_cost(rng):
    x = rng.normal(size=(8, 2))
    M = ((x[:, None] - x[None]) ** 2).sum(-1)
    M /= M.max()
    res = ota.solve(t64(M), C.balanced() + [C.Forbid(mask="diagonal")], epsilon=0.2, **TIGHT)
    huge = M.copy()
    np.fill_diagonal(huge, 1e4)
    u = np.full(8, 1 / 8)
    ref = ot.sinkhorn(u, u, huge, 0.2, method="sinkhorn_log", stopThr=1e-15, numItermax=1_000_000)
    assert bool(res.converged)
    assert torch.all(res.plan.diagonal() == 0)  # exact zeros, not tiny numbers
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-10, rtol=0)
