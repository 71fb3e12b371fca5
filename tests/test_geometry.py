"""The geometry layer: a point-cloud solve equals the dense solve of the same cost, for every
backend and constraint family, with the same gradients; results without an ``n x m`` array;
clear errors."""

import math

import pytest
import numpy as np
import torch
from torch.autograd import gradcheck

import otalign as ota
from otalign import constraints as C
from otalign import geometry as G
from otalign.geometry import streaming

F64 = torch.float64
GEN = torch.Generator().manual_seed(0)
X = torch.randn(17, 3, dtype=F64, generator=GEN)
Y = torch.randn(13, 3, dtype=F64, generator=GEN) + 0.5
XB = torch.randn(3, 17, 3, dtype=F64, generator=GEN)
YB = torch.randn(3, 13, 3, dtype=F64, generator=GEN) + 0.5
ROWG = torch.arange(17) % 2
COLG = torch.arange(13) % 3

FAMILIES = {
    "balanced": lambda: C.balanced(),
    "unbalanced KL": lambda: C.unbalanced(0.5),
    "unbalanced TV": lambda: [C.Marginal(axis=0, penalty=C.TV(rho=0.4)), C.Marginal(axis=1, penalty=C.TV(rho=0.4))],
    "semi-relaxed": lambda: C.unbalanced((math.inf, 0.3)),
    "partial": lambda: C.partial(0.7),
    "block masses": lambda: C.unbalanced(1.0) + [C.BlockMass(row_groups=ROWG, col_groups=COLG, mass=torch.full((2, 3), 0.12))],
    "forbid by groups": lambda: C.balanced() + [C.Forbid(row_groups=torch.arange(17) % 5, col_groups=torch.arange(13) % 5)],
    "diagonal": lambda: C.balanced() + [C.Forbid(mask="diagonal")],
}
BACKENDS = ["tensorized", "online"]


def cloud(backend, x=X, y=Y, **kw):
    # a tiny tile budget: the online reductions run over many tiles, edges included
    tiles = dict(tile_bytes=3 * 5 * 7 * 8) if backend == "online" else {}
    return G.PointCloud(x, y, backend=backend, **tiles, **kw)


def keops_or_skip():
    pytest.importorskip("pykeops")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("batched", [False, True])
def test_point_cloud_solve_equals_the_dense_solve(name, backend, batched):
    x, y = (XB, YB) if batched else (X, Y)
    kw = dict(epsilon=0.4, tol=1e-12, max_iter=20_000)
    dense = ota.solve(ota.costs.sqeuclidean(x, y), FAMILIES[name](), **kw)
    res = ota.solve(cloud(backend, x, y), FAMILIES[name](), **kw)
    assert bool(dense.converged.all()) and bool(res.converged.all())
    assert res.plan.shape == dense.plan.shape
    for out, ref in ((res.plan, dense.plan), (res.f, dense.f), (res.g, dense.g), (res.value, dense.value),
                     (res.transport_cost, dense.transport_cost), (res.marginals[0], dense.marginals[0])):
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_keops_backend_equals_the_dense_solve(name):
    keops_or_skip()
    kw = dict(epsilon=0.4, tol=1e-12, max_iter=20_000)
    dense = ota.solve(ota.costs.sqeuclidean(X, Y), FAMILIES[name](), **kw)
    res = ota.solve(G.PointCloud(X, Y, backend="keops"), FAMILIES[name](), **kw)
    for out, ref in ((res.plan, dense.plan), (res.f, dense.f), (res.value, dense.value)):
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cost", ["cosine", "neg_dot"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_named_costs_and_a_callable_cost_match_their_dense_costs(cost, backend):
    fn = {"cosine": ota.costs.cosine, "neg_dot": ota.costs.neg_dot}[cost]
    kw = dict(epsilon=0.2, tol=1e-12, max_iter=10_000)
    dense = ota.solve(fn(X, Y), C.unbalanced(0.5), **kw)
    named = ota.solve(cloud(backend, cost=cost), C.unbalanced(0.5), **kw)
    called = ota.solve(cloud(backend, cost=lambda x, y: fn(x, y)), C.unbalanced(0.5), **kw)
    for res in (named, called):
        torch.testing.assert_close(res.plan, dense.plan, atol=1e-10, rtol=0)


