"""Regression tests of issue 10's engine faults (items 5-12 and 15) and the properties behind them:
no NaN or inf in any output for inputs that validation accepts; anything the dtype cannot
represent is rejected up front with a ValueError naming the argument."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import otalign as ota
from otalign import constraints as C

F64 = torch.float64


# -- item 5: outputs are computed on demand from the caller's tensors ---------------------------


@pytest.mark.parametrize("method", ["log", "auto"])
def test_item5_reading_results_after_an_in_place_change_of_the_inputs_raises(method):
    M = torch.rand(6, 5, generator=torch.Generator().manual_seed(0))
    res = ota.solve(M, epsilon=0.1, method=method)
    M.mul_(3)
    for read in (lambda: res.value, lambda: res.plan, lambda: res.log_plan, lambda: res.marginals,
                 lambda: res.transport_cost):
        with pytest.raises(RuntimeError, match="cost was modified in place"):
            read()
    a = torch.full((6,), 1 / 6)
    res = ota.solve(torch.rand(6, 5), C.unbalanced(0.5, a), epsilon=0.1)
    a.zero_()
    with pytest.raises(RuntimeError, match=r"constraints\[0\]\.weights was modified in place"):
        res.value


def test_item5_values_read_before_the_change_stay_valid():
    M = torch.rand(6, 5, generator=torch.Generator().manual_seed(1))
    res = ota.solve(M, epsilon=0.1, method="auto")
    value, log_plan = res.value.clone(), res.log_plan.clone()
    M.mul_(3)
    assert torch.equal(res.value, value) and torch.equal(res.log_plan, log_plan)


# -- item 6: problems of zero mass ---------------------------------------------------------------


@pytest.mark.parametrize("grad", ["unroll", "implicit", "envelope"])
@pytest.mark.parametrize("family", ["balanced", "unbalanced", "semi-relaxed"])
def test_item6_a_problem_of_zero_mass_has_the_zero_plan_value_zero_and_zero_gradients(grad, family):
    g = torch.Generator().manual_seed(2)
    cost = torch.rand(2, 3, 4, dtype=F64, generator=g).requires_grad_()
    a, b = torch.rand(2, 3, dtype=F64, generator=g), torch.rand(2, 4, dtype=F64, generator=g)
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    a[1], b[1] = 0.0, 0.0  # problem 1: fully padded
    a.requires_grad_(), b.requires_grad_()
    cons = {"balanced": lambda: C.balanced(a, b), "unbalanced": lambda: C.unbalanced(0.5, a, b),
            "semi-relaxed": lambda: C.unbalanced((math.inf, 0.5), a, b)}[family]()
    res = ota.solve(cost, cons, epsilon=0.1, grad=grad)
    assert bool(res.converged.all())
    assert torch.equal(res.plan[1].detach(), torch.zeros(3, 4, dtype=F64))
    assert float(res.value[1]) == 0.0 and torch.isfinite(res.value).all()
    grads = torch.autograd.grad(res.value.sum(), (cost, a, b))
    for gr in grads:
        assert torch.isfinite(gr).all()
        assert torch.equal(gr[1], torch.zeros_like(gr[1]))


def test_item6_an_unbatched_problem_of_zero_mass():
    res = ota.solve(torch.rand(3, 4, dtype=F64), C.balanced(torch.zeros(3, dtype=F64), torch.zeros(4, dtype=F64)),
                    epsilon=0.1)
    assert bool(res.converged) and float(res.value) == 0.0 and float(res.plan.abs().sum()) == 0.0
    assert torch.isfinite(res.f).all() and torch.isfinite(res.g).all()


# -- items 7-9: what the dtype cannot represent is rejected up front -----------------------------


@pytest.mark.parametrize("scale, dtype", [(1e10, torch.float32), (1e30, F64)])
def test_item7_costs_too_large_for_epsilon_in_the_dtype_are_rejected(scale, dtype):
    with pytest.raises(ValueError, match=r"epsilon=0\.1 is too small for costs of magnitude"):
        ota.solve(torch.rand(5, 4, dtype=dtype) * scale, epsilon=0.1)


@pytest.mark.parametrize("eps", [1e-30, 1e-300, 5e-324])
def test_item8_epsilon_below_the_resolution_of_the_dtype_is_rejected(eps):
    with pytest.raises(ValueError, match="epsilon=.* is too small"):
        ota.solve(torch.rand(5, 4), epsilon=eps)


def test_item8_the_resolution_limit_is_the_dtype_s():
    cost = torch.rand(5, 4) + 0.5
    ota.solve(cost, epsilon=2.0 / 8e6, max_iter=10)  # |C| / eps < 8.4e6: accepted in float32
    with pytest.raises(ValueError, match="too small"):
        ota.solve(cost, epsilon=1.5 / 1e7)
    ota.solve(cost.double(), epsilon=1.5 / 1e7, max_iter=10)  # and in float64


def test_item9_constraint_data_beyond_the_compute_dtype_is_rejected():
    cost = torch.rand(5, 4)
    big = torch.full((5,), 1e39, dtype=F64)
    with pytest.raises(ValueError, match=r"weights has entries up to 1e\+39.*float32"):
        ota.solve(cost, C.unbalanced(1.0, big), epsilon=0.1)
    with pytest.raises(ValueError, match=r"TotalMass\.mass .*1e\+39"):
        ota.solve(cost, [C.Marginal(axis=0, relation="<="), C.Marginal(axis=1, relation="<="), C.TotalMass(mass=1e39)],
                  epsilon=0.1)
    tiny = torch.full((5,), 1e-50, dtype=F64)
    with pytest.raises(ValueError, match="below the smallest"):
        ota.solve(cost, C.unbalanced(1.0, tiny), epsilon=0.1)


# -- item 10: exact solves at extreme scales ------------------------------------------------------


def test_item10_exact_solve_with_tiny_weights_is_rescaled_not_crashed():
    cost = torch.rand(5, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    a, b = torch.full((5,), 0.2, dtype=F64), torch.full((4,), 0.25, dtype=F64)
    unit = ota.solve(cost, C.balanced(a, b), epsilon=0)
    tiny = ota.solve(cost, C.balanced(a * 1e-200, b * 1e-200), epsilon=0)  # POT's simplex segfaulted here
    assert bool(tiny.converged)
    torch.testing.assert_close(tiny.plan * 1e200, unit.plan, rtol=1e-12, atol=0)
    part = ota.solve(cost, C.partial(0.5e-200, a * 1e-200, b * 1e-200), epsilon=0)
    assert float(part.plan.sum()) == pytest.approx(0.5e-200, rel=1e-12)
    zero = ota.solve(cost, C.balanced(a * 0, b * 0), epsilon=0)
    assert float(zero.value) == 0.0 and float(zero.plan.abs().sum()) == 0.0


# -- item 11: empty batches ------------------------------------------------------------------------


@pytest.mark.parametrize("cons", [
    lambda: C.balanced(torch.ones(0, 5) / 5),
    lambda: C.balanced() + [C.Forbid(mask=torch.zeros(0, 5, 4, dtype=torch.bool))],
    lambda: C.partial(torch.zeros(0) + 0.5),
])
def test_item11_empty_batches_declared_by_constraints_raise_value_error(cons):
    with pytest.raises(ValueError, match="batch of 0 problems"):
        ota.solve(torch.rand(5, 4), cons(), epsilon=0.1)


# -- item 12: epsilon scaling respects max_iter and is built lazily ----------------------------------


@pytest.mark.parametrize("factor", [1 - 1e-7, 1 - 1e-10])
def test_item12_annealing_with_a_factor_near_one_stops_at_max_iter(factor):
    res = ota.solve(torch.rand(5, 4), epsilon=0.1, anneal=factor, max_iter=100)
    assert int(res.n_iters) == 100 and not bool(res.converged)


# -- item 15 and issue 12 (tolerance): numbers are validated and converted -----------------------------


def test_item15_bad_numbers_name_the_argument():
    cost = torch.rand(5, 4)
    with pytest.raises(ValueError, match="epsilon=None"):
        ota.solve(cost, epsilon=None)
    with pytest.raises(ValueError, match="max_iter=9223372036854775808"):
        ota.solve(cost, epsilon=0.1, max_iter=2**63)
    for name in ("tol", "check_every", "max_iter"):
        with pytest.raises(ValueError, match=name):
            ota.solve(cost, epsilon=0.1, **{name: "10"})
    with pytest.raises(ValueError, match="init is given with epsilon=0"):
        ota.solve(cost, epsilon=0, init=(torch.zeros(5), torch.zeros(4)))


def test_item15_numpy_scalars_and_one_element_tensors_are_numbers():
    cost = torch.rand(5, 4, generator=torch.Generator().manual_seed(4))
    ref = ota.solve(cost, epsilon=0.1, tol=1e-5, max_iter=500)
    for kw in (dict(epsilon=np.float32(0.1), tol=np.float64(1e-5), max_iter=np.int64(500)),
               dict(epsilon=torch.tensor(0.1), tol=1e-5, max_iter=500)):
        res = ota.solve(cost, **kw)
        torch.testing.assert_close(res.plan, ref.plan)


def test_tol_zero_runs_exactly_max_iter_sweeps():
    res = ota.solve(torch.rand(5, 4, dtype=F64), epsilon=0.5, tol=0, max_iter=37)
    assert int(res.n_iters) == 37 and res.check_iters[-1] == 37


# -- the class of fault: no NaN or inf in any output for accepted inputs -----------------------------------


FAMILIES = {
    "balanced": lambda a, b: C.balanced(a, b),
    "unbalanced": lambda a, b: C.unbalanced(0.7, a, b),
    "semi-relaxed": lambda a, b: C.unbalanced((math.inf, 0.3), a, b),
    "partial": lambda a, b: C.partial(0.5 * float(min(a.sum(), b.sum())), a, b),
    "tv": lambda a, b: [C.Marginal(axis=0, weights=a, penalty=C.TV(rho=0.4)), C.Marginal(axis=1, weights=b)],
    "forbid": lambda a, b: C.balanced(a, b) + [C.Forbid(mask="diagonal")],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    log_scale=st.floats(-30, 30),
    log_eps=st.floats(-30, 5),
    log_mass=st.floats(-30, 30),
    double=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_accepted_inputs_never_give_nan_or_inf(family, log_scale, log_eps, log_mass, double, seed):
    dtype = F64 if double else torch.float32
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(4, 4, dtype=F64, generator=g) * 10.0**log_scale
    a = torch.rand(4, dtype=F64, generator=g) + 0.1
    b = torch.rand(4, dtype=F64, generator=g) + 0.1
    a, b = a / a.sum() * 10.0**log_mass, b / b.sum() * 10.0**log_mass
    try:
        res = ota.solve(cost.to(dtype), FAMILIES[family](a, b), epsilon=10.0**log_eps, max_iter=300)
    except ValueError:
        return  # rejected up front: fine
    outputs = [res.plan, res.f, res.g, res.value, res.transport_cost, *res.marginals, res.error]
    if bool(res.converged):
        for out in outputs:
            assert torch.isfinite(out).all(), (family, out)
    else:  # the report is honest: either the values are finite, or the solve says it diverged
        finite = all(bool(torch.isfinite(o).all()) for o in outputs[:-1])
        assert finite or bool(res.diverged)
