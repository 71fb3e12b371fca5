"""Closed forms, invariances, precision (float16/bfloat16/float32), zeros, convergence reporting."""


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import otalign as ota
from conftest import random_problem, t64
from otalign import constraints as C


@given(c=st.floats(-5, 5), eps=st.floats(0.01, 10), ent=st.sampled_from(["kl", "shannon"]))
@settings(max_examples=40, deadline=None)
def test_one_by_one_problem_closed_form(c, eps, ent):
    res = ota.solve(torch.tensor([[c]], dtype=torch.float64), epsilon=eps, entropy=ent, tol=1e-14)
    # log P = f/eps + g/eps - c/eps sums terms of size |c|/eps: a few ulps of that is the floor
    assert float(res.plan) == pytest.approx(1.0, abs=1e-14 + 4 * 2.0**-52 * abs(c) / eps)
    assert float(res.transport_cost) == pytest.approx(c, abs=1e-12)
    assert float(res.f + res.g) == pytest.approx(c, abs=1e-12)  # P = R exp((f + g - C)/eps), R = 1
    expected = c if ent == "kl" else c - eps  # KL(1 || 1) = 0; 1 log 1 - 1 = -1
    assert float(res.value) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 7), m=st.integers(1, 7), eps=st.floats(0.05, 2.0))
def test_balanced_plan_has_the_prescribed_marginals(seed, n, m, eps):
    M, a, b = random_problem(np.random.default_rng(seed), n, m)
    res = ota.solve(t64(M), C.balanced(a, b), epsilon=eps, tol=1e-11, max_iter=100_000)
    assert bool(res.converged)
    np.testing.assert_allclose(res.plan.sum(1).numpy(), a, atol=1e-10)
    np.testing.assert_allclose(res.plan.sum(0).numpy(), b, atol=1e-10)
    assert float(res.error) <= 1e-11


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_transpose_symmetry_and_cost_shift_invariance(seed):
    rng = np.random.default_rng(seed)
    M, a, b = random_problem(rng, 6, 4)
    kw = dict(epsilon=0.2, tol=1e-12, max_iter=100_000)
    res = ota.solve(t64(M), C.unbalanced(0.7, a, b), **kw)
    tr = ota.solve(t64(M.T), C.unbalanced(0.7, b, a), **kw)
    torch.testing.assert_close(res.plan, tr.plan.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.value, tr.value, atol=1e-12, rtol=0)
    shift = M + rng.normal(size=(6, 1)) + rng.normal(size=(1, 4))  # balanced plans ignore c_i + d_j
    p1 = ota.solve(t64(M), C.balanced(a, b), **kw).plan
    p2 = ota.solve(t64(shift), C.balanced(a, b), **kw).plan
    torch.testing.assert_close(p1, p2, atol=1e-11, rtol=0)


def test_entropies_agree_on_balanced_problems_and_differ_otherwise(rng):
    M, a, b = random_problem(rng, 6, 5)
    kw = dict(epsilon=0.1, tol=1e-12, max_iter=100_000)
    p_kl = ota.solve(t64(M), C.balanced(a, b), entropy="kl", **kw).plan
    p_sh = ota.solve(t64(M), C.balanced(a, b), entropy="shannon", **kw).plan
    torch.testing.assert_close(p_kl, p_sh, atol=1e-12, rtol=0)
    u_kl = ota.solve(t64(M), C.unbalanced(0.3, a, b), entropy="kl", **kw).plan
    u_sh = ota.solve(t64(M), C.unbalanced(0.3, a, b), entropy="shannon", **kw).plan
    assert (u_kl - u_sh).abs().max() > 1e-3


def test_limits_of_rho():
    M, a, b = random_problem(np.random.default_rng(3), 5, 5)
    kw = dict(epsilon=0.1, tol=1e-12, max_iter=200_000)
    hard = ota.solve(t64(M), C.balanced(a, b), **kw).plan
    big = ota.solve(t64(M), C.unbalanced(1e6, a, b), **kw).plan
    torch.testing.assert_close(big, hard, atol=1e-6, rtol=0)
    tiny = ota.solve(t64(M), C.unbalanced(1e-9, a, b), **kw).plan
    kernel = t64(np.outer(a, b) * np.exp(-M / 0.1))  # rho -> 0: no projection, the plan is R K
    torch.testing.assert_close(tiny, kernel, atol=1e-9, rtol=0)


def test_planted_permutation_at_small_epsilon():
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    M = torch.ones(6, 6, dtype=torch.float64)
    M[torch.arange(6), perm] = 0.0
    res = ota.solve(M, epsilon=0.01, tol=1e-10, max_iter=1000)
    target = torch.zeros(6, 6, dtype=torch.float64)
    target[torch.arange(6), perm] = 1 / 6
    torch.testing.assert_close(res.plan, target, atol=1e-10, rtol=0)


