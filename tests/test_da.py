"""Domain adaptation (``ota.da.Transport``): maps, label proportions, bad input."""

import numpy as np
import pytest
import torch

import otalign as ota


def _domains(seed=0, n=60, m=50):
    rng = np.random.default_rng(seed)
    ys = np.repeat([0, 1, 2], n // 3)
    xs = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])[ys] + 0.4 * rng.normal(size=(n, 2))
    props = np.array([0.5, 0.3, 0.2])
    yt = rng.choice(3, size=m, p=props)
    xt = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])[yt] + 0.4 * rng.normal(size=(m, 2)) + 0.5
    return xs, ys, xt, yt, props


def test_transform_of_fitted_points_is_the_entropic_map():
    xs, ys, xt, _, props = _domains()
    for kw in (dict(), dict(target_proportions=props), dict(target_proportions=props, proportions="reweight")):
        da = ota.da.Transport(epsilon=0.5, tol=1e-10).fit(xs, xt, ys, **kw)
        fitted = da.transform()
        out_of_sample = da.transform(xs)
        assert isinstance(out_of_sample, np.ndarray) and out_of_sample.shape == xs.shape
        assert np.allclose(np.asarray(fitted), out_of_sample, atol=1e-8)


@pytest.mark.parametrize("mode", ["block", "reweight"])
def test_class_masses_follow_the_target_proportions(mode):
    xs, ys, xt, yt, props = _domains(1)
    da = ota.da.Transport(epsilon=0.5, tol=1e-9).fit(xs, xt, ys, target_proportions=props, proportions=mode)
    rows = np.asarray(da.result_.marginals[0])
    sent = np.array([rows[ys == k].sum() for k in range(3)])
    assert np.allclose(sent, props, atol=1e-7)
    cols = np.asarray(da.result_.marginals[1])
    assert np.allclose(cols, 1.0 / len(xt), atol=1e-7)
    assert (np.asarray(da.predict()) == yt).mean() > 0.9


def test_block_masses_relax_rows_within_a_class_unlike_the_free_row_pitfall():
    """The block recipe keeps a KL-relaxed row marginal: rows of a class differ but none collapses.
    A block mass without a row marginal (the pitfall) lets a class send its mass from few points."""
    from otalign import constraints as C

    xs, ys, xt, _, props = _domains(2)
    da = ota.da.Transport(epsilon=0.5, tol=1e-9).fit(xs, xt, ys, target_proportions=props, row_rho=0.5)
    rows = np.asarray(da.result_.marginals[0])
    share = props[ys] / 20
    assert rows.min() > 0.1 * share.min() and not np.allclose(rows, share, rtol=1e-3)
    free = [C.Marginal(axis=1), C.BlockMass(row_groups=torch.as_tensor(ys), col_groups=torch.zeros(len(xt), dtype=torch.long),
                                            mass=torch.as_tensor(props)[:, None])]
    pit = ota.da.Transport(epsilon=0.5, constraints=free, tol=1e-9).fit(xs, xt, ys)
    pit_rows = np.asarray(pit.result_.marginals[0])
    assert np.allclose([pit_rows[ys == k].sum() for k in range(3)], props, atol=1e-7)
    assert pit_rows.min() < 0.1 * share.min() < rows.min()  # some source points send (almost) nothing


def test_estimated_proportions_near_truth_without_shift():
    xs, ys, xt, yt, props = _domains(3, n=90, m=120)
    est = ota.da.estimate_proportions(xs, ys, xt - 0.5, epsilon=0.1)
    truth = np.bincount(yt, minlength=3) / len(yt)
    assert np.abs(est.numpy() - truth).max() < 0.05


def test_bad_inputs():
    xs, ys, xt, _, props = _domains()
    with pytest.raises(ValueError, match="epsilon"):
        ota.da.Transport(epsilon=0)
    with pytest.raises(ValueError, match="d=2 but xt has d=3"):
        ota.da.Transport(epsilon=0.5).fit(xs, np.ones((4, 3)))
    with pytest.raises(ValueError, match="without ys"):
        ota.da.Transport(epsilon=0.5).fit(xs, xt, target_proportions=props)
    with pytest.raises(ValueError, match="target_proportions has shape"):
        ota.da.Transport(epsilon=0.5).fit(xs, xt, ys, target_proportions=[0.5, 0.5])
    with pytest.raises(ValueError, match="not fitted"):
        ota.da.Transport(epsilon=0.5).transform()


