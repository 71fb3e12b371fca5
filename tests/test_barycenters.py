"""Fixed-support barycentres (``ota.barycenter``): POT parity, closed forms, an independent reference,
batches, dtypes, constraints, gradients against finite differences, bad input and invariants."""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

import otalign as ota
from otalign import constraints as C
from otalign.warnings import NonConvergenceWarning

TIGHT = dict(tol=1e-13, max_iter=100_000)


# ------------------------------------------------------------------------------------------------
# helpers and an independent reference
# ------------------------------------------------------------------------------------------------
def grid_cost(n, m=None):
    """Squared distances between ``n`` and ``m`` points of [0, 1]."""
    x = np.linspace(0, 1, n)
    y = np.linspace(0, 1, n if m is None else m)
    return (x[:, None] - y[None, :]) ** 2


def random_histograms(rng, K, n, power=1.0, zeros=0):
    A = rng.uniform(0.05, 1.0, (K, n)) ** power
    for k in range(K):
        A[k, rng.choice(n, zeros, replace=False)] = 0.0
    return A / A.sum(1, keepdims=True)


def random_weights(rng, K):
    w = rng.uniform(0.2, 1.0, K)
    return w / w.sum()


def reference_barycenter(A, M, eps, w, rho=(math.inf, math.inf), forbidden=None, max_iter=200_000):
    """Iterated Bregman projections written out with NumPy, one histogram at a time.

    Plans ``P_k = diag(u_k) exp(-M / eps) diag(v_k)``; with ``tau = rho / (rho + eps)`` (1 if hard):
    ``u_k = (a_k / K v_k)^tau_in``, ``z_k = K^T u_k``, ``q`` the weighted geometric mean of the
    ``z_k`` (hard barycentre side) or their power mean with exponent ``1 - tau_bar``, and
    ``v_k = (q / z_k)^tau_bar``.
    """
    K, n = A.shape
    m = M.shape[1]
    log_k = -M / eps
    if forbidden is not None:
        log_k = np.where(forbidden, -np.inf, log_k)
    tau = [1.0 if math.isinf(r) else r / (r + eps) for r in rho]
    with np.errstate(divide="ignore"):
        log_a = np.log(A)
        log_w = np.log(w)
    G = np.zeros((K, m))
    lq_old = None
    for _ in range(max_iter):
        LZ = np.empty((K, m))
        for k in range(K):
            lu = tau[0] * (log_a[k] - logsumexp(log_k + G[k][None, :], axis=1))
            LZ[k] = logsumexp(log_k + lu[:, None], axis=0)
        if tau[1] == 1.0:
            lq = (w[:, None] * LZ).sum(0)
        else:
            t = 1.0 - tau[1]
            lq = logsumexp(log_w[:, None] + t * LZ, axis=0) / t
        G = tau[1] * (lq[None, :] - LZ)
        if lq_old is not None and np.abs(np.exp(lq) - np.exp(lq_old)).max() < 1e-16:
            break
        lq_old = lq
    return np.exp(lq)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonConvergenceWarning)
        return fn(*args, **kwargs)