def test_forbidden_pairs_and_zero_weights_give_exact_zeros(rng):
    M, a, b = random_problem(rng, 6, 6)
    a[2] = 0.0
    a /= a.sum()
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 1] = mask[3, 3] = mask[4, 0] = True
    res = ota.solve(t64(M), C.balanced(a, b) + [C.Forbid(mask=mask)], epsilon=0.05, tol=1e-10, max_iter=10_000)
    assert torch.all(res.plan[mask] == 0) and torch.all(res.plan[2] == 0)
    assert torch.isfinite(res.log_plan[~mask].nan_to_num(neginf=0)).all()
    assert not torch.isnan(res.plan).any() and not torch.isnan(res.f).any()


def test_float32_stable_at_small_epsilon():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(250, 16, generator=g), dim=1)
    cost = torch.cdist(x, y) ** 2
    eps = 1e-3 * float(cost.max() - cost.min())
    res = ota.solve(cost, epsilon=eps, tol=1e-4, max_iter=20_000)
    assert res.plan.dtype == torch.float32
    assert bool(res.converged) and float(res.error) <= 1e-4
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.f).all() and torch.isfinite(res.value)
    ref = ota.solve(cost.double(), epsilon=eps, tol=1e-7, max_iter=100_000)
    assert float((res.plan.double() - ref.plan).abs().sum()) < 2e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_outputs_keep_the_input_dtype(dtype):
    M, a, b = random_problem(np.random.default_rng(0), 20, 15)
    res = ota.solve(torch.as_tensor(M, dtype=dtype), C.unbalanced(0.5, a, b), epsilon=0.1, tol=1e-4)
    for t in (res.plan, res.log_plan, res.f, res.g, res.value, res.transport_cost, *res.marginals, res.error):
        assert t.dtype == dtype and t.device == torch.device("cpu")
    assert bool(res.converged) and torch.isfinite(res.plan.float()).all()
    ref = ota.solve(t64(M), C.unbalanced(0.5, a, b), epsilon=0.1, tol=1e-10)
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(dtype, 1e-4)
    assert float((res.plan.double() - ref.plan).abs().max()) < tol


def test_capped_run_reports_not_converged(rng):
    M, a, b = random_problem(rng, 8, 8)
    res = ota.solve(t64(M), C.balanced(a, b), epsilon=0.01, tol=1e-9, max_iter=3)
    assert not bool(res.converged) and int(res.n_iters) == 3
    assert float(res.error) > 1e-9 and res.check_iters == [0, 3]
    assert res.errors.shape == (2,)


def test_stopping_error_is_the_l1_marginal_violation(rng):
    M, a, b = random_problem(rng, 8, 7)
    res = ota.solve(t64(M), C.balanced(a, b), epsilon=0.05, tol=1e-300, max_iter=20, check_every=20)
    P = res.plan
    l1 = max(float((P.sum(1) - t64(a)).abs().sum()), float((P.sum(0) - t64(b)).abs().sum()))
    assert float(res.error) == pytest.approx(l1, rel=1e-10)


def test_warm_start_from_a_result_and_from_potentials(rng):
    M, a, b = random_problem(rng, 10, 9)
    kw = dict(epsilon=0.02, tol=1e-10, max_iter=100_000)
    cold = ota.solve(t64(M), C.unbalanced(0.5, a, b), **kw)
    warm = ota.solve(t64(M) * 1.01, C.unbalanced(0.5, a, b), init=cold, **kw)
    fresh = ota.solve(t64(M) * 1.01, C.unbalanced(0.5, a, b), **kw)
    assert int(warm.n_iters) <= int(fresh.n_iters)
    # the warm start begins close to the solution: every early check is far below the cold one's
    assert bool((warm.errors[:6] < 0.05 * fresh.errors[:6]).all())
    torch.testing.assert_close(warm.plan, fresh.plan, atol=1e-9, rtol=0)
    again = ota.solve(t64(M), C.balanced(a, b), init=(cold.f, cold.g), **kw)
    assert bool(again.converged)
    with pytest.raises(ValueError, match="init"):
        ota.solve(t64(M), C.balanced(a, b), init=(torch.zeros(3), None), **kw)


def test_non_finite_duals_are_reported_and_rolled_back():
    # rows that can only reach columns of weight ~0: the exact projection explodes in float32
    M = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    a = torch.tensor([0.5, 0.5])
    b = torch.tensor([1.0, 1e-45])
    res = ota.solve(M, C.balanced(a, b / b.sum()) + [C.Forbid(mask=torch.tensor([[False, True], [True, False]]))], epsilon=1e-3, max_iter=50)
    assert not bool(res.converged)
    assert torch.isfinite(res.f).all() or bool(res.diverged)