def _subclusters(seed=0):
    """Two sub-clusters per class in the source (50 / 50); the target keeps only the left one of
    each class, with class proportions 0.6 / 0.4 exactly."""
    rng = np.random.default_rng(seed)
    ys = np.repeat([0, 1], 20)
    side = np.tile([0, 1], 20)
    xs = np.array([[0.0, 0.0], [6.0, 0.0]])[ys] + np.array([[-1.0, 0.0], [1.0, 0.0]])[side] + 0.2 * rng.normal(size=(40, 2))
    yt = np.repeat([0, 1], [18, 12])
    xt = np.array([[0.0, 0.0], [6.0, 0.0]])[yt] + np.array([-1.0, 0.0]) + 0.2 * rng.normal(size=(30, 2))
    return xs, ys, side, xt, yt


def test_row_mass_and_supported_drop_the_points_the_target_lacks():
    """Block masses with relaxed rows let the sub-cluster missing from the target send (almost)
    nothing; ``supported`` drops exactly those points. Reweighting (hard rows) keeps every point."""
    xs, ys, side, xt, _ = _subclusters()
    da = ota.da.Transport(epsilon=0.1, tol=1e-6).fit(xs, xt, ys, target_proportions=[0.6, 0.4], row_rho=0.1)
    rows, ref = da.row_mass_, np.asarray(da.reference_weights_)
    assert isinstance(rows, np.ndarray) and rows.shape == (40,)
    assert np.allclose(ref, np.array([0.6, 0.4])[ys] / 20)
    assert np.allclose([rows[ys == k].sum() for k in range(2)], [0.6, 0.4], atol=1e-5)
    keep = da.supported(0.1)
    assert keep.dtype == bool and np.array_equal(keep, side == 0)
    assert da.supported(0.0).all()
    rw = ota.da.Transport(epsilon=0.1, tol=1e-6).fit(xs, xt, ys, target_proportions=[0.6, 0.4], proportions="reweight")
    assert rw.supported(0.9).all() and np.allclose(rw.row_mass_, ref, atol=1e-5)


def test_supported_uses_the_source_weights_of_the_constraints():
    from otalign import constraints as C

    xs, ys, _, xt, _ = _subclusters(1)
    a = np.where(ys == 0, 0.04, 0.01)
    da = ota.da.Transport(epsilon=0.1, constraints=C.balanced(torch.as_tensor(a), None), tol=1e-8).fit(xs, xt)
    assert np.allclose(np.asarray(da.reference_weights_), a) and np.allclose(da.row_mass_, a, atol=1e-6)
    assert da.supported(1.0 - 1e-4).all()
    plain = ota.da.Transport(epsilon=0.1).fit(torch.as_tensor(xs), torch.as_tensor(xt))
    assert isinstance(plain.row_mass_, torch.Tensor) and isinstance(plain.supported(), torch.Tensor)
    assert np.allclose(np.asarray(plain.reference_weights_), 1 / 40)


def test_numpy_in_numpy_out():
    xs, ys, xt, _, props = _domains()
    da = ota.da.Transport(epsilon=0.5).fit(xs, xt, ys, target_proportions=props)
    assert isinstance(da.transform(), np.ndarray) and isinstance(da.predict(), np.ndarray)
    t = ota.da.Transport(epsilon=0.5).fit(torch.as_tensor(xs), torch.as_tensor(xt), ys, target_proportions=props)
    assert isinstance(t.transform(), torch.Tensor) and isinstance(t.predict(), torch.Tensor)


def test_bad_row_rho_and_min_share():
    xs, ys, xt, _, props = _domains()
    with pytest.raises(ValueError, match="row_rho=0"):
        ota.da.Transport(epsilon=0.5).fit(xs, xt, ys, target_proportions=props, row_rho=0)
    with pytest.raises(ValueError, match="estimate_rho=-1"):
        ota.da.Transport(epsilon=0.5).fit(xs, xt, ys, target_proportions="estimate", estimate_rho=-1)
    da = ota.da.Transport(epsilon=0.5).fit(xs, xt, ys, target_proportions=props)
    for bad in (-0.1, 1.5, "0.1", True):
        with pytest.raises(ValueError, match="min_share"):
            da.supported(bad)
    with pytest.raises(ValueError, match="not fitted"):
        ota.da.Transport(epsilon=0.5).supported()