def t64(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# agreement with POT and with the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.1, 0.02])
@pytest.mark.parametrize("seed", range(2))
def test_balanced_matches_pot_sinkhorn_log(eps, seed):
    rng = np.random.default_rng(seed)
    A, M, w = random_histograms(rng, 3, 20), grid_cost(20), random_weights(rng, 3)
    ref = ot.bregman.barycenter(A.T, M, eps, weights=w, method="sinkhorn_log", numItermax=100_000, stopThr=1e-15)
    res = ota.barycenter(t64(A), t64(M), epsilon=eps, weights=t64(w), **TIGHT)
    assert bool(res.converged) and not bool(res.diverged)
    assert float(res.error) <= 1e-13
    np.testing.assert_allclose(res.barycenter.numpy(), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("rho", [0.3, 3.0])
def test_unbalanced_matches_pot_barycenter_unbalanced(rho):
    rng = np.random.default_rng(3)
    A, M, w = random_histograms(rng, 3, 20), grid_cost(20), random_weights(rng, 3)
    A = A * np.array([[1.0], [2.0], [0.5]])  # unequal masses
    ref = ot.unbalanced.barycenter_unbalanced(A.T, M, 0.05, rho, weights=w, numItermax=100_000, stopThr=1e-15)
    res = ota.barycenter(A, M, epsilon=0.05, weights=w, rho=rho, **TIGHT)
    assert isinstance(res.barycenter, np.ndarray)
    assert bool(res.converged)
    np.testing.assert_allclose(res.barycenter, ref, atol=1e-12, rtol=0)


def test_reference_matches_pot():
    """The test's own reference is POT's algorithm (checked here) extended to rho pairs and masks."""
    rng = np.random.default_rng(4)
    A, M, w = random_histograms(rng, 3, 12), grid_cost(12), random_weights(rng, 3)
    balanced = ot.bregman.barycenter(A.T, M, 0.05, weights=w, method="sinkhorn_log", numItermax=100_000, stopThr=1e-15)
    np.testing.assert_allclose(reference_barycenter(A, M, 0.05, w), balanced, atol=1e-13, rtol=0)
    soft = ot.unbalanced.barycenter_unbalanced(A.T, M, 0.05, 0.4, weights=w, numItermax=100_000, stopThr=1e-15)
    np.testing.assert_allclose(reference_barycenter(A, M, 0.05, w, rho=(0.4, 0.4)), soft, atol=1e-13, rtol=0)


@pytest.mark.parametrize("rho", [(0.5, math.inf), (math.inf, 0.5), (0.2, 2.0)])
def test_rho_pairs_match_reference(rho):
    rng = np.random.default_rng(5)
    A, M, w = random_histograms(rng, 3, 15), grid_cost(15), random_weights(rng, 3)
    A = A * np.array([[1.0], [1.5], [0.8]])
    res = ota.barycenter(A, M, epsilon=0.05, weights=w, rho=rho, **TIGHT)
    assert bool(res.converged)
    np.testing.assert_allclose(res.barycenter, reference_barycenter(A, M, 0.05, w, rho=rho), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rho", [(math.inf, 1e12), (1e12, 1e12)])
def test_huge_rho_is_the_balanced_barycentre(rho):
    """rho >> eps: the power mean's exponent eps / (rho + eps) is ~5e-14; a plain log-sum-exp / t
    would lose ~1e-16 / 5e-14 of relative accuracy to cancellation."""
    rng = np.random.default_rng(23)
    A, M = random_histograms(rng, 3, 15), grid_cost(15)
    balanced = ota.barycenter(A, M, epsilon=0.05, **TIGHT)
    relaxed = ota.barycenter(A, M, epsilon=0.05, rho=rho, **TIGHT)
    assert bool(relaxed.converged)
    np.testing.assert_allclose(relaxed.barycenter, balanced.barycenter, atol=1e-13, rtol=0)


def test_other_support_size_matches_reference():
    rng = np.random.default_rng(6)
    A, w = random_histograms(rng, 4, 18), random_weights(rng, 4)
    M = grid_cost(18, 11)  # the barycentre lives on 11 bins
    res = ota.barycenter(A, M, epsilon=0.02, weights=w, **TIGHT)
    assert res.barycenter.shape == (11,) and res.plans.shape == (4, 18, 11)
    np.testing.assert_allclose(res.barycenter, reference_barycenter(A, M, 0.02, w), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rho", [None, 0.5])
def test_methods_agree(rho, dtype, monkeypatch):
    """The stabilised kernel domain ("auto") and the log domain give the same result."""
    from otalign.barycenters import fixed_support

    entered = []

    class Counting(fixed_support.KernelReduce):
        def __init__(self, *args):
            entered.append(1)
            super().__init__(*args)

    monkeypatch.setattr(fixed_support, "KernelReduce", Counting)
    rng = np.random.default_rng(7)
    A = torch.tensor(random_histograms(rng, 3, 30, power=3, zeros=3), dtype=dtype)
    M = torch.tensor(grid_cost(30), dtype=dtype)
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    auto = ota.barycenter(A, M, epsilon=0.01, rho=rho, method="auto", tol=tol, max_iter=20_000)
    n_kernel = len(entered)
    log = ota.barycenter(A, M, epsilon=0.01, rho=rho, method="log", tol=tol, max_iter=20_000)
    assert n_kernel > 0 and len(entered) == n_kernel  # "auto" used the kernel domain, "log" did not
    assert bool(auto.converged) and bool(log.converged)
    atol = 1e-13 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(auto.barycenter.numpy(), log.barycenter.numpy(), atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------
# closed forms
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rho", [None, 0.3])
def test_identical_histograms_closed_form(rho):
    """For K copies of ``a``, ``v_k = 1`` is the fixed point: ``q = K^T (a / K 1)^tau``."""
    rng = np.random.default_rng(8)
    a = random_histograms(rng, 1, 30, power=2)[0]
    M, eps = grid_cost(30), 0.01
    res = ota.barycenter(np.stack([a, a, a]), M, epsilon=eps, weights=random_weights(rng, 3), rho=rho, **TIGHT)
    Kmat = np.exp(-M / eps)
    tau = 1.0 if rho is None else rho / (rho + eps)
    np.testing.assert_allclose(res.barycenter, Kmat.T @ (a / Kmat.sum(1)) ** tau, atol=1e-14, rtol=0)


def test_identical_histograms_small_epsilon_is_the_histogram():
    rng = np.random.default_rng(9)
    a = random_histograms(rng, 1, 40)[0]
    # grid step 1/39: eps far below step**2 makes the kernel the identity to within exp(-16)
    res = ota.barycenter(np.stack([a, a]), grid_cost(40), epsilon=1e-5, **TIGHT)
    np.testing.assert_allclose(res.barycenter, a, atol=1e-6, rtol=0)


def entropic_gaussian_barycentre_std(stds, w, eps):
    """Standard deviation of the barycentre of centred 1-D Gaussians ``N(0, s_k^2)`` for
    ``OT(a, q) = min <(x - y)^2, P> + eps * int P log P`` (differential entropy: the continuum limit
    of the Shannon entropy on a grid). A Gaussian plan with covariance ``[[s^2, c], [c, b^2]]`` costs
    ``s^2 + b^2 - 2 c - (eps / 2) log(s^2 b^2 - c^2)`` (+ const), minimal at
    ``c = (sqrt(eps^2 + 16 s^2 b^2) - eps) / 4``; the barycentre's ``b`` minimises the weighted sum."""

    def objective(b):
        c = (np.sqrt(eps**2 + 16 * stds**2 * b**2) - eps) / 4
        return float(w @ (b**2 - 2 * c - eps / 2 * np.log(stds**2 * b**2 - c**2)))

    return minimize_scalar(objective, bounds=(1e-3, 1.0), method="bounded", options=dict(xatol=1e-12)).x


@pytest.mark.parametrize("eps", [4e-3, 1e-3])
def test_gaussians_1d_barycentre(eps):
    """The entropic barycentre of 1-D Gaussians is the Gaussian with the weighted mean and the
    standard deviation above (W2 limit eps -> 0: the weighted mean of the standard deviations)."""
    n = 200
    x = np.linspace(-1.5, 1.5, n)
    M = (x[:, None] - x[None, :]) ** 2
    means, stds, w = np.array([-0.5, 0.5]), np.array([0.1, 0.2]), np.array([0.3, 0.7])
    A = np.exp(-((x[None, :] - means[:, None]) ** 2) / (2 * stds[:, None] ** 2))
    A /= A.sum(1, keepdims=True)
    res = ota.barycenter(A, M, epsilon=eps, weights=w, tol=1e-9, max_iter=20_000)
    assert bool(res.converged)
    q = res.barycenter
    mean = (q * x).sum()
    std = math.sqrt((q * (x - mean) ** 2).sum())
    assert mean == pytest.approx(w @ means, abs=1e-6)
    expected = entropic_gaussian_barycentre_std(stds, w, eps)
    assert std == pytest.approx(expected, rel=2e-5)
    assert abs(expected - w @ stds) > 50 * 2e-5 * expected  # the entropic correction is resolved
    gauss = np.exp(-((x - mean) ** 2) / (2 * std**2))
    assert np.abs(q - gauss / gauss.sum()).sum() < 2e-5


# ------------------------------------------------------------------------------------------------
# plans, mass, batches, dtypes, devices
# ------------------------------------------------------------------------------------------------
def test_plans_have_the_marginals():
    rng = np.random.default_rng(10)
    A, M = random_histograms(rng, 3, 20, zeros=4), grid_cost(20)
    res = ota.barycenter(t64(A), t64(M), epsilon=0.03, tol=1e-12, max_iter=10_000)
    P = res.plans
    assert P.shape == (3, 20, 20) and P.dtype == torch.float64
    np.testing.assert_allclose(P.sum(-1).numpy(), A, atol=1e-12, rtol=0)
    np.testing.assert_allclose(P.sum(-2).numpy(), np.broadcast_to(res.barycenter.numpy(), (3, 20)), atol=1e-14)
    assert float(res.barycenter.sum()) == pytest.approx(1.0, abs=1e-12)
    assert bool((P[torch.from_numpy(A == 0)] == 0).all())  # zero-mass rows carry nothing


def test_batched_equals_loop():
    rng = np.random.default_rng(11)
    B, K, n = 4, 3, 16
    A = np.stack([random_histograms(rng, K, n) for _ in range(B)])
    M = np.stack([grid_cost(n) * s for s in (1.0, 0.5, 2.0, 1.5)])
    w = np.stack([random_weights(rng, K) for _ in range(B)])
    forbid = torch.from_numpy(rng.uniform(size=(B, n, n)) < 0.15)
    forbid[:, torch.arange(n), torch.arange(n)] = False  # keep every row feasible
    batched = ota.barycenter(t64(A), t64(M), epsilon=0.03, weights=t64(w), constraints=C.Forbid(mask=forbid), **TIGHT)
    assert batched.barycenter.shape == (B, n) and batched.converged.shape == (B,)
    for b in range(B):
        one = ota.barycenter(
            t64(A[b]), t64(M[b]), epsilon=0.03, weights=t64(w[b]), constraints=C.Forbid(mask=forbid[b]), **TIGHT
        )
        np.testing.assert_allclose(batched.barycenter[b].numpy(), one.barycenter.numpy(), atol=1e-13, rtol=0)
        assert int(batched.n_iters[b]) == int(one.n_iters)
        np.testing.assert_allclose(batched.plans[b].numpy(), one.plans.numpy(), atol=1e-13, rtol=0)


def test_shared_cost_with_batched_histograms():
    rng = np.random.default_rng(12)
    A = np.stack([random_histograms(rng, 2, 10) for _ in range(3)])
    res = ota.barycenter(A, grid_cost(10), epsilon=0.05, **TIGHT)
    assert res.barycenter.shape == (3, 10) and res.n_iters.shape == (3,)
    for b in range(3):
        ref = ota.barycenter(A[b], grid_cost(10), epsilon=0.05, **TIGHT)
        np.testing.assert_allclose(res.barycenter[b], ref.barycenter, atol=1e-13, rtol=0)


def test_numpy_in_numpy_out_and_torch_in_torch_out():
    rng = np.random.default_rng(13)
    A, M = random_histograms(rng, 2, 8), grid_cost(8)
    res_np = ota.barycenter(A, M, epsilon=0.1)
    assert isinstance(res_np.barycenter, np.ndarray) and res_np.barycenter.dtype == np.float64
    assert isinstance(res_np.plans, np.ndarray) and isinstance(res_np.converged, np.ndarray)
    res_t = ota.barycenter(torch.tensor(A, dtype=torch.float32), torch.tensor(M, dtype=torch.float32), epsilon=0.1)
    assert isinstance(res_t.barycenter, torch.Tensor) and res_t.barycenter.dtype == torch.float32
    np.testing.assert_allclose(res_t.barycenter.numpy(), res_np.barycenter, atol=1e-5)


@pytest.mark.parametrize("rho", [None, 0.2])
def test_float32_close_to_float64(rho):
    rng = np.random.default_rng(14)
    A, M = random_histograms(rng, 3, 30, power=3), grid_cost(30)
    r64 = ota.barycenter(t64(A), t64(M), epsilon=0.01, rho=rho, max_iter=20_000)
    r32 = ota.barycenter(
        torch.tensor(A, dtype=torch.float32), torch.tensor(M, dtype=torch.float32), epsilon=0.01, rho=rho, max_iter=20_000
    )
    assert r64.tol == 1e-9 and r32.tol == 1e-5  # defaults by dtype
    assert bool(r64.converged) and bool(r32.converged)
    assert float((r32.barycenter.double() - r64.barycenter).abs().sum()) < 3e-5


def test_half_precision_input_computes_in_float32():
    """bfloat16 histograms normalised in bfloat16 have masses that differ by its rounding (~1e-3):
    they are brought to their mean mass, and the computation runs in float32."""
    rng = np.random.default_rng(15)
    A = torch.tensor(random_histograms(rng, 2, 12), dtype=torch.bfloat16)
    M = torch.tensor(grid_cost(12), dtype=torch.bfloat16)
    res = ota.barycenter(A, M, epsilon=0.1)
    assert res.barycenter.dtype == torch.bfloat16 and bool(res.converged)
    A64 = A.double()
    A64 = A64 * (A64.sum(-1).mean() / A64.sum(-1, keepdim=True))
    ref = ota.barycenter(A64, M.double(), epsilon=0.1)
    # bfloat16 keeps 8 significant bits: compare at its resolution
    np.testing.assert_allclose(res.barycenter.double().numpy(), ref.barycenter.numpy(), rtol=2**-8, atol=0)
    with pytest.raises(ValueError, match="expected equal masses"):
        ota.barycenter(A.double(), M.double(), epsilon=0.1)  # float64 input: that difference is real


def test_warm_start():
    rng = np.random.default_rng(16)
    A, M = random_histograms(rng, 3, 30), grid_cost(30)
    first = ota.barycenter(t64(A), t64(M), epsilon=0.01, tol=1e-11, max_iter=20_000)
    again = ota.barycenter(t64(A), t64(M), epsilon=0.01, tol=1e-11, max_iter=20_000, init=first)
    assert int(again.n_iters) <= 10 < int(first.n_iters)
    np.testing.assert_allclose(again.barycenter.numpy(), first.barycenter.numpy(), atol=1e-11, rtol=0)


# ------------------------------------------------------------------------------------------------
# constraints
# ------------------------------------------------------------------------------------------------
def test_forbidden_pairs_match_pot_with_prohibitive_costs():
    """Forbidding pairs equals giving them a cost so large that exp(-cost / eps) is exactly 0."""
    rng = np.random.default_rng(17)
    n = 15
    A, M, w = random_histograms(rng, 3, n), grid_cost(n), random_weights(rng, 3)
    forbid = rng.uniform(size=(n, n)) < 0.2
    np.fill_diagonal(forbid, False)
    ref = ot.bregman.barycenter(
        A.T, np.where(forbid, 1e6, M), 0.05, weights=w, method="sinkhorn_log", numItermax=100_000, stopThr=1e-15
    )
    res = ota.barycenter(t64(A), t64(M), epsilon=0.05, weights=t64(w), constraints=[C.Forbid(mask=torch.from_numpy(forbid))], **TIGHT)
    assert bool(res.converged)
    np.testing.assert_allclose(res.barycenter.numpy(), ref, atol=1e-12, rtol=0)
    assert bool((res.plans[:, torch.from_numpy(forbid)] == 0).all())


def test_forbid_diagonal():
    rng = np.random.default_rng(18)
    A = random_histograms(rng, 2, 10)
    res = ota.barycenter(A, grid_cost(10), epsilon=0.05, constraints=C.Forbid(mask="diagonal"), **TIGHT)
    assert bool(res.converged)
    assert np.all(res.plans[:, np.arange(10), np.arange(10)] == 0)
    np.testing.assert_allclose(res.plans.sum(-1), A, atol=1e-12)


def test_constraint_types_other_than_forbid_are_rejected():
    A, M = np.full((2, 4), 0.25), grid_cost(4)
    with pytest.raises(ValueError, match=r"constraints\[0\] is a Marginal"):
        ota.barycenter(A, M, epsilon=0.1, constraints=C.balanced())
    with pytest.raises(ValueError, match="TotalMass"):
        ota.barycenter(A, M, epsilon=0.1, constraints=[C.Forbid(mask="diagonal"), C.TotalMass(mass=1.0)])


def test_infeasible_support_is_reported_not_hidden():
    """Two histograms whose plans may only reach disjoint columns: no balanced barycentre exists."""
    A = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    allowed = np.zeros((4, 4), dtype=bool)
    allowed[:2, :2] = allowed[2:, 2:] = True
    with pytest.warns(NonConvergenceWarning):
        res = ota.barycenter(A, grid_cost(4), epsilon=0.1, constraints=C.Forbid(mask=torch.from_numpy(~allowed)))
    assert not bool(res.converged)


def test_forbidding_every_column_of_a_loaded_row_is_rejected():
    A = np.full((2, 3), 1 / 3)
    forbid = np.zeros((3, 3), dtype=bool)
    forbid[1] = True
    with pytest.raises(ValueError, match=r"forbid every column of row 1"):
        ota.barycenter(A, grid_cost(3), epsilon=0.1, constraints=C.Forbid(mask=torch.from_numpy(forbid)))


# ------------------------------------------------------------------------------------------------
# convergence reporting
# ------------------------------------------------------------------------------------------------
def test_non_convergence_warns_and_is_reported():
    rng = np.random.default_rng(19)
    A = np.stack([random_histograms(rng, 3, 30, power=4) for _ in range(2)])
    with pytest.warns(NonConvergenceWarning, match=r"did not reach tol"):
        res = ota.barycenter(A, grid_cost(30), epsilon=0.001, max_iter=20, check_every=5)
    assert res.converged.tolist() == [False, False]
    assert res.n_iters.tolist() == [20, 20]
    assert np.all(res.error > res.tol) and res.errors.shape == (2, 4)
    assert res.check_iters == [5, 10, 15, 20]


def test_converged_run_does_not_warn():
    rng = np.random.default_rng(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonConvergenceWarning)
        res = ota.barycenter(random_histograms(rng, 2, 10), grid_cost(10), epsilon=0.1)
    assert bool(res.converged) and res.error <= res.tol


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------
def _fd_check(rho, grad, plans):
    torch.manual_seed(0)
    n, K = 7, 3
    x = torch.linspace(0, 1, n, dtype=torch.float64)
    C0 = (x[:, None] - x[None, :]) ** 2 + 0.1 * torch.rand(n, n, dtype=torch.float64)
    A0 = torch.rand(K, n, dtype=torch.float64) + 0.1
    A0 = A0 / A0.sum(1, keepdim=True)
    w0 = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    probe_q, probe_p = torch.randn(n, dtype=torch.float64), torch.randn(K, n, n, dtype=torch.float64)

    def loss(A, Cm, w, mode):
        r = ota.barycenter(A, Cm, epsilon=0.05, weights=w, rho=rho, tol=1e-14, max_iter=20_000, grad=mode)
        out = (r.barycenter * probe_q).sum()
        return out + (r.plans * probe_p).sum() if plans else out

    A, Cm, w = (t.clone().requires_grad_() for t in (A0, C0, w0))
    loss(A, Cm, w, grad).backward()
    h = 1e-6
    for i, (T, G) in enumerate(((A0, A.grad), (C0, Cm.grad), (w0, w.grad))):
        d = torch.randn_like(T)
        if i == 2 or (i == 0 and rho is None):  # stay on the simplex / keep the masses equal
            d = d - d.mean(-1, keepdim=True)
        args_p, args_m = [A0, C0, w0], [A0, C0, w0]
        args_p[i], args_m[i] = T + h * d, T - h * d
        fd = (loss(*args_p, "none") - loss(*args_m, "none")) / (2 * h)
        assert float((G * d).sum()) == pytest.approx(float(fd), rel=1e-6, abs=1e-9), ("histograms", "cost", "weights")[i]


@pytest.mark.parametrize("grad", ["implicit", "unroll"])
@pytest.mark.parametrize("rho", [None, 0.3, (math.inf, 0.3)])
def test_gradients_match_finite_differences(grad, rho):
    _fd_check(rho, grad, plans=False)


@pytest.mark.parametrize("grad", ["implicit", "unroll"])
def test_gradients_through_the_plans(grad):
    _fd_check((0.3, math.inf), grad, plans=True)
    _fd_check(None, grad, plans=True)


def test_implicit_equals_unroll_at_convergence_batched():
    rng = np.random.default_rng(21)
    A = t64(np.stack([random_histograms(rng, 3, 12) for _ in range(2)]))
    grads = {}
    for mode in ("implicit", "unroll"):
        Cm = t64(grid_cost(12)).requires_grad_()
        res = ota.barycenter(A, Cm, epsilon=0.05, tol=1e-14, max_iter=20_000, grad=mode)
        (res.barycenter ** 2).sum().backward()
        grads[mode] = Cm.grad
    torch.testing.assert_close(grads["implicit"], grads["unroll"], atol=1e-10, rtol=1e-8)


def test_grad_none_detaches():
    Cm = t64(grid_cost(6)).requires_grad_()
    res = ota.barycenter(t64(np.full((2, 6), 1 / 6)), Cm, epsilon=0.1, grad="none")
    assert not res.barycenter.requires_grad and not res.plans.requires_grad


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
GOOD = dict(histograms=np.full((2, 4), 0.25), cost=grid_cost(4))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(histograms=np.array([[0.5, 0.5, 0.1, -0.1], [0.25] * 4])), r"histograms\[0, 3\] = -0.1"),
        (dict(histograms=np.array([[0.5, np.nan, 0.25, 0.25], [0.25] * 4])), r"histograms\[0, 1\] = nan"),
        (dict(histograms=np.array([[0.5, 0.5, 0.5, 0.5], [0.25] * 4])), r"total masses \[2.0, 1.0\]; expected equal"),
        (dict(histograms=np.array([[0.0] * 4, [0.25] * 4])), r"histograms\[0\] has total mass 0"),
        (dict(histograms=np.full(4, 0.25)), r"histograms has shape \(4,\)"),
        (dict(cost=grid_cost(5)), r"cost has shape \(5, 5\); expected \(4, m\)"),
        (dict(cost=np.where(np.eye(4) > 0, np.inf, grid_cost(4))), r"cost\[0, 0\] = inf"),
        (dict(weights=[0.6, 0.6]), r"weights sums to 1.2"),
        (dict(weights=[1.5, -0.5]), r"weights\[1\] = -0.5"),
        (dict(weights=[0.2, 0.3, 0.5]), r"weights has shape \(3,\); expected \(2,\)"),
        (dict(epsilon=0.0), r"epsilon=0.0; expected a finite number > 0"),
        (dict(epsilon=-1), r"epsilon=-1"),
        (dict(epsilon=float("nan")), r"epsilon=nan"),
        (dict(rho=0.0), r"rho=0.0"),
        (dict(rho=(1.0, -2.0)), r"rho\[1\]=-2.0"),
        (dict(tol=-1e-3), r"tol=-0.001"),
        (dict(max_iter=0), r"max_iter=0"),
        (dict(check_every=2.5), r"check_every=2.5"),
        (dict(grad="adjoint"), r"grad='adjoint'"),
        (dict(method="kernel"), r"method='kernel'"),
        (dict(histograms=np.full((3, 2, 4), 0.25), cost=np.stack([grid_cost(4)] * 2)), r"batch sizes disagree"),
        (dict(constraints=C.Forbid(mask=torch.zeros(3, 3, dtype=torch.bool))), r"mask of shape \(3, 3\)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(change, match):
    kwargs = dict(GOOD, epsilon=0.1)
    kwargs.update(change)
    hist, cost = kwargs.pop("histograms"), kwargs.pop("cost")
    with pytest.raises(ValueError, match=match):
        ota.barycenter(hist, cost, **kwargs)


def test_unequal_masses_are_fine_when_relaxed():
    A = np.array([[0.5, 0.5, 0.5, 0.5], [0.25] * 4])
    res = ota.barycenter(A, grid_cost(4), epsilon=0.1, rho=1.0)
    assert bool(res.converged)
    assert 1.0 < res.barycenter.sum() < 2.0


def test_numpy_scalars_are_numbers():
    res = ota.barycenter(**GOOD, epsilon=np.float64(0.1), max_iter=np.int64(50), rho=np.float32(2.0))
    assert res.epsilon == pytest.approx(0.1)


def test_init_must_match():
    first = ota.barycenter(**GOOD, epsilon=0.1)
    with pytest.raises(ValueError, match=r"init has potentials of shape \(1, 2, 4\); expected \(1, 3, 4\)"):
        ota.barycenter(np.full((3, 4), 0.25), grid_cost(4), epsilon=0.1, init=first)


# ------------------------------------------------------------------------------------------------
# invariants (hypothesis)
# ------------------------------------------------------------------------------------------------
problems = st.tuples(
    st.integers(2, 4),  # K
    st.integers(3, 9),  # n
    st.integers(0, 2**31 - 1),  # seed
    st.sampled_from([0.03, 0.1, 0.5]),  # epsilon
)


@settings(max_examples=15, deadline=None)
@given(problems, st.sampled_from([None, 0.5]))
def test_order_of_the_histograms_does_not_matter(problem, rho):
    K, n, seed, eps = problem
    rng = np.random.default_rng(seed)
    A, M, w = random_histograms(rng, K, n), rng.uniform(0, 1, (n, n)), random_weights(rng, K)
    perm = rng.permutation(K)
    one = ota.barycenter(A, M, epsilon=eps, weights=w, rho=rho, tol=1e-12, max_iter=50_000)
    two = ota.barycenter(A[perm], M, epsilon=eps, weights=w[perm], rho=rho, tol=1e-12, max_iter=50_000)
    np.testing.assert_allclose(one.barycenter, two.barycenter, atol=1e-10, rtol=0)
    np.testing.assert_allclose(one.plans[perm], two.plans, atol=1e-10, rtol=0)


@settings(max_examples=15, deadline=None)
@given(problems, st.floats(0.1, 10.0))
def test_balanced_mass_is_preserved_and_scales(problem, scale):
    K, n, seed, eps = problem
    rng = np.random.default_rng(seed)
    A, M = random_histograms(rng, K, n, zeros=1), rng.uniform(0, 1, (n, n))
    res = ota.barycenter(A, M, epsilon=eps, tol=1e-12, max_iter=50_000)
    assert bool(res.converged)
    assert res.barycenter.sum() == pytest.approx(1.0, abs=1e-11)
    assert np.all(res.barycenter >= 0)
    scaled = ota.barycenter(scale * A, M, epsilon=eps, tol=1e-12 * scale, max_iter=50_000)
    np.testing.assert_allclose(scaled.barycenter, scale * res.barycenter, atol=1e-10 * scale, rtol=0)


# ------------------------------------------------------------------------------------------------
# GPU (run with -m gpu)
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rho", [None, 0.5])
def test_gpu_matches_cpu(dtype, rho):
    rng = np.random.default_rng(22)
    A = torch.tensor(np.stack([random_histograms(rng, 3, 200, power=3) for _ in range(4)]), dtype=dtype)
    M = torch.tensor(grid_cost(200), dtype=dtype)
    cpu = ota.barycenter(A, M, epsilon=0.005, rho=rho, max_iter=20_000)
    gpu = ota.barycenter(A.cuda(), M.cuda(), epsilon=0.005, rho=rho, max_iter=20_000)
    assert gpu.barycenter.device.type == "cuda" and gpu.barycenter.dtype == dtype
    assert bool(gpu.converged.all())
    atol = 1e-4 if dtype == torch.float32 else 1e-8
    assert float((gpu.barycenter.cpu() - cpu.barycenter).abs().sum(-1).max()) < atol
    Cm = M.cuda().requires_grad_()
    ota.barycenter(A.cuda(), Cm, epsilon=0.005, rho=rho, max_iter=20_000).barycenter.square().sum().backward()
    assert Cm.grad is not None and bool(torch.isfinite(Cm.grad).all())


# ---------------------------------------------------------------------------------------------
# free support: ota.barycenter_points
# ---------------------------------------------------------------------------------------------
def test_free_support_of_translated_clouds_is_the_weighted_translation():
    """Clouds that are translates of one cloud: the barycentre's points average the maps, so its
    mean is the weighted mean of the clouds' means (exact at every fixed point of balanced plans)."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(12, 2))
    clouds = [base + [3.0, 0.0], base - [0.0, 2.0], base * 0.5]
    w = np.array([0.5, 0.3, 0.2])
    res = ota.barycenter_points(clouds, w, n_points=6, epsilon=0.1, max_iter=40, tol=1e-5)
    assert isinstance(res.points, np.ndarray) and res.points.shape == (6, 2)
    want = sum(wk * c.mean(0) for wk, c in zip(w, clouds))
    assert np.allclose(res.points.mean(0), want, atol=1e-6)
    assert res.converged


def test_free_support_single_points_and_ragged():
    """K one-point clouds: every plan is trivial and the barycentre is the weighted mean."""
    pts = [torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[3.0, -2.0]], dtype=torch.float64)]
    res = ota.barycenter_points(pts, torch.tensor([0.25, 0.75], dtype=torch.float64), n_points=3, epsilon=0.1)
    assert torch.allclose(res.points, torch.tensor([[2.5, -1.0]] * 3, dtype=torch.float64), atol=1e-12)
    ragged = [torch.randn(5, 2, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)]
    out = ota.barycenter_points(ragged, n_points=4, epsilon=0.2, max_iter=5)
    assert out.points.shape == (4, 2) and torch.isfinite(out.points).all()


def test_free_support_bad_input():
    with pytest.raises(ValueError, match="n_points"):
        ota.barycenter_points(np.zeros((2, 3, 2)), n_points=0, epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon"):
        ota.barycenter_points(np.zeros((2, 3, 2)), n_points=2, epsilon=-1.0)
    with pytest.raises(ValueError, match=r"clouds\[1\] has dimension d=3"):
        ota.barycenter_points([np.zeros((3, 2)), np.zeros((3, 3))], n_points=2, epsilon=0.1)
    with pytest.raises(ValueError, match="weights has shape"):
        ota.barycenter_points(np.zeros((2, 3, 2)), [1.0], n_points=2, epsilon=0.1)
