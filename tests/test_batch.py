"""Batching: batch == loop, per-problem stopping, ragged batches through zero-weight padding."""

import numpy as np
import pytest
import torch

import otalign as ota
from conftest import random_problem, t64
from otalign import constraints as C


def _batch(seed, B=5, n=7, m=6):
    rng = np.random.default_rng(seed)
    probs = [random_problem(rng, n, m) for _ in range(B)]
    M = t64(np.stack([p[0] for p in probs]))
    a = t64(np.stack([p[1] for p in probs]))
    b = t64(np.stack([p[2] for p in probs]))
    return M, a, b


@pytest.mark.parametrize(
    "make",
    [
        lambda a, b: C.balanced(a, b),
        lambda a, b: C.unbalanced(0.4, a, b),
        lambda a, b: C.partial(0.5, a, b),
        lambda a, b: C.balanced(a, b) + [C.Forbid(mask="diagonal")],
    ],
    ids=["balanced", "unbalanced", "partial", "forbid"],
)
def test_batch_equals_loop_of_single_solves(make):
    M, a, b = _batch(0)
    M[2] *= 10.0  # a harder member: different iteration counts
    kw = dict(epsilon=0.1, tol=1e-9, max_iter=20_000, check_every=2)
    res = ota.solve(M, make(a, b), **kw)
    assert res.plan.shape == M.shape
    assert len(set(res.n_iters.tolist())) > 1  # members stopped at their own iteration
    for k in range(M.shape[0]):
        single = ota.solve(M[k], make(a[k], b[k]), **kw)
        assert int(single.n_iters) == int(res.n_iters[k])
        torch.testing.assert_close(res.plan[k], single.plan, atol=1e-13, rtol=0)
        torch.testing.assert_close(res.value[k], single.value, atol=1e-13, rtol=0)
        torch.testing.assert_close(res.f[k], single.f, atol=1e-12, rtol=0)
        assert bool(res.converged[k]) == bool(single.converged)


def test_shared_and_per_problem_weights_and_broadcast_cost():
    M, a, b = _batch(1, B=3)
    shared = ota.solve(M, C.balanced(a[0], b[0]), epsilon=0.1, tol=1e-12, max_iter=10_000)
    explicit = ota.solve(M, C.balanced(a[0].expand(3, -1), b[0].expand(3, -1)), epsilon=0.1, tol=1e-12, max_iter=10_000)
    torch.testing.assert_close(shared.plan, explicit.plan, atol=1e-14, rtol=0)
    # one cost, several histograms: the 2-D cost is broadcast over the weights' batch
    many = ota.solve(M[0], C.balanced(a, b), epsilon=0.1, tol=1e-12, max_iter=10_000)
    assert many.plan.shape == (3,) + M.shape[1:]
    for k in range(3):
        one = ota.solve(M[0], C.balanced(a[k], b[k]), epsilon=0.1, tol=1e-12, max_iter=10_000)
        torch.testing.assert_close(many.plan[k], one.plan, atol=1e-13, rtol=0)


@pytest.mark.parametrize("entropy", ["kl", "shannon"])
@pytest.mark.parametrize("cons", ["balanced", "unbalanced", "partial"])
def test_zero_weight_padding_equals_unpadded(entropy, cons):
    rng = np.random.default_rng(5)
    sizes = [(4, 6), (7, 3), (5, 5)]
    N, Mx = 8, 7
    Mp = torch.zeros(len(sizes), N, Mx, dtype=torch.float64)
    ap = torch.zeros(len(sizes), N, dtype=torch.float64)
    bp = torch.zeros(len(sizes), Mx, dtype=torch.float64)
    singles = []
    for k, (n, m) in enumerate(sizes):
        M, a, b = random_problem(rng, n, m)
        Mp[k] = torch.as_tensor(rng.uniform(0, 5, size=(N, Mx)))  # junk in the padding
        Mp[k, :n, :m] = t64(M)
        ap[k, :n], bp[k, :m] = t64(a), t64(b)
        singles.append((t64(M), t64(a), t64(b)))

    def make(a, b):
        return {"balanced": C.balanced(a, b), "unbalanced": C.unbalanced(0.5, a, b), "partial": C.partial(0.6, a, b)}[cons]

    kw = dict(epsilon=0.1, tol=1e-12, max_iter=50_000, entropy=entropy)
    res = ota.solve(Mp, make(ap, bp), **kw)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.value).all()
    for k, (n, m) in enumerate(sizes):
        M, a, b = singles[k]
        one = ota.solve(M, make(a, b), **kw)
        torch.testing.assert_close(res.plan[k, :n, :m], one.plan, atol=1e-12, rtol=0)
        torch.testing.assert_close(res.value[k], one.value, atol=1e-12, rtol=0)
        assert torch.all(res.plan[k, n:] == 0) and torch.all(res.plan[k, :, m:] == 0)
        assert torch.all(res.f[k, n:] == 0) and torch.all(res.g[k, m:] == 0)


def test_converged_members_stop_changing():
    M, a, b = _batch(2, B=4)
    M[0] *= 0.1  # easy: converges early
    res = ota.solve(M, C.balanced(a, b), epsilon=0.05, tol=1e-10, max_iter=5000, check_every=5)
    k = int(torch.argmin(res.n_iters))
    assert int(res.n_iters[k]) < int(res.n_iters.max())
    # the same batch (the same batched products, bit for bit) stopped at member k's sweep count
    capped = ota.solve(M, C.balanced(a, b), epsilon=0.05, tol=1e-300, max_iter=int(res.n_iters[k]), check_every=5,
                       warn=False)
    torch.testing.assert_close(res.plan[k], capped.plan[k], atol=0, rtol=0)
    hist = res.errors[k]
    assert torch.isnan(hist[len(res.check_iters) - 1]) or int(res.n_iters[k]) == res.check_iters[-1]
