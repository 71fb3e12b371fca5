"""Issue 12's defaults: envelope gradient of ``value`` in implicit mode, the Krylov (GMRES) adjoint
for plan-dependent outputs and its report, tolerance by dtype, adaptive over-relaxation on."""

import warnings

import pytest
import torch

import otalign as ota
from otalign import constraints as C
from otalign.solvers.api import DEFAULT_TOL
from otalign.solvers.gradients import gmres

F64 = torch.float64


def small_problem(n=10, m=10, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 2, generator=g, dtype=dtype), torch.randn(m, 2, generator=g, dtype=dtype)
    a = torch.rand(n, generator=g, dtype=dtype) + 0.5
    b = torch.rand(m, generator=g, dtype=dtype) + 0.5
    return torch.cdist(x, y) ** 2, a / a.sum(), b / b.sum()


def centred(t):
    return t - t.mean()


def test_default_gradient_of_value_is_the_potential_and_the_plan():
    M, a, b = small_problem()
    M.requires_grad_(True)
    a.requires_grad_(True)
    b.requires_grad_(True)
    res = ota.solve(M, C.balanced(a, b), epsilon=1.0)  # default settings
    res.value.backward()
    assert float((centred(a.grad) - centred(res.f.detach())).abs().max()) <= 1e-10
    assert float((centred(b.grad) - centred(res.g.detach())).abs().max()) <= 1e-10
    assert float((M.grad - res.plan.detach()).abs().max()) <= 1e-10
    assert res.adjoint.n_iters is None  # a value-only backward solves no adjoint system


@pytest.mark.parametrize("family", ["balanced", "unbalanced", "partial"])
def test_plan_dependent_outputs_implicit_equal_unrolled_at_convergence(family):
    M, a, b = small_problem(8, 7, seed=1)
    W = torch.randn(8, 7, dtype=F64, generator=torch.Generator().manual_seed(3))
    make = {"balanced": lambda a, b: C.balanced(a, b), "unbalanced": lambda a, b: C.unbalanced(0.7, a, b),
            "partial": lambda a, b: C.partial(0.6, a, b)}[family]
    grads = {}
    for mode in ("implicit", "unroll"):
        Mi, ai = M.clone().requires_grad_(True), a.clone().requires_grad_(True)
        res = ota.solve(Mi, make(ai, b), epsilon=0.5, grad=mode, tol=1e-13, max_iter=20_000)
        (res.plan * W).sum().backward()
        grads[mode] = (Mi.grad, ai.grad)
        if mode == "implicit":
            assert bool(res.adjoint.converged.all()) and res.adjoint.method == "gmres"
            assert res.adjoint.n_iters < 200
    for gi, gu in zip(grads["implicit"], grads["unroll"]):
        if family == "balanced":
            gi, gu = gi - gi.mean(), gu - gu.mean()  # the weights' gradient is defined up to the gauge
        assert float((gi - gu).abs().max()) <= 1e-8


def test_adjoint_non_convergence_is_reported_and_warned():
    M, a, b = small_problem(12, 12, seed=4)
    M = M.requires_grad_(True)
    res = ota.solve(M, C.balanced(a, b), epsilon=0.02, adjoint_max_iter=2, tol=1e-12, max_iter=50_000)
    with pytest.warns(ota.NonConvergenceWarning, match="adjoint"):
        (res.plan * torch.arange(144, dtype=F64).reshape(12, 12)).sum().backward()
    assert not bool(res.adjoint.converged.all()) and res.adjoint.n_iters <= 2 + 2
    assert float(res.adjoint.residual.max()) > res.adjoint.tol


def test_gmres_solves_batched_nonsymmetric_systems():
    g = torch.Generator().manual_seed(0)
    B, k = 4, 40
    J = 0.9 * torch.randn(B, k, k, generator=g, dtype=F64) / k ** 0.5  # spectral radius ~0.9
    A = torch.eye(k, dtype=F64) - J
    rhs = torch.randn(B, k, generator=g, dtype=F64)
    x, rel, used = gmres(lambda v: torch.einsum("bij,bj->bi", A, v), rhs, torch.zeros_like(rhs), tol=1e-12,
                         max_iter=500)
    exact = torch.linalg.solve(A, rhs)
    assert float(rel.max()) <= 1e-12 and used <= 500
    assert torch.allclose(x, exact, atol=1e-9, rtol=0)


