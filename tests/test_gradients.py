"""Gradients: unroll, implicit and envelope modes for every constraint family, float64.

gradcheck (finite differences) w.r.t. the cost and the weights, on the value and on a random
linear functional of the plan; agreement between modes; exact zeros on padding and forbidden
pairs; backward graphs that do not grow with the iteration count; costs from point clouds.
"""

import math

import pytest
import torch
from torch.autograd import gradcheck

import otalign as ota
from otalign import constraints as C
from test_registry import MarginalBand

torch.manual_seed(0)
N, M_ = 4, 3
GEN = torch.Generator().manual_seed(3)
COST = torch.rand(N, M_, dtype=torch.float64, generator=GEN)
WA = torch.randn(N, dtype=torch.float64, generator=GEN) * 0.3
WB = torch.randn(M_, dtype=torch.float64, generator=GEN) * 0.3
LIN = torch.randn(N, M_, dtype=torch.float64, generator=GEN)
GROUPS_R = torch.tensor([0, 0, 1, 1])
GROUPS_C = torch.tensor([0, 1, 1])
MASK = torch.zeros(N, M_, dtype=torch.bool)
MASK[0, 0] = MASK[2, 1] = True


def family(name, wa, wb):
    """Constraint set of a family, built from raw parameters ``wa`` (n,) and ``wb`` (m,)."""
    soft_a, soft_b = torch.softmax(wa, 0), torch.softmax(wb, 0)
    pos_a, pos_b = torch.exp(wa) / N, torch.exp(wb) / M_
    return {
        "balanced": lambda: C.balanced(soft_a, soft_b),
        "unbalanced KL": lambda: C.unbalanced(0.4, pos_a, pos_b),
        "unbalanced TV": lambda: [C.Marginal(axis=0, weights=pos_a, penalty=C.TV(rho=0.6)),
                                  C.Marginal(axis=1, weights=pos_b, penalty=C.TV(rho=0.6))],
        "semi-relaxed": lambda: C.unbalanced((math.inf, 0.3), pos_a, pos_b),
        "partial": lambda: C.partial(0.5, pos_a, pos_b),
        "forbidden pairs": lambda: C.balanced(soft_a, soft_b) + [C.Forbid(mask=MASK)],
        "block masses": lambda: C.unbalanced(1.0, pos_a, pos_b)
        + [C.BlockMass(row_groups=GROUPS_R, col_groups=GROUPS_C, mass=torch.outer(pos_a[:2], pos_b[:2]) * 2)],
        "registry band": lambda: [C.Marginal(axis=0, weights=soft_a),
                                  MarginalBand(axis=1, lower=0.3 * pos_b, upper=0.6 * pos_b.clamp(min=0.6))],
    }[name]()


FAMILIES = ["balanced", "unbalanced KL", "unbalanced TV", "semi-relaxed", "partial",
            "forbidden pairs", "block masses", "registry band"]
CONVERGED = dict(tol=1e-13, max_iter=20_000)
FIXED = dict(tol=1e-300, max_iter=25)  # unroll: a fixed, differentiable number of sweeps


def run(name, cost, wa, wb, grad, target):
    kw = FIXED if grad == "unroll" else CONVERGED
    res = ota.solve(cost, family(name, wa, wb), epsilon=0.3, grad=grad, adjoint_tol=1e-13, **kw)
    if grad != "unroll":
        assert bool(res.converged), name
    return res.value if target == "value" else (res.plan * LIN).sum()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("grad, target", [("unroll", "value"), ("unroll", "plan"), ("implicit", "value"),
                                          ("implicit", "plan"), ("envelope", "value")])
