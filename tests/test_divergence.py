"""Sinkhorn divergences (``ota.sinkhorn_divergence``, ``ota.SinkhornDivergence``): the definition from
three independent float64 POT solves, S(x, x) = 0, gradients against finite differences, batches,
ragged lists, NumPy, backends, bad input."""

import numpy as np
import ot
import pytest
import torch

import otalign as ota

EPS = 0.5


def _kl(p, q):
    """Generalised KL, ``sum p log(p / q) - p + q``."""
    p, q = np.broadcast_arrays(p, q)
    pos = p > 0
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])) - p.sum() + q.sum())


def _pot_ot(p, q, wp, wq, eps, rho=None):
    """OT(a, b) = <C, P> + eps KL(P || a (x) b) (+ rho KL marginal penalties) from POT's float64 plan."""
    M = ot.dist(p, q)  # squared Euclidean, not halved
    if rho is None:
        P, log = ot.sinkhorn(wp, wq, M, eps, method="sinkhorn_log", stopThr=1e-14, numItermax=20_000, log=True)
        assert log["err"][-1] < 1e-11, "the POT reference did not converge"
        return float(np.sum(M * P)) + eps * _kl(P, np.outer(wp, wq))
    P = ot.unbalanced.sinkhorn_unbalanced(wp, wq, M, eps, rho, method="sinkhorn_stabilized", reg_type="kl",
                                          stopThr=1e-15, numItermax=20_000)
    return (float(np.sum(M * P)) + eps * _kl(P, np.outer(wp, wq)) + rho * _kl(P.sum(1), wp)
            + rho * _kl(P.sum(0), wq))


def _pot_divergence(x, y, a, b, eps, rho=None):
    S = _pot_ot(x, y, a, b, eps, rho) - 0.5 * _pot_ot(x, x, a, a, eps, rho) - 0.5 * _pot_ot(y, y, b, b, eps, rho)
    if rho is not None:
        S += 0.5 * eps * (a.sum() - b.sum()) ** 2
    return S


def _data(seed, n=7, m=9, d=2, mass_b=1.0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.5
    a, b = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, m)
    return x, y, a / a.sum(), mass_b * b / b.sum()


@pytest.mark.parametrize("seed", [0, 2])
def test_balanced_equals_definition_from_pot(seed):
    x, y, a, b = _data(seed)
    S = ota.sinkhorn_divergence(x, y, a, b, epsilon=EPS)
    assert isinstance(S, np.ndarray) and S.shape == ()
    assert abs(float(S) - _pot_divergence(x, y, a, b, EPS)) < 1e-8


@pytest.mark.parametrize("rho", [0.3, 2.0])
def test_unbalanced_equals_definition_from_pot(rho):
    x, y, a, b = _data(3, mass_b=1.7)
    S = ota.sinkhorn_divergence(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(a), torch.from_numpy(b),
                                epsilon=EPS, rho=rho)
    assert S.dtype == torch.float64 and S.shape == ()
    ref = _pot_divergence(x, y, a, b, EPS, rho)
    assert abs(float(S) - ref) < 1e-8
    # the mass term is part of it: without it the value would differ by eps (m(a) - m(b))^2 / 2
    assert 0.5 * EPS * 0.7**2 > 1e-3


def test_debias_false_is_ot():
    x, y, a, b = _data(4)
    S = ota.sinkhorn_divergence(x, y, a, b, epsilon=EPS, debias=False)
    assert abs(float(S) - _pot_ot(x, y, a, b, EPS)) < 1e-8


@pytest.mark.parametrize("rho", [None, 0.5])
def test_self_divergence_is_zero_and_positive_otherwise(rho):
    x, y, a, b = (torch.from_numpy(v) for v in _data(5))
    assert abs(float(ota.sinkhorn_divergence(x, x, a, a, epsilon=0.05, rho=rho))) < 1e-10
    assert float(ota.sinkhorn_divergence(x, y, a, b, epsilon=0.05, rho=rho)) > 1e-3


def _fd(fun, t, direction, h=1e-5):
    return (fun(t + h * direction) - fun(t - h * direction)) / (2 * h)


@pytest.mark.parametrize("rho", [None, 0.7])
def test_gradients_match_finite_differences(rho):
    x, y, a, b = (torch.from_numpy(v) for v in _data(6, n=6, m=5))
    kw = dict(epsilon=0.2, rho=rho, tol=1e-13, max_iter=100_000)
    xg, ag = x.clone().requires_grad_(), a.clone().requires_grad_()
    S = ota.sinkhorn_divergence(xg, y, ag, b, **kw)
    gx, ga = torch.autograd.grad(S, (xg, ag))
    gen = torch.Generator().manual_seed(0)
    dx = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    fd_x = _fd(lambda t: float(ota.sinkhorn_divergence(t, y, a, b, **kw)), x, dx)
    assert abs(float((gx * dx).sum()) - fd_x) < 1e-6
    da = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    if rho is None:
        da = da - da.mean()  # balanced: masses stay equal, the gradient is defined up to a constant
    fd_a = _fd(lambda t: float(ota.sinkhorn_divergence(x, y, t, b, **kw)), a, da)
    assert abs(float((ga * da).sum()) - fd_a) < 1e-6
    assert abs(fd_x) > 1e-3 and abs(fd_a) > 1e-4  # the checks are not vacuous