def test_shared_cloud_with_batched_weights_and_numpy_points():
    w = torch.rand(4, 17, dtype=F64, generator=GEN) + 0.1
    w = w / w.sum(-1, keepdim=True)
    kw = dict(epsilon=0.3, tol=1e-12)
    dense = ota.solve(ota.costs.sqeuclidean(X, Y), C.balanced(w), **kw)
    lazy = ota.solve(cloud("online", X.numpy(), Y.numpy()), C.balanced(w), **kw)
    assert isinstance(lazy.plan, np.ndarray) and lazy.plan.shape == (4, 17, 13)  # NumPy in, NumPy out
    torch.testing.assert_close(torch.from_numpy(lazy.plan), dense.plan, atol=1e-10, rtol=0)


# -- gradients --------------------------------------------------------------------------------------

LIN = torch.randn(17, 13, dtype=F64, generator=GEN)


def _objective(backend, grad, family):
    def run(x, y, a, b):
        cons = C.balanced(torch.softmax(a, 0), torch.softmax(b, 0)) if family == "balanced" else \
            C.unbalanced(0.6, torch.exp(a) / 17, torch.exp(b) / 13)
        geom = ota.costs.sqeuclidean(x, y) if backend == "dense" else cloud(backend, x, y)
        kw = dict(tol=1e-300, max_iter=25) if grad == "unroll" else dict(tol=1e-12, max_iter=10_000)
        res = ota.solve(geom, cons, epsilon=0.5, grad=grad, warn=False, **kw)
        return res.value if grad == "envelope" else res.value + (res.plan * LIN).sum()
    return run


def _inputs():
    a = torch.randn(17, dtype=F64, generator=torch.Generator().manual_seed(5)) * 0.3
    b = torch.randn(13, dtype=F64, generator=torch.Generator().manual_seed(6)) * 0.3
    return [t.clone().requires_grad_() for t in (X[:, :2], Y[:, :2], a, b)]


