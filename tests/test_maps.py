"""Point clouds at the front door of ``ota.solve``: ragged lists, NumPy in / NumPy out, and
``res.barycentric_map``."""

import numpy as np
import pytest
import torch

import otalign as ota
from otalign import constraints as C
from otalign import geometry as G


def _clouds(seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 2, generator=gen, dtype=torch.float64) for n in (5, 8, 3)]
    ys = [torch.randn(m, 2, generator=gen, dtype=torch.float64) for m in (6, 4, 7)]
    return xs, ys


@pytest.mark.parametrize("cons", [None, C.unbalanced(0.5)])
def test_ragged_solve_equals_loop(cons):
    xs, ys = _clouds()
    res = ota.solve(G.PointCloud(xs, ys), cons, epsilon=0.3, tol=1e-10, max_iter=5000)
    assert res.plan.shape == (3, 8, 7)
    for k, (x, y) in enumerate(zip(xs, ys)):
        one = ota.solve(G.PointCloud(x, y), cons, epsilon=0.3, tol=1e-10, max_iter=5000)
        assert abs(float(res.value[k] - one.value)) < 1e-10
        assert torch.allclose(res.plan[k, : len(x), : len(y)], one.plan, atol=1e-12)
        assert float(res.plan[k, len(x):].abs().sum() + res.plan[k, :, len(y):].abs().sum()) == 0.0


def test_numpy_point_clouds_give_numpy_results():
    x = np.random.default_rng(0).normal(size=(6, 3))
    y = np.random.default_rng(1).normal(size=(5, 3))
    res = ota.solve(G.PointCloud(x, y), epsilon=0.1)
    for out in (res.plan, res.f, res.g, res.value, res.marginals[0], res.barycentric_map(), res.apply(np.ones(5))):
        assert isinstance(out, np.ndarray)
    ref = ota.solve(G.PointCloud(torch.from_numpy(x), torch.from_numpy(y)), epsilon=0.1)
    assert np.allclose(res.plan, ref.plan.numpy(), atol=1e-14)


def test_barycentric_map_is_row_normalised_plan_times_y():
    xs, ys = _clouds(1)
    res = ota.solve(G.PointCloud(xs[1], ys[2]), C.unbalanced(0.3), epsilon=0.2)
    P = res.plan
    ref = (P @ ys[2]) / P.sum(1, keepdim=True)
    assert torch.allclose(res.barycentric_map(), ref, atol=1e-12)
    v = torch.arange(7, dtype=torch.float64)
    assert torch.allclose(res.barycentric_map(v), (P @ v) / P.sum(1), atol=1e-12)


def test_barycentric_map_zero_rows_raise_or_nan_and_padding_is_nan():
    x = torch.randn(4, 2, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    a = torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=torch.float64)
    res = ota.solve(G.PointCloud(x, y), C.balanced(a, None), epsilon=0.1)
    with pytest.raises(ValueError, match=r"rows \[\[1\]\]|zero mass"):
        res.barycentric_map()
    out = res.barycentric_map(empty="nan")
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2, 3]]).all()
    with pytest.raises(ValueError, match="empty"):
        res.barycentric_map(empty="zero")
    xs, ys = _clouds(2)
    ragged = ota.solve(G.PointCloud(xs, ys), epsilon=0.3).barycentric_map()  # padding rows: NaN, no raise
    assert torch.isnan(ragged[0, 5:]).all() and torch.isfinite(ragged[0, :5]).all()


def test_shared_cloud_against_a_batch():
    xs, ys = _clouds(3)
    y = torch.stack([ys[0][:4], ys[1][:4]])
    res = ota.solve(G.PointCloud(xs[0], y, backend="tensorized"), epsilon=0.1)
    online = ota.solve(G.PointCloud(xs[0], y, backend="online"), epsilon=0.1)
    assert res.plan.shape == (2, 5, 4) and torch.allclose(res.plan, online.plan, atol=1e-10)


def test_ragged_bad_inputs():
    with pytest.raises(ValueError, match=r"x\[1\] has dimension d=3 but x\[0\] has d=2"):
        G.PointCloud([torch.randn(3, 2), torch.randn(3, 3)], torch.randn(4, 2))
    with pytest.raises(ValueError, match="empty list"):
        G.PointCloud([], torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"y\[0\] has shape"):
        G.PointCloud(torch.randn(3, 2), [torch.randn(2, 4, 2)])