def test_batched_equals_loop_and_ragged_equals_loop():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 6, 2, generator=gen, dtype=torch.float64)
    S = ota.sinkhorn_divergence(x, y, epsilon=0.1)
    assert S.shape == (3,)
    loop = torch.stack([ota.sinkhorn_divergence(x[k], y[k], epsilon=0.1) for k in range(3)])
    assert torch.allclose(S, loop, atol=1e-10, rtol=0)
    xs = [x[0, :5], x[1], x[2, :3]]
    ys = [y[0], y[1, :4], y[2, :2]]
    R = ota.sinkhorn_divergence(xs, ys, epsilon=0.1, rho=1.0)
    loop = torch.stack([ota.sinkhorn_divergence(p, q, epsilon=0.1, rho=1.0) for p, q in zip(xs, ys)])
    assert R.shape == (3,) and torch.allclose(R, loop, atol=1e-10, rtol=0)
    # per-cloud weights as lists
    wa = [torch.full((p.shape[0],), 2.0 / p.shape[0], dtype=torch.float64) for p in xs]
    R2 = ota.sinkhorn_divergence(xs, ys, wa, None, epsilon=0.1, rho=1.0)
    loop2 = torch.stack([ota.sinkhorn_divergence(p, q, w, None, epsilon=0.1, rho=1.0) for p, q, w in zip(xs, ys, wa)])
    assert torch.allclose(R2, loop2, atol=1e-10, rtol=0) and not torch.allclose(R2, R)


def test_ragged_gradients_reach_each_cloud():
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(n, 2, generator=gen, dtype=torch.float64, requires_grad=True) for n in (4, 6)]
    y = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    ota.sinkhorn_divergence(xs, [y, y], epsilon=0.1).sum().backward()
    for k, p in enumerate(xs):
        ref = p.detach().clone().requires_grad_()
        ota.sinkhorn_divergence(ref, y, epsilon=0.1).backward()
        assert torch.allclose(p.grad, ref.grad, atol=1e-8, rtol=0)


def test_numpy_in_numpy_out_and_float32_dtype():
    x, y, _, _ = _data(7)
    S = ota.sinkhorn_divergence(x.astype(np.float32), y.astype(np.float32), epsilon=0.1)
    assert isinstance(S, np.ndarray) and S.dtype == np.float32
    St = ota.sinkhorn_divergence(torch.from_numpy(x).float(), torch.from_numpy(y).float(), epsilon=0.1)
    assert St.dtype == torch.float32 and abs(float(St) - float(S)) < 1e-6


def test_online_equals_tensorized():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 30, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 20, 3, generator=gen, dtype=torch.float64)
    dense = ota.sinkhorn_divergence(x, y, epsilon=0.1, rho=0.5, backend="tensorized")
    online = ota.sinkhorn_divergence(x, y, epsilon=0.1, rho=0.5, backend="online")
    assert torch.allclose(dense, online, atol=1e-10, rtol=0)


def test_module_forms_and_warm_start():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 2, generator=gen, dtype=torch.float64) + 1
    a = torch.full((40,), 1 / 40, dtype=torch.float64)
    b = torch.full((30,), 1 / 30, dtype=torch.float64)
    loss = ota.SinkhornDivergence(epsilon=0.05, warm_start=True)
    S1 = loss(x, y)
    cold = sum(int(r.n_iters) for r in loss.results)
    S2 = loss(a, x + 1e-3, b, y)
    warm = sum(int(r.n_iters) for r in loss.results)
    ref = ota.sinkhorn_divergence(x + 1e-3, y, epsilon=0.05)
    assert abs(float(S2) - float(ref)) < 1e-7 and abs(float(S1) - float(S2)) > 1e-6
    assert warm < cold
    with pytest.raises(ValueError, match="arguments"):
        loss(x)


