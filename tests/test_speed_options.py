"""Every speed option gives the same answer: stabilised kernel domain, epsilon scaling,
over-relaxation, warm starts; and exact OT (epsilon = 0) against POT."""

import math

import numpy as np
import ot
import pytest
import torch

import otalign as ota
from conftest import random_problem, t64
from otalign import constraints as C
from otalign.solvers import engine


def sphere_cost(n, m, seed, B=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 16) if B is None else (B, n, 16)
    x = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
    shape = (m, 16) if B is None else (B, m, 16)
    y = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
    return ota.costs.sqeuclidean(x, y).to(dtype)


FAMILIES = {
    "balanced": lambda: C.balanced(),
    "unbalanced": lambda: C.unbalanced(0.5),
    "semi-relaxed": lambda: C.unbalanced((math.inf, 0.3)),
    "partial": lambda: C.partial(0.7),
    "tv": lambda: [C.Marginal(axis=0, penalty=C.TV(rho=0.5)), C.Marginal(axis=1)],
    "forbid": lambda: C.balanced() + [C.Forbid(mask="diagonal")],
}


def _domains_used(monkeypatch):
    """Record the domain of every interval."""
    seen = []
    real = engine._choose_domain

    def spy(plan, *args):
        real(plan, *args)
        seen.append(plan.mode)

    monkeypatch.setattr(engine, "_choose_domain", spy)
    return seen


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("dtype, eps, tol", [(torch.float64, 0.1, 1e-11), (torch.float32, 0.1, 1e-5), (torch.float32, 0.004, 1e-3)])
def test_kernel_domain_gives_the_log_domain_answer(monkeypatch, name, dtype, eps, tol):
    seen = _domains_used(monkeypatch)
    cost = sphere_cost(40, 30, 0, dtype=dtype)
    kw = dict(epsilon=eps, tol=tol, max_iter=30_000)
    fast = ota.solve(cost, FAMILIES[name](), method="auto", **kw)
    slow = ota.solve(cost, FAMILIES[name](), method="log", **kw)
    assert "kernel" in seen  # the kernel domain was actually used
    assert bool(fast.converged) and bool(slow.converged)
    atol = 1e-10 if dtype == torch.float64 else 20 * tol
    assert float((fast.plan - slow.plan).abs().sum()) <= atol
    assert torch.isfinite(fast.plan).all()


def test_kernel_domain_in_a_batch_with_padding_and_small_epsilon():
    cost = sphere_cost(30, 30, 1, B=4)
    w = torch.ones(4, 30)
    w[1, 20:] = 0
    w[3, :5] = 0
    w = w / w.sum(-1, keepdim=True)
    kw = dict(epsilon=2e-3 * float(cost.max() - cost.min()), tol=1e-3, max_iter=50_000)
    fast = ota.solve(cost, C.balanced(w, w), **kw)
    slow = ota.solve(cost, C.balanced(w, w), method="log", **kw)
    assert bool(fast.converged.all()) and torch.isfinite(fast.plan).all()
    assert torch.all(fast.plan[1, 20:] == 0) and torch.all(fast.plan[3, :, :5] == 0)
    assert float((fast.plan - slow.plan).abs().sum((1, 2)).max()) < 2e-2


@pytest.mark.parametrize("dtype, shift", [(torch.float64, 0.0), (torch.float64, 1e3), (torch.float32, 0.0), (torch.float32, 10.0)])
def test_final_plan_scaled_from_the_kept_kernel_equals_exp_log_plan(monkeypatch, dtype, shift):
    """The plan of a kernel-domain solve is diag(du) Ktil diag(dv) (no exp per entry), as exact
    as exp(log P), also after the potentials were centred by a large gauge shift (a cost offset
    moves f and g by ~shift / 2)."""
    from otalign.solvers.plan import DenseLogPlan

    taken = []
    real = DenseLogPlan.take_plan
    monkeypatch.setattr(DenseLogPlan, "take_plan", lambda self: taken.append(real(self)) or taken[-1])
    cost = sphere_cost(50, 40, 3, dtype=torch.float64) + shift
    reference = ota.solve(cost, epsilon=0.05, tol=1e-13, max_iter=10_000, method="log").plan
    # log P sums terms of size max C / eps: a few ulps of that is the floor of either formula
    floor = 64 * torch.finfo(dtype).eps * float(cost.max()) / 0.05
    for max_iter in (7, 500):  # stopped between checks (scalings moved), and converged
        res = ota.solve(cost.to(dtype), epsilon=0.05, tol=1e-10 if dtype == torch.float64 else 1e-5, max_iter=max_iter)
        plan = res.plan.double()
        exp_log = torch.exp(res.log_plan.double())
        assert float((plan - exp_log).abs().max()) <= floor * float(exp_log.max())
        if max_iter == 500:
            assert bool(res.converged) and taken[-1] is not None  # the kept kernel was used
            assert float((plan - reference).abs().sum()) <= (1e-8 if dtype == torch.float64 else 2e-4)