def test_gmres_on_a_consistent_singular_system():
    """The balanced gauge makes I - J^T singular; a right-hand side orthogonal to its null space
    (a gauge-invariant output) is solved to the tolerance."""
    k = 20
    v = torch.ones(k, dtype=F64) / k ** 0.5
    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=F64))[0]
    A = Q @ torch.diag(torch.linspace(0.05, 1.5, k, dtype=F64)) @ Q.T
    P = torch.eye(k, dtype=F64) - torch.outer(v, v)
    A = P @ A @ P  # symmetric, null space spanned by v
    rhs = P @ torch.randn(k, generator=g, dtype=F64)
    x, rel, _ = gmres(lambda u: u @ A.T, rhs[None], torch.zeros(1, k, dtype=F64), tol=1e-11, max_iter=200)
    assert float(rel) <= 1e-11
    assert torch.allclose(A @ x[0], rhs, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_default_tolerance_depends_on_the_dtype(dtype):
    M, a, b = small_problem(dtype=dtype)
    res = ota.solve(M, C.balanced(a, b), epsilon=0.1)
    assert res.tol == DEFAULT_TOL[dtype] and bool(res.converged) and float(res.error) <= res.tol
    assert DEFAULT_TOL[torch.float32] == 1e-5 and DEFAULT_TOL[F64] == 1e-10


def test_adaptive_overrelaxation_default_gives_the_plain_solution():
    M, a, b = small_problem(30, 25, seed=5)
    fast = ota.solve(M, C.balanced(a, b), epsilon=0.01, tol=1e-11, max_iter=100_000)
    plain = ota.solve(M, C.balanced(a, b), epsilon=0.01, tol=1e-11, max_iter=100_000, overrelax=None)
    assert bool(fast.converged) and bool(plain.converged)
    assert float((fast.plan - plain.plan).abs().sum()) <= 1e-9
    assert int(fast.n_iters) <= int(plain.n_iters)


def test_fixed_sweeps_stay_plain():
    """``overrelax=None`` runs exactly Sinkhorn's sweeps (what the contrastive losses rely on)."""
    M, a, b = small_problem(6, 5, seed=6)
    res = ota.solve(M, C.balanced(a, b), epsilon=0.1, tol=0, max_iter=3, overrelax=None, center=False,
                    translation=False)
    f = torch.zeros(6, dtype=F64)
    g = torch.zeros(5, dtype=F64)
    for _ in range(3):
        f = -0.1 * torch.logsumexp((g[None] - M) / 0.1 + b.log()[None], 1)
        g = -0.1 * torch.logsumexp((f[:, None] - M) / 0.1 + a.log()[:, None], 0)
    assert torch.allclose(res.f, f, atol=1e-12, rtol=0) and torch.allclose(res.g, g, atol=1e-12, rtol=0)


def _feasible_mass(gx, gy, groups, n, m):
    """Block masses compatible with uniform weights: mostly the independent coupling of the group
    masses, tilted toward the diagonal, then scaled back onto the group marginals."""
    ra = torch.zeros(groups, dtype=F64).index_add_(0, gx, torch.full((n,), 1.0 / n, dtype=F64))
    rb = torch.zeros(groups, dtype=F64).index_add_(0, gy, torch.full((m,), 1.0 / m, dtype=F64))
    mass = torch.outer(ra, rb)
    mass = 0.7 * mass + 0.3 * torch.diag(torch.minimum(ra, rb)) * (mass.sum() / torch.minimum(ra, rb).sum())
    for _ in range(500):
        mass = mass * (rb / mass.sum(0))[None]
        mass = mass * (ra / mass.sum(1))[:, None]
    return mass


def _blocks(n, m, groups, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 2, generator=g, dtype=F64), torch.randn(m, 2, generator=g, dtype=F64) + 0.3
    cost = torch.cdist(x, y) ** 2
    gx = (x[:, 0] > x[:, 0].median()).long() if groups == 2 else torch.randint(0, groups, (n,), generator=g)
    gy = (y[:, 0] > y[:, 0].median()).long() if groups == 2 else torch.randint(0, groups, (m,), generator=g)
    return cost, gx, gy, _feasible_mass(gx, gy, groups, n, m)


@pytest.mark.parametrize("groups", [2, 3])
def test_block_masses_in_the_kernel_domain_equal_the_log_domain(groups):
    cost, gx, gy, mass = _blocks(40, 30, groups, seed=groups)
    cons = C.balanced() + [C.BlockMass(row_groups=gx, col_groups=gy, mass=mass)]
    fast = ota.solve(cost, cons, epsilon=0.05, tol=1e-11, max_iter=50_000)
    log = ota.solve(cost, cons, epsilon=0.05, tol=1e-11, max_iter=50_000, method="log")
    assert bool(fast.converged) and bool(log.converged)
    assert float((fast.plan - log.plan).abs().sum()) <= 1e-9
    blocks = torch.zeros(groups, groups, dtype=F64).index_put_((gx[:, None].expand(40, 30), gy[None].expand(40, 30)),
                                                               fast.plan, accumulate=True)
    assert torch.allclose(blocks, mass, atol=1e-10, rtol=0)


def test_block_masses_kernel_domain_with_ungrouped_rows_two_constraints_and_a_batch():
    cost, gx, gy, mass = _blocks(36, 28, 2, seed=7)
    gx2 = gx.clone()
    gx2[:3] = -1  # rows in no group of the second constraint: only capped there
    cap = torch.full((2, 2), 0.6, dtype=F64)
    batch = torch.stack([cost, cost.flip(0)])
    cons = C.balanced() + [C.BlockMass(row_groups=gx, col_groups=gy, mass=mass),
                           C.BlockMass(row_groups=gx2, col_groups=gy, mass=cap, relation="<=")]
    fast = ota.solve(batch, cons, epsilon=0.05, tol=1e-11, max_iter=50_000)
    log = ota.solve(batch, cons, epsilon=0.05, tol=1e-11, max_iter=50_000, method="log")
    assert bool(fast.converged.all()) and float((fast.plan - log.plan).abs().sum()) <= 1e-9
    # labels that differ across the batch take the matrix-product path
    labels = torch.stack([gx, gx.flip(0)])
    masses = torch.stack([mass, _feasible_mass(gx.flip(0), gy, 2, 36, 28)])
    cons = C.balanced() + [C.BlockMass(row_groups=labels, col_groups=gy, mass=masses)]
    fast = ota.solve(batch, cons, epsilon=0.05, tol=1e-11, max_iter=50_000)
    log = ota.solve(batch, cons, epsilon=0.05, tol=1e-11, max_iter=50_000, method="log")
    assert bool(fast.converged.all()) and float((fast.plan - log.plan).abs().sum()) <= 1e-9