def test_gradcheck(name, grad, target):
    inputs = (COST.clone().requires_grad_(), WA.clone().requires_grad_(), WB.clone().requires_grad_())
    assert gradcheck(lambda c, a, b: run(name, c, a, b, grad, target), inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_implicit_equals_unroll_at_convergence_and_envelope_equals_implicit(name):
    grads = {}
    for grad in ("implicit", "unroll", "envelope"):
        inputs = [COST.clone().requires_grad_(), WA.clone().requires_grad_(), WB.clone().requires_grad_()]
        res = ota.solve(inputs[0], family(name, inputs[1], inputs[2]), epsilon=0.3, grad=grad,
                        tol=1e-14, max_iter=20_000, adjoint_tol=1e-14)
        grads[grad, "value"] = torch.autograd.grad(res.value, inputs, retain_graph=True)
        if grad != "envelope":
            grads[grad, "plan"] = torch.autograd.grad((res.plan * LIN).sum(), inputs)

    def close(x, y):
        for gx, gy in zip(x, y):
            assert float((gx - gy).abs().max()) <= 1e-7 * max(1.0, float(gy.abs().max())), name

    close(grads["implicit", "plan"], grads["unroll", "plan"])
    close(grads["implicit", "value"], grads["unroll", "value"])
    close(grads["envelope", "value"], grads["implicit", "value"])


def test_envelope_cost_gradient_is_the_plan_and_other_outputs_refuse():
    cost = COST.clone().requires_grad_()
    res = ota.solve(cost, C.unbalanced(0.5), epsilon=0.2, grad="envelope", tol=1e-12)
    (g,) = torch.autograd.grad(res.value, cost)
    torch.testing.assert_close(g, res.plan.detach(), atol=1e-14, rtol=0)
    for out in (res.plan, res.f, res.marginals[0], res.transport_cost):
        with pytest.raises(RuntimeError, match="envelope.*value only"):
            torch.autograd.grad(out.sum(), cost)


@pytest.mark.parametrize("grad", ["unroll", "implicit", "envelope"])
def test_zero_weights_and_forbidden_pairs_get_exact_zero_gradients(grad):
    cost = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    a = torch.tensor([0.3, 0.0, 0.3, 0.4, 0.0], dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(5, 4, dtype=torch.bool)
    mask[0, 1] = mask[3, 2] = True
    lin = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for cons in (C.balanced(a) + [C.Forbid(mask=mask)], C.unbalanced(0.5, a) + [C.Forbid(mask=mask)]):
        res = ota.solve(cost, cons, epsilon=0.1, grad=grad, tol=1e-12, max_iter=5000)
        targets = [res.value] + ([] if grad == "envelope" else [(res.plan * lin).sum(), (res.f * lin[:, 0]).sum()])
        for out in targets:
            gc, ga = torch.autograd.grad(out, (cost, a), retain_graph=True)
            assert torch.isfinite(gc).all() and torch.isfinite(ga).all()
            assert torch.all(gc[mask] == 0) and torch.all(gc[[1, 4]] == 0)
            assert torch.all(ga[[1, 4]] == 0)


def _graph_size(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return len(seen)


@pytest.mark.parametrize("grad", ["implicit", "envelope"])
def test_backward_graph_does_not_grow_with_iterations(grad):
    sizes = {}
    for iters in (10, 300):
        cost = torch.rand(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        res = ota.solve(cost, C.partial(0.5), epsilon=0.05, grad=grad, tol=1e-300, max_iter=iters)
        sizes[iters] = _graph_size(res.value)
    assert sizes[10] == sizes[300]
    cost = torch.rand(6, 5, dtype=torch.float64).requires_grad_()
    unrolled = [_graph_size(ota.solve(cost, C.partial(0.5), epsilon=0.05, grad="unroll", tol=1e-300, max_iter=k).value)
                for k in (10, 30)]
    assert unrolled[1] > unrolled[0] + 100  # the unrolled graph does grow: the test can fail


def test_converged_members_of_a_batch_get_their_own_gradients():
    g = torch.Generator().manual_seed(2)
    cost = torch.rand(3, 5, 4, dtype=torch.float64, generator=g)
    cost[1] *= 8  # a slow member
    for grad in ("implicit", "unroll"):
        batch = cost.clone().requires_grad_()
        res = ota.solve(batch, C.unbalanced(0.5), epsilon=0.05, grad=grad, tol=1e-12, max_iter=20_000, check_every=1)
        (gb,) = torch.autograd.grad((res.plan * LIN[:, :4].reshape(1, N, 3)[:, :, :3].sum() + res.plan).sum(), batch)
        for k in range(3):
            single = cost[k].clone().requires_grad_()
            one = ota.solve(single, C.unbalanced(0.5), epsilon=0.05, grad=grad, tol=1e-12, max_iter=20_000, check_every=1)
            (gs,) = torch.autograd.grad((one.plan * LIN[:, :4].reshape(1, N, 3)[:, :, :3].sum() + one.plan).sum(), single)
            torch.testing.assert_close(gb[k], gs, atol=1e-10, rtol=0)


def test_gradients_reach_point_coordinates_through_costs():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    for cost_fn in (ota.costs.sqeuclidean, ota.costs.cosine, ota.costs.neg_dot):
        for grad in ("implicit", "envelope"):
            assert gradcheck(lambda x, y: ota.solve(cost_fn(x, y), C.unbalanced(0.7), epsilon=0.5, grad=grad,
                                                    tol=1e-13, max_iter=10_000).value, (x, y), atol=1e-6, rtol=1e-4)


def test_costs_values_and_no_cubic_intermediate():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 30, 7, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(2, 20, 7, dtype=torch.float64, generator=g, requires_grad=True)
    torch.testing.assert_close(ota.costs.sqeuclidean(x, y), torch.cdist(x, y) ** 2, atol=1e-10, rtol=0)
    cos = torch.nn.functional.cosine_similarity(x[:, :, None], y[:, None], dim=-1)
    torch.testing.assert_close(ota.costs.cosine(x, y), 1 - cos, atol=1e-12, rtol=0)
    torch.testing.assert_close(ota.costs.neg_dot(x[0], y[0]), -(x[0] @ y[0].T))
    assert ota.costs.sqeuclidean(x[0], y).shape == (2, 30, 20)  # 2-D input broadcast over the batch
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        for fn in (ota.costs.sqeuclidean, ota.costs.cosine, ota.costs.neg_dot):
            fn(x, y).sum().backward()
    assert max(sizes) <= 2 * 30 * 20  # nothing of size n * m * d is kept for backward
    with pytest.raises(ValueError, match="dimension"):
        ota.costs.cosine(x, y[..., :3])
    with pytest.raises(ValueError, match="batch"):
        ota.costs.neg_dot(x, torch.randn(3, 20, 7, dtype=torch.float64))