def test_kept_kernel_is_not_used_when_the_scalings_moved_too_far():

    cost = sphere_cost(20, 20, 4, dtype=torch.float32)
    res = ota.solve(cost, epsilon=0.05, tol=1e-5)
    st = res._state
    assert st._final is not None
    buf, F0, G0, eps = st._final
    st._final = (buf, F0 - 61.0 * eps, G0, eps)  # du amplifies flushed entries by e^61 > e^(2 * 30)
    assert st.take_plan() is None and st._final is None
    expected = torch.exp(res.log_plan)
    assert torch.allclose(res.plan, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["balanced", "unbalanced", "partial"])
def test_epsilon_scaling_reaches_the_same_solution(name):
    cost = sphere_cost(50, 40, 2, dtype=torch.float64)
    kw = dict(epsilon=0.01, tol=1e-10, max_iter=100_000)
    plain = ota.solve(cost, FAMILIES[name](), **kw)
    annealed = ota.solve(cost, FAMILIES[name](), anneal=0.5, **kw)
    assert bool(annealed.converged) and float(annealed.error) <= 1e-10
    assert float((annealed.plan - plain.plan).abs().sum()) < 1e-8
    assert annealed.check_iters[0] > 0  # the stopping test only starts at the target epsilon


def test_epsilon_scaling_saves_iterations_at_small_epsilon():
    cost = sphere_cost(60, 60, 3, dtype=torch.float64)
    kw = dict(epsilon=0.02, tol=1e-6, max_iter=100_000)
    plain = ota.solve(cost, **kw)
    annealed = ota.solve(cost, anneal=0.5, **kw)
    assert bool(annealed.converged) and int(annealed.n_iters) < 0.5 * int(plain.n_iters)


@pytest.mark.parametrize("name", ["balanced", "unbalanced", "partial", "tv"])
@pytest.mark.parametrize("omega", ["adaptive", 1.5])
def test_overrelaxation_converges_to_the_same_plan(name, omega):
    cost = sphere_cost(50, 45, 4, dtype=torch.float64)
    kw = dict(epsilon=0.02, tol=1e-10, max_iter=100_000)
    plain = ota.solve(cost, FAMILIES[name](), **kw)
    fast = ota.solve(cost, FAMILIES[name](), overrelax=omega, **kw)
    assert bool(fast.converged)
    assert float((fast.plan - plain.plan).abs().sum()) < 1e-8


def test_adaptive_overrelaxation_saves_iterations_on_slow_problems():
    cost = sphere_cost(100, 100, 7, dtype=torch.float64)
    kw = dict(epsilon=0.01, tol=1e-5, max_iter=100_000)
    plain = ota.solve(cost, overrelax=None, **kw)
    fast = ota.solve(cost, **kw)  # adaptive over-relaxation is the default
    assert bool(fast.converged) and int(fast.n_iters) < 0.7 * int(plain.n_iters)


