"""The fused kernel-domain sweeps (``otalign/solvers/fused.py``) and the small-batch adaptive rule
compute what the generic path computes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import otalign as ota
from otalign import constraints as C
from otalign.solvers import engine
from otalign.solvers.fused import FusedPair

F64 = torch.float64


def problem(B=None, n=12, m=9, seed=0, pad=False):
    g = torch.Generator().manual_seed(seed)
    shape = () if B is None else (B,)
    x = torch.randn(*shape, n, 2, generator=g, dtype=F64)
    y = torch.randn(*shape, m, 2, generator=g, dtype=F64)
    a = torch.rand(*shape, n, generator=g, dtype=F64) + 0.2
    b = torch.rand(*shape, m, generator=g, dtype=F64) + 0.2
    if pad:  # zero weights: rows and columns forced to zero (padding)
        a[..., -2:] = 0
        b[..., -1:] = 0
    return torch.cdist(x, y) ** 2, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


CASES = {
    "balanced": lambda a, b: C.balanced(a, b),
    "unbalanced": lambda a, b: C.unbalanced(0.7, a, b),
    "semi-relaxed": lambda a, b: C.unbalanced((math.inf, 0.3), a, b),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("B", [None, 3])
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("overrelax", [None, 1.5])
@pytest.mark.parametrize("translation", [False, True])
def test_fused_sweeps_equal_the_generic_kernel_sweeps(monkeypatch, case, B, pad, overrelax, translation):
    M, a, b = problem(B=B, pad=pad)
    kw = dict(epsilon=0.2, tol=0.0, max_iter=37, check_every=5, overrelax=overrelax, translation=translation,
              warn=False)
    built = []
    original = FusedPair.build

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        built.append(out)
        return out

    monkeypatch.setattr(FusedPair, "build", spy)
    fused = ota.solve(M, CASES[case](a, b), **kw)
    assert built and built[-1] is not None  # the fused path ran
    monkeypatch.setattr(FusedPair, "build", lambda *args, **kwargs: None)
    generic = ota.solve(M, CASES[case](a, b), **kw)
    torch.testing.assert_close(fused.plan, generic.plan, atol=1e-13, rtol=1e-11)
    torch.testing.assert_close(fused.error, generic.error, atol=1e-13, rtol=1e-9)
    torch.testing.assert_close(fused.gap, generic.gap, atol=1e-13, rtol=1e-9)
    torch.testing.assert_close(fused.f, generic.f, atol=1e-12, rtol=1e-10)  # padding keeps f = 0
    torch.testing.assert_close(fused.g, generic.g, atol=1e-12, rtol=1e-10)


def test_fused_stopping_and_freezing_in_a_batch():
    """Members stop at different checks; the frozen ones keep their plan (fused, masked)."""
    M, a, b = problem(B=4, n=20, m=20, seed=3)
    M[0] = M[0] * 0.1  # converges much earlier
    res = ota.solve(M, C.balanced(a, b), epsilon=0.05, tol=1e-11, check_every=5)
    assert bool(res.converged.all()) and len(set(res.n_iters.tolist())) > 1
    assert float(res.error.max()) <= 1e-11
    ref = ota.solve(M, C.balanced(a, b), epsilon=0.05, tol=1e-11, check_every=5, method="log")
    torch.testing.assert_close(res.plan, ref.plan, atol=1e-10, rtol=0)


def test_fused_path_is_not_used_where_it_does_not_apply():
    M, a, b = problem()
    plan_checks = []
    for cons, translation in ((C.unbalanced(0.7, a, b, ) + [C.TotalMass(mass=0.5)], True),
                              ([C.Marginal(axis=0, weights=a), C.Marginal(axis=1, weights=b, relation="<=")], False)):
        prep = ota.solvers.setup.prepare(M, cons, epsilon=0.2, entropy="kl")
        from otalign.solvers.plan import make_log_plan
        duals = [p.init_dual() for p in prep.projectors]
        plan = make_log_plan(prep.geometry, 0.2, prep.log_ra, prep.log_rb, prep.terms,
                             [p.footprint for p in prep.projectors], duals, inplace=True)
        ids = [k for k, p in enumerate(prep.projectors) if p.footprint is not None]
        plan_checks.append(FusedPair.build(plan, prep.projectors, ids, translation))
    assert plan_checks == [None, None]


finite_or_nan = st.one_of(st.floats(0.0, 2.0), st.just(math.nan))


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from([1.0, 1.3, 1.8]), st.integers(0, 3), finite_or_nan, st.booleans(),
                  finite_or_nan, finite_or_nan),
        min_size=1, max_size=6),
    check_every=st.sampled_from([1, 5, 10]),
)
def test_small_batch_adaptive_rule_equals_the_tensor_rule(rows, check_every):
    cols = list(zip(*rows))
    omega, failures, ratio = (torch.tensor(c, dtype=F64) for c in (cols[0], [float(f) for f in cols[1]], cols[2]))
    just_set = torch.tensor(cols[3])
    err, last = torch.tensor(cols[4], dtype=F64), torch.tensor(cols[5], dtype=F64)
    tensor = engine._adapt_omega_tensor(omega, failures, ratio, just_set, err, last, check_every, 1.8)
    floats = [engine._adapt_one(*row[:4], now, before, check_every, 1.8)
              for row, now, before in zip(zip(*(t.tolist() for t in (omega, failures, ratio, just_set))),
                                   err.tolist(), last.tolist())]
    for k, t in enumerate(tensor):
        small = torch.tensor([row[k] for row in floats], dtype=t.dtype)
        torch.testing.assert_close(small, t, equal_nan=True, atol=1e-15, rtol=1e-13)
    # the batch state: Python floats for small batches, tensors beyond; the same omegas
    state = engine._Adaptive(len(rows), err, check_every, 1.8)
    state.state = [tuple(row) for row in zip(*(t.tolist() for t in (omega, failures, ratio, just_set)))]
    state.update(err, last)
    expect = tensor[0]
    got = torch.ones_like(expect) if state.omega is None else state.omega
    torch.testing.assert_close(got, expect, atol=1e-15, rtol=1e-13)


def block_problem(B=None, n=14, m=11, seed=1, ungrouped=False, zero_block=False):
    M, a, b = problem(B=B, n=n, m=m, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    rows = torch.randint(0, 2, (n,), generator=g)
    cols = torch.randint(0, 3, (m,), generator=g)
    rows[:2], cols[:3] = torch.tensor([0, 1]), torch.tensor([0, 1, 2])
    if ungrouped:  # some rows and columns belong to no group (label -1)
        rows[-2:] = -1
        cols[-1] = -1
    shape = () if B is None else (B,)
    mass = torch.rand(*shape, 2, 3, generator=g, dtype=F64) + 0.2
    if zero_block:
        mass[..., 0, 2] = 0.0
    # feasible with the marginals: block sums fitted to the grouped weights (iterative scaling)
    onehot_r = torch.nn.functional.one_hot(rows.remainder(3), 3)[:, :2].to(F64)
    onehot_c = torch.nn.functional.one_hot(cols.remainder(4), 4)[:, :3].to(F64)
    A, Bm = a @ onehot_r, b @ onehot_c  # (..., 2), (..., 3) grouped weights
    total = torch.minimum(A.sum(-1), Bm.sum(-1))[..., None]
    A, Bm = A * total / A.sum(-1, keepdim=True), Bm * total / Bm.sum(-1, keepdim=True)
    for _ in range(500):
        mass = mass * (A / mass.sum(-1))[..., :, None]
        mass = mass * (Bm / mass.sum(-2))[..., None, :]
    return M, a, b, C.BlockMass(row_groups=rows, col_groups=cols, mass=mass)


@pytest.mark.parametrize("B", [None, 3])
@pytest.mark.parametrize("variant", ["plain", "ungrouped", "zero_block", "unbalanced"])
@pytest.mark.parametrize("overrelax", [None, 1.4])
def test_fused_block_sweeps_equal_the_generic_kernel_sweeps(monkeypatch, B, variant, overrelax):
    from otalign.solvers import fused as fused_module

    M, a, b, block = block_problem(B=B, ungrouped=variant == "ungrouped", zero_block=variant == "zero_block")
    base = C.unbalanced(2.0, a, b) if variant == "unbalanced" else C.balanced(a, b)
    cons = base + [block]
    kw = dict(epsilon=0.3, tol=0.0, max_iter=33, check_every=5, overrelax=overrelax, translation=False, warn=False)
    built = []
    original = fused_module.FusedBlocks.build

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        built.append(out)
        return out

    monkeypatch.setattr(fused_module.FusedBlocks, "build", spy)
    fused = ota.solve(M, cons, **kw)
    assert built and built[-1] is not None  # the fused block path ran
    monkeypatch.setattr(fused_module.FusedBlocks, "build", lambda *args, **kwargs: None)
    generic = ota.solve(M, cons, **kw)
    torch.testing.assert_close(fused.plan, generic.plan, atol=1e-13, rtol=1e-10)
    torch.testing.assert_close(fused.error, generic.error, atol=1e-13, rtol=1e-8)
    k = 2  # the block dual
    torch.testing.assert_close(fused._state.duals[k], generic._state.duals[k], atol=1e-11, rtol=1e-9)


def test_fused_block_solve_meets_the_block_masses():
    M, a, b, block = block_problem(B=2, n=40, m=30, seed=5)
    res = ota.solve(M, C.balanced(a, b) + [block], epsilon=0.05, tol=1e-11)
    assert bool(res.converged.all())
    ref = ota.solve(M, C.balanced(a, b) + [block], epsilon=0.05, tol=1e-11, method="log")
    torch.testing.assert_close(res.plan, ref.plan, atol=1e-10, rtol=0)