def test_bad_inputs_name_the_argument():
    x = torch.randn(5, 2, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"d=2.*d=3"):
        ota.sinkhorn_divergence(x, y, epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon"):
        ota.sinkhorn_divergence(x, x, epsilon=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        ota.SinkhornDivergence(epsilon=-1.0)
    w = torch.tensor([0.5, -0.1, 0.2, 0.2, 0.2], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^a .*-0\.1"):
        ota.sinkhorn_divergence(x, x, w, None, epsilon=0.1)
    with pytest.raises(ValueError, match=r"b has shape"):
        ota.sinkhorn_divergence(x, x, None, torch.ones(3, dtype=torch.float64) / 3, epsilon=0.1)
    with pytest.raises(ValueError, match=r"x\[1\] has dimension d=3"):
        ota.sinkhorn_divergence([x, torch.randn(3, 3)], [x, x], epsilon=0.1)
    with pytest.raises(ValueError, match="constraints"):
        ota.sinkhorn_divergence(x, x, epsilon=0.1, constraints=ota.constraints.balanced())


def test_warm_start_extrapolates_smooth_trajectories_and_keeps_the_values():
    """Along a smooth path the module starts each solve from ``2 p_t - p_{t-1}``; the values are
    those of cold solves (float64, to the tolerance), whatever the start."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(25, 2, generator=gen, dtype=torch.float64) * 0.5 + 1
    loss = ota.SinkhornDivergence(epsilon=0.1, warm_start=True)
    pots = []
    for t in range(4):
        xt = x + 0.02 * t
        S = loss(xt, y)
        assert abs(float(S) - float(ota.sinkhorn_divergence(xt, y, epsilon=0.1))) < 1e-9
        pots.append(loss.results[0].potentials)
    (f2, g2), (f3, g3) = pots[-2], pots[-1]
    f_start, g_start = loss._inits[0]
    assert torch.allclose(f_start, 2 * f3 - f2, atol=1e-14) and torch.allclose(g_start, 2 * g3 - g2, atol=1e-14)
    assert float((g3 - g2).abs().max()) > 1e-4  # the potentials did move: the check above means something
    # the over-relaxation OT(x, y) ended with starts the next call's (overrelax_start)
    assert loss._omega is not None and torch.equal(loss._omega, loss.results[0].result._trace.omega)


def test_extrapolation_falls_back_to_the_last_potentials_off_a_smooth_path():
    from otalign.samples.divergence import _extrapolate

    def pair(f, g):
        return torch.tensor([f]), torch.tensor([g])

    line = [pair([3.0, 1.0], [2.0]), pair([2.0, 1.0], [1.0]), pair([1.0, 1.0], [0.0])]  # newest first
    f, g = _extrapolate(line)
    assert f.tolist() == [[4.0, 1.0]] and g.tolist() == [[3.0]]
    jump = [line[0], pair([-5.0, 1.0], [9.0]), line[2]]
    f, g = _extrapolate(jump)  # second difference larger than the step: no extrapolation
    assert f.tolist() == [[3.0, 1.0]] and g.tolist() == [[2.0]]
    assert _extrapolate(line[:2]) is line[0]  # too short a history
    assert _extrapolate([line[0], (torch.zeros(1, 3), torch.zeros(1, 1)), line[2]]) is line[0]  # shapes changed
    padded = [(torch.tensor([[3.0, -float("inf")]]), g) for _, g in line]
    f, _ = _extrapolate(padded)
    assert f[0, 1] == -float("inf") and f[0, 0] == 3.0
    # per problem of a batch
    both = [(torch.cat([fl, fj]), torch.cat([gl, gj])) for (fl, gl), (fj, gj) in zip(line, jump)]
    f, _ = _extrapolate(both)
    assert f.tolist() == [[4.0, 1.0], [3.0, 1.0]]


def test_fixed_target_debiasing_term_is_reused_until_the_target_changes():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(25, 2, generator=gen, dtype=torch.float64) + 1
    loss = ota.SinkhornDivergence(epsilon=0.1, warm_start=True)
    loss(x, y)
    first = loss.results[2]
    xg = (x + 0.01).requires_grad_()
    S = loss(xg, y)
    assert loss.results[2].value is first.value and loss.results[2].n_iters == 0  # OT(y, y) not solved again
    xr = (x + 0.01).requires_grad_()
    ref = ota.sinkhorn_divergence(xr, y, epsilon=0.1)
    assert abs(float(S.detach()) - float(ref.detach())) < 1e-8  # warm and cold agree to the tolerance
    S.backward()
    ref.backward()
    assert torch.allclose(xg.grad, xr.grad, atol=1e-8, rtol=0)
    with torch.no_grad():
        y.mul_(1.3)  # in place: the term must be recomputed
    S = loss(x, y)
    assert loss.results[2].value is not first.value and loss.results[2].n_iters > 0
    assert abs(float(S) - float(ota.sinkhorn_divergence(x, y, epsilon=0.1))) < 1e-8
    y2 = y.clone()  # another object with equal values is recomputed too (and gives the same)
    S2 = loss(x, y2)
    assert loss.results[2].value is not first.value
    assert abs(float(S2) - float(S)) < 1e-8
    S3 = loss(x.float(), y2.float())  # dtypes change: no reuse of a float64 term
    assert S3.dtype == torch.float32 and loss.results[2].value.dtype == torch.float32


def test_debiasing_solve_warm_started_near_its_solution_stops_before_check_every():
    from otalign import geometry as G
    from otalign.samples.symmetric import averaged_ot

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    w = torch.full((1, 40), 1 / 40, dtype=torch.float64)
    geom = G.PointCloud(x, x)
    kw = dict(epsilon=0.1, rho=(None, None), tol=1e-10, max_iter=2000, symmetric=True, check_every=10)
    cold, (f, _), cold_sweeps, ok = averaged_ot(geom, w, w, **kw)
    assert ok and cold_sweeps >= 10
    start = f + 1e-9 * torch.randn(f.shape, generator=gen, dtype=torch.float64)
    warm, _, sweeps, ok = averaged_ot(geom, w, w, init=(start, start), **kw)
    assert ok and 1 <= sweeps < 10 and abs(float(warm - cold)) < 1e-12