def test_adaptive_overrelaxation_rule_and_safeguard():
    f = torch.zeros(3, dtype=torch.bool)
    omega, failures, ratio, just = torch.ones(3), torch.zeros(3), torch.tensor([0.90, 0.50, 0.90]), f.clone()
    last = torch.tensor([1e-3, 1e-3, 1e-3])
    err = torch.tensor([0.905e-3, 0.6e-3, 0.7e-3])  # stable slow ratio / unstable / unstable
    omega, failures, ratio, just = engine._adapt_omega_tensor(omega, failures, ratio, just, err, last, 10, 1.8)
    assert 1.0 < float(omega[0]) <= 1.8 and omega[1:].tolist() == [1.0, 1.0] and just.tolist() == [True, False, False]
    first_omega = float(omega[0])
    # a bump right after omega was set is tolerated; growth at the next check is not
    bump = torch.tensor([1.2e-3, 5e-4, 5e-4])
    omega, failures, ratio, just = engine._adapt_omega_tensor(omega, failures, ratio, just, bump, err, 10, 1.8)
    assert float(omega[0]) > 1.0 and float(failures[0]) == 0
    grow = torch.tensor([1.3e-3, 4e-4, 4e-4])
    omega, failures, ratio, just = engine._adapt_omega_tensor(omega, failures, ratio, just, grow, bump, 10, 1.8)
    assert float(omega[0]) == 1.0 and float(failures[0]) == 1
    # a plateau (ratio ~1) is not a rate: omega stays 1
    flat = grow * 0.9995
    omega, failures, ratio, just = engine._adapt_omega_tensor(omega, failures, ratio, just, flat, grow, 10, 1.8)
    omega, failures, ratio, just = engine._adapt_omega_tensor(omega, failures, ratio, just, flat * 0.9995, flat, 10, 1.8)
    assert float(omega[0]) == 1.0
    # a stable geometric rate again: a retry, more damped than the first omega
    e1 = flat * 0.9995 * 0.9
    omega, failures, ratio, just = engine._adapt_omega_tensor(omega, failures, ratio, just, e1, flat * 0.9995, 10, 1.8)
    omega, failures, ratio, just = engine._adapt_omega_tensor(omega, failures, ratio, just, e1 * 0.9, e1, 10, 1.8)
    assert 1.0 < float(omega[0]) < first_omega
    # after ADAPT_TRIES failures the problem stays at omega = 1 for good
    failures = torch.full((3,), float(engine.ADAPT_TRIES))
    omega = torch.ones(3)
    omega, failures, ratio, just = engine._adapt_omega_tensor(omega, failures, torch.full((3,), 0.9), f.clone(),
                                                       torch.full((3,), 0.9e-3), torch.full((3,), 1e-3), 10, 1.8)
    assert omega.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", ["balanced", "unbalanced", "partial"])
def test_warm_start_needs_at_most_40_percent_of_the_iterations(name):
    # (30% under the old movement test; the duality-gap certificate of the KL penalties asks for
    # a gap ~tol^2, reached at the same rate from a start that is closer: 120 vs 360 sweeps here)
    cost = sphere_cost(40, 40, 6, dtype=torch.float64)
    kw = dict(epsilon=0.03, tol=1e-6, max_iter=100_000)
    cons = C.unbalanced(2.0) if name == "unbalanced" else FAMILIES[name]()
    first = ota.solve(cost, cons, **kw)
    moved = cost + 1e-4 * sphere_cost(40, 40, 7, dtype=torch.float64)  # e.g. the next training step
    cold = ota.solve(moved, cons, **kw)
    warm = ota.solve(moved, cons, init=first, **kw)
    assert bool(warm.converged)
    assert int(warm.n_iters) <= 0.4 * int(cold.n_iters)
    assert float((warm.plan - cold.plan).abs().sum()) < 1e-4


def test_exact_balanced_matches_network_simplex(rng):
    M, a, b = random_problem(rng, 7, 5)
    res = ota.solve(t64(M), C.balanced(a, b), epsilon=0)
    P = ot.emd(a, b, M)
    np.testing.assert_allclose(res.plan.numpy(), P, atol=1e-12)
    assert float(res.value) == pytest.approx(float((P * M).sum()), abs=1e-12)
    assert bool(res.converged) and int(res.n_iters) == 0


def test_exact_partial_and_batched_and_forbidden(rng):
    M, a, b = random_problem(rng, 6, 6)
    res = ota.solve(t64(M), C.partial(0.6, a, b), epsilon=0)
    P = ot.partial.partial_wasserstein(a, b, M, m=0.6)
    np.testing.assert_allclose(res.plan.numpy(), P, atol=1e-12)
    batch = ota.solve(t64(np.stack([M, M.T])), C.balanced(), epsilon=0)
    assert batch.plan.shape == (2, 6, 6)
    np.testing.assert_allclose(batch.plan[1].numpy(), ot.emd(np.ones(6) / 6, np.ones(6) / 6, M.T), atol=1e-12)
    forbid = ota.solve(t64(M), C.balanced() + [C.Forbid(mask="diagonal")], epsilon=0)
    assert torch.all(forbid.plan.diagonal() == 0) and bool(forbid.converged)
    huge = M.copy()
    np.fill_diagonal(huge, 1e6)
    np.testing.assert_allclose(forbid.plan.numpy(), ot.emd(np.ones(6) / 6, np.ones(6) / 6, huge), atol=1e-12)