@pytest.mark.parametrize("family", ["balanced", "unbalanced"])
@pytest.mark.parametrize("grad", ["unroll", "implicit", "envelope"])
def test_gradients_agree_across_backends(grad, family):
    grads = {}
    for backend in ["dense"] + BACKENDS:
        inputs = _inputs()
        out = _objective(backend, grad, family)(*inputs)
        grads[backend] = torch.autograd.grad(out, inputs)
    for backend in BACKENDS:
        for g, ref in zip(grads[backend], grads["dense"]):
            torch.testing.assert_close(g, ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("grad", ["implicit", "envelope"])
def test_online_gradients_match_finite_differences(grad):
    small = [t[:6].detach().clone().requires_grad_() for t in _inputs()]

    def run(x, y, a, b):
        cons = C.unbalanced(0.6, torch.exp(a) / 6, torch.exp(b) / 6)
        res = ota.solve(G.PointCloud(x, y, backend="online", tile_bytes=64), cons, epsilon=0.5, grad=grad,
                        tol=1e-12, max_iter=10_000)
        return res.value if grad == "envelope" else res.value + (res.plan * LIN[:6, :6]).sum()

    assert gradcheck(run, small, eps=1e-6, atol=1e-6, rtol=1e-4)


# -- results without an n x m array ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_is_the_plan_times_a_vector(backend):
    res = ota.solve(cloud(backend), C.unbalanced(0.5), epsilon=0.3, tol=1e-10)
    P = res.plan
    v, u = torch.randn(13, 2, dtype=F64), torch.randn(17, dtype=F64)
    torch.testing.assert_close(res.apply(v), P @ v, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.apply(v[:, 0]), P @ v[:, 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(res.apply(u, transpose=True), P.T @ u, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="v has shape"):
        res.apply(torch.randn(17))


def test_apply_on_a_batch():
    res = ota.solve(cloud("online", XB, YB), epsilon=0.3, tol=1e-10)
    v = torch.randn(3, 13, 4, dtype=F64)
    torch.testing.assert_close(res.apply(v), res.plan @ v, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.apply(v[0]), res.plan @ v[0], atol=1e-12, rtol=0)


def test_plan_beyond_the_memory_budget_is_refused(monkeypatch):
    from otalign.solvers import result

    res = ota.solve(cloud("online"), epsilon=0.3)
    monkeypatch.setattr(result, "PLAN_FRACTION", 1e-15)
    with pytest.raises(ValueError, match=r"res\.plan would materialise a \(1, 17, 13\) array"):
        res.plan
    assert torch.isfinite(res.value) and torch.isfinite(res.f).all()  # these need no n x m array


def test_online_tiles_respect_the_budget():
    geom = G.PointCloud(torch.randn(5000, 3), torch.randn(4000, 3), backend="online", tile_bytes=2**20)
    tn, tm = streaming.tile_sizes(geom, 2)
    assert 2 * tn * tm * 4 <= 2**20 and tn >= 1 and tm >= 1


def test_auto_backend_is_tensorized_within_the_budget(monkeypatch):
    assert G.PointCloud(X, Y).backend == "tensorized"
    monkeypatch.setattr(G.pointcloud, "memory_budget", lambda device: 100)
    assert G.PointCloud(X, Y).backend == "online"


# -- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, match", [
    (lambda: G.PointCloud(X, Y[:, :2]), "x has dimension d=3 but y has d=2"),
    (lambda: G.PointCloud(X, Y, cost="manhattan"), "cost='manhattan'"),
    (lambda: G.PointCloud(X, Y, backend="gpu"), "backend='gpu'"),
    (lambda: G.PointCloud(X, Y, cost=lambda x, y: torch.zeros(2, 2)), "cost callable returned"),
    (lambda: G.PointCloud(X, Y, cost=lambda x, y: torch.full((1, x.shape[1], y.shape[1]), math.nan)), "non-finite"),
    (lambda: G.PointCloud(X[None].expand(2, -1, -1), Y[None].expand(3, -1, -1)), "batch"),
    (lambda: G.PointCloud(torch.zeros(0, 3), Y), "x has shape"),
    (lambda: G.PointCloud(torch.full((3, 3), math.inf), Y), "x has non-finite"),
    (lambda: G.PointCloud(torch.arange(6).reshape(3, 2), Y[:, :2]), "x has dtype"),
])
def test_bad_point_clouds_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_pair_mask_needs_a_dense_geometry():
    mask = torch.zeros(17, 13, dtype=torch.bool)
    with pytest.raises(ValueError, match="Forbid.mask is a pair mask"):
        ota.solve(cloud("online"), C.balanced() + [C.Forbid(mask=mask)], epsilon=0.3)
    ota.solve(cloud("tensorized"), C.balanced() + [C.Forbid(mask=mask)], epsilon=0.3)  # fine there


def test_forbid_by_groups_round_trips_and_equals_the_mask():
    rows, cols = torch.arange(17) % 4, torch.arange(13) % 4
    cons = C.balanced() + [C.Forbid(row_groups=rows, col_groups=cols)]
    assert C.parse(C.dumps(cons)) == cons
    mask = rows[:, None] == cols[None, :]
    cost = ota.costs.sqeuclidean(X, Y)
    by_mask = ota.solve(cost, C.balanced() + [C.Forbid(mask=mask)], epsilon=0.3, tol=1e-12)
    by_groups = ota.solve(cost, cons, epsilon=0.3, tol=1e-12)
    torch.testing.assert_close(by_groups.plan, by_mask.plan, atol=1e-14, rtol=0)
    assert torch.all(by_groups.plan[mask] == 0)
    with pytest.raises(ValueError, match="mask=... or both row_groups"):
        C.Forbid(row_groups=rows)


def test_keops_refuses_a_callable_cost():
    keops_or_skip()
    with pytest.raises(ValueError, match="backend='keops' needs a named cost"):
        G.PointCloud(X, Y, cost=lambda x, y: ota.costs.sqeuclidean(x, y), backend="keops")


def test_results_refuse_points_modified_in_place():
    x = X.clone()
    res = ota.solve(G.PointCloud(x, Y, backend="online"), epsilon=0.3)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="x was modified in place"):
        res.value


def test_an_infeasible_forbid_by_groups_is_rejected_on_a_lazy_geometry(monkeypatch):
    from otalign.solvers import feasibility

    monkeypatch.setattr(feasibility, "DENSE_CHECK", 0)  # the label-counting path of large problems
    same = torch.zeros(13, dtype=torch.long)
    with pytest.raises(ValueError, match="every entry of that row is forbidden"):
        ota.solve(cloud("online"), C.balanced() + [C.Forbid(row_groups=torch.zeros(17, dtype=torch.long),
                                                              col_groups=same)], epsilon=0.3)