def test_exact_value_gradients_and_entropic_limit():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(5, 4, dtype=torch.float64, generator=g).requires_grad_()
    res = ota.solve(cost, epsilon=0)
    (grad,) = torch.autograd.grad(res.value, cost)
    torch.testing.assert_close(grad, res.plan)
    gaps = [float(ota.solve(cost.detach(), epsilon=e, tol=1e-10, max_iter=200_000).transport_cost - res.value)
            for e in (0.1, 0.01, 0.001)]
    assert gaps[0] > gaps[1] > gaps[2] >= -1e-9 and gaps[2] < 1e-3


def test_exact_rejects_what_it_cannot_solve():
    cost = torch.rand(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="epsilon=0 .*KL.*epsilon > 0"):
        ota.solve(cost, C.unbalanced(0.5), epsilon=0)
    with pytest.raises(ValueError, match="epsilon=0"):
        ota.solve(cost, C.balanced() + [C.BlockMass(row_groups=[0, 0, 1, 1], col_groups=[0, 1, 1], mass=[[1 / 6, 1 / 3], [1 / 6, 1 / 3]])], epsilon=0)
    mask = torch.tensor([[False, True, True], [False, True, True], [False, False, False]])
    # rows 0 and 1 (mass 2/3) can only use column 0 (mass 1/3): infeasible (Hall's condition),
    # although every row and column keeps an allowed entry
    res = ota.solve(cost[:3], C.balanced() + [C.Forbid(mask=mask)], epsilon=0)
    assert not bool(res.converged)


def test_speed_option_validation():
    cost = torch.rand(4, 3)
    for kwargs, match in [(dict(method="kernel!"), "method"), (dict(overrelax=2.5), "overrelax"),
                          (dict(overrelax="fast"), "overrelax"), (dict(anneal=1.5), "anneal")]:
        with pytest.raises(ValueError, match=match):
            ota.solve(cost, epsilon=0.1, **kwargs)


def test_overrelax_start_is_where_the_adaptive_rule_starts():
    cost = sphere_cost(60, 60, 7, dtype=torch.float64)
    kw = dict(epsilon=0.03, tol=1e-9, max_iter=100_000)
    first = ota.solve(cost, **kw)
    assert first.omega is not None and float(first.omega) > 1.0  # the rule raised omega on this slow problem
    assert ota.solve(cost, overrelax=None, **kw).omega is None
    # before the second check the started omega is the omega of every sweep: as a fixed one
    short = dict(epsilon=0.03, tol=0.0, max_iter=10, check_every=10)
    started = ota.solve(cost, overrelax_start=1.5, **short)
    fixed = ota.solve(cost, overrelax=1.5, **short)
    plain = ota.solve(cost, **short)
    assert torch.equal(started.f, fixed.f) and not torch.allclose(started.f, plain.f)
    # converged: the same plan as from omega = 1 (float64), per problem of a batch
    moved = torch.stack([cost + 1e-4 * sphere_cost(60, 60, 8, dtype=torch.float64)] * 2)
    res = ota.solve(moved, init=(first.f, first.g), overrelax_start=torch.tensor([float(first.omega), 1.0]), **kw)
    ref = ota.solve(moved[0], init=(first.f, first.g), **kw)
    assert bool(res.converged.all()) and res.omega.shape == (2,)
    assert float((res.plan[0] - ref.plan).abs().sum()) < 1e-7 and float((res.plan[1] - ref.plan).abs().sum()) < 1e-7


def test_overrelax_start_validation():
    cost = torch.rand(4, 3)
    for kwargs, match in [(dict(overrelax_start=2.0), "overrelax_start"),
                          (dict(overrelax_start=0.5), "overrelax_start"),
                          (dict(overrelax_start=1.5, overrelax=None), "overrelax_start"),
                          (dict(overrelax_start=torch.tensor([1.2, 1.3])), "overrelax_start")]:
        with pytest.raises(ValueError, match=match):
            ota.solve(cost, epsilon=0.1, **kwargs)
