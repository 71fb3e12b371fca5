"""Numerics and validation of the contrastive losses (issue 10, items 13 and 14; issue 15):
float32 follows float64 down to epsilon = 1e-3, saturation with the right sign, never NaN, and
every hyper-parameter checked at construction. Regression tests plus hypothesis properties."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otalign import contrastive as cl
from otalign.contrastive.targets import TargetPlan, partner_index

F32_MAX = float(torch.finfo(torch.float32).max)
F32_TINY = float(torch.finfo(torch.float32).tiny)


def close_views(B, D, noise, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(B, D, generator=g)
    z_b = z_a + noise * torch.randn(B, D, generator=g)
    return z_a.to(dtype), z_b.to(dtype)


def magnitude(loss, z_a, z_b):
    """The size of the loss's summands in float64 (its value when nothing cancels): ``|w| mean_i
    |term_i|`` for the plain terms, and for a robust term ``(e^{q b} - e^{q a}) / q``, held as
    ``e^{q max(a, b)} x inner``, the size ``e^{q max(a, b)} / q`` of its larger summand. Rounding
    errors are relative to it, and gradients scale with it (times ``1 / epsilon``)."""
    z_a, z_b = z_a.double(), z_b.double()
    view, _ = cl.learned_plan(cl.views_cost(z_a, z_b, loss.layout, loss.cost), epsilon=loss.epsilon,
                              n_iter=loss.n_iter, constraints=loss.constraints, layout=loss.layout,
                              readout=loss.readout)
    B = z_a.shape[0]
    target = TargetPlan(lambda: loss.target.matrix(B, loss.layout, dtype=torch.float64),
                        partner_index(B, loss.layout) if loss.target.is_paired else None)
    total = 0.0
    for weight, divergence in loss.divergence.parts():
        for term in divergence.terms(view, target).values():
            for inner, log_scale in term.parts:
                if isinstance(divergence, cl.Robust):
                    total += abs(weight) * float(torch.exp(log_scale).mean()) / divergence.q
                else:
                    total += abs(weight) * float((torch.exp(log_scale) * inner).abs().mean())
    return total


def check_float32_follows_float64(loss, z_a, z_b, rel=1e-4):
    """The property of issue 15: never NaN; where the float64 value is representable in float32,
    the float32 value is finite and agrees to ``rel`` of the summands' size, and the gradient is
    finite wherever it is representable (summands / epsilon below 1e30); beyond float32's range,
    ``+-inf`` with the float64 value's sign."""
    a = z_a.float().clone().requires_grad_(True)
    b = z_b.float().clone().requires_grad_(True)
    v32 = loss(a, b)
    v64 = float(loss(z_a.double(), z_b.double()))
    assert v32.dtype == torch.float32
    assert not math.isnan(float(v32)) and not math.isnan(v64)
    if abs(v64) > 1.001 * F32_MAX:
        assert math.isinf(float(v32)) and np.sign(float(v32)) == np.sign(v64)
        return
    if abs(v64) > 0.999 * F32_MAX:
        return  # at the edge of the range either answer is right
    assert math.isfinite(float(v32))
    scale = magnitude(loss, z_a, z_b)
    if scale >= F32_TINY:  # below float32's normal range the summands themselves are not representable
        assert abs(float(v32) - v64) <= rel * scale, (float(v32), v64, scale)
    if scale / loss.epsilon < 1e30:  # the gradient is of order summands / epsilon
        v32.backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


# ---------------------------------------------------------------- issue 10, item 13 (regressions)
@pytest.mark.parametrize("epsilon", [1e-3, 5e-3])
@pytest.mark.parametrize("make", [
    lambda eps: cl.RINCE(eps),
    lambda eps: cl.GCARINCE(eps, 10),
    lambda eps: cl.GCAUOT(eps, 10),
])
def test_robust_losses_at_tiny_epsilon_are_never_nan(make, epsilon):
    """Was: NaN at 1e-3, inf at 5e-3 (float32), while InfoNCE stayed finite."""
    z_a, z_b = close_views(64, 32, 0.1, seed=0)
    loss = make(epsilon)
    value = float(loss(z_a, z_b))
    reference = float(loss(z_a.double(), z_b.double()))
    assert not math.isnan(value) and not math.isnan(reference)
    # exp(q cos / eps) with cos ~ 1: e^600 at 1e-3, e^120 at 5e-3 -- beyond float32, so -inf
    assert value == -math.inf and reference < -F32_MAX
    check_float32_follows_float64(loss, z_a, z_b)


@pytest.mark.parametrize("epsilon", [1e-3, 5e-3])
def test_robust_losses_at_tiny_epsilon_match_float64_where_representable(epsilon):
    """A small q keeps e^(q / eps) within float32: then float32 = float64 to 1e-4."""
    z_a, z_b = close_views(32, 16, 0.5, seed=1)
    q = 20 * epsilon  # q / eps = 20
    for loss in (cl.RINCE(epsilon, q=q, lam=0.5), cl.GCARINCE(epsilon, 6, q=q, lam=0.5),
                 cl.GCAUOT(epsilon, 6, q=q, lam=0.5, robust="partition"), cl.GCAUOT(epsilon, 6, q=q, lam=0.5)):
        value = float(loss(z_a, z_b))
        reference = float(loss(z_a.double(), z_b.double()))
        assert math.isfinite(value) and value == pytest.approx(reference, rel=1e-4)
        check_float32_follows_float64(loss, z_a, z_b)


def test_saturation_keeps_the_sign_when_anchors_overflow_both_ways():
    """Anchors whose nearest candidate is a negative have a huge positive robust term, the others
    a huge negative one: the mean is inf - inf unless reduced in log space."""
    g = torch.Generator().manual_seed(3)
    z_a = torch.randn(16, 8, generator=g)
    z_b = torch.randn(16, 8, generator=g)  # unrelated views: the positive is rarely the nearest ...
    z_b[:8] = z_a[:8] + 0.01 * torch.randn(8, 8, generator=g)  # ... except for these 8 samples
    for q in (0.3, 0.9):
        loss = cl.RINCE(2e-3, q=q, lam=0.5)
        per_anchor = loss.forward_components(z_a.double(), z_b.double()).per_anchor
        assert (per_anchor > 0).any() and (per_anchor < 0).any()
        check_float32_follows_float64(loss, z_a, z_b)


def test_infonce_keeps_tiny_values_in_float32():
    """-log softmax of a dominant positive: logsumexp(l) - l_t would round a value of 1e-5 to
    ~1e-6 absolute (a relative error of ~0.1-1); the softplus form keeps it to 1e-4."""
    z_a, z_b = close_views(8, 16, 0.05, seed=4)
    for eps in (0.012, 0.05):
        for loss in (cl.InfoNCE(eps), cl.GCAInfoNCE(eps, 5), cl.GCAInfoNCE(eps, 5, readout="raw")):
            reference = float(loss(z_a.double(), z_b.double()))
            assert 0 < reference < 1e-4  # float32 resolves logits of size 1 / eps to ~1e-6 only
            assert float(loss(z_a, z_b)) == pytest.approx(reference, rel=1e-4)


def test_below_epsilon_001_float32_views_are_computed_in_float64():
    z_a, z_b = close_views(8, 6, 0.4, seed=5)
    loss = cl.GCAUOT(0.005, 4, q=0.05, lam=0.3)
    value = loss(z_a, z_b)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(loss(z_a.double(), z_b.double())), rel=1e-7)


def test_an_exactly_vanishing_robust_term_at_the_edge_of_the_range_is_zero_not_nan():
    """B = 1, identical views, lam = 1: the scaling form's two factors are equal (b - a = 0) while
    e^(q a) is e^100 (eps 1e-2: beyond float32) or e^1000 (eps 1e-3: beyond float64). The loss is
    0; exp(log(max)) rounds up to inf, so clamping there made inf * 0 = NaN (found by the
    property test below). (Its gradient, e^(q a) times the gradient of b - a, is 0 here only
    because b - a vanishes identically; computing it cancels two e^(q a)-sized contributions,
    which overflows unless e^(q a) / eps is representable: float64 at eps 1e-2.)"""
    z = torch.randn(1, 1, generator=torch.Generator().manual_seed(0))
    for eps in (1e-2, 1e-3):
        for dtype in (torch.float32, torch.float64):
            value = cl.GCARINCE(eps, 1, q=1.0, lam=1.0, robust="scaling")(z.to(dtype), z.to(dtype))
            assert float(value) == 0.0
    a, b = z.double().requires_grad_(True), z.double().clone().requires_grad_(True)
    cl.GCARINCE(1e-2, 1, q=1.0, lam=1.0, robust="scaling")(a, b).backward()
    assert float(a.grad) == 0.0 and float(b.grad) == 0.0


def test_gradients_are_finite_for_a_batch_of_one():
    """B = 1: each row's only candidate is the partner (logsumexp over nothing else)."""
    z_a, z_b = close_views(1, 4, 0.3, seed=6)
    for loss in (cl.InfoNCE(0.1), cl.GCAInfoNCE(0.1, 3), cl.GCAInfoNCE(0.1, 3, readout="raw"),
                 cl.RINCE(0.1, lam=1.0), cl.GCAUOT(0.1, 3), cl.IOTUni(0.1, 2)):
        a, b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
        value = loss(a, b)
        value.backward()
        assert math.isfinite(float(value)) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


LOSSES = {
    "infonce": lambda p: cl.InfoNCE(p["eps"]),
    "rince": lambda p: cl.RINCE(p["eps"], q=p["q"], lam=p["lam"], lam_scale=p["lam_scale"]),
    "gca-infonce": lambda p: cl.GCAInfoNCE(p["eps"], p["n_iter"], readout=p["readout"]),
    "gca-rince": lambda p: cl.GCARINCE(p["eps"], p["n_iter"], q=p["q"], lam=p["lam"], robust=p["robust"],
                                       lam_scale=p["lam_scale"]),
    "gca-uot": lambda p: cl.GCAUOT(p["eps"], p["n_iter"], rho=p["rho"], lam=p["lam"], q=p["q"], r1=p["r1"],
                                   r2=p["r2"], robust=p["robust"], lam_scale=p["lam_scale"], readout=p["readout"]),
    "iot-uni": lambda p: cl.IOTUni(p["eps"], p["n_iter"], lambda_p=p["lambda_p"], readout=p["readout"]),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(LOSSES)),
    log_eps=st.floats(-3.0, 0.0),
    q=st.floats(0.01, 1.0),
    log_lam=st.floats(-3.0, 2.0),
    rho=st.one_of(st.floats(0.01, 1000.0), st.just(math.inf)),
    r1=st.floats(0.0, 2.0),
    r2=st.floats(0.0, 2.0),
    lambda_p=st.floats(0.0, 2.0),
    n_iter=st.integers(1, 8),
    robust=st.sampled_from(["scaling", "partition"]),
    lam_scale=st.sampled_from(["otalign", "authors"]),
    readout=st.sampled_from(["renormalised", "raw"]),
    B=st.integers(1, 12),
    D=st.integers(1, 16),
    noise=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_property_float32_follows_float64_down_to_epsilon_1e_3(kind, log_eps, q, log_lam, rho, r1, r2, lambda_p,
                                                                 n_iter, robust, lam_scale, readout, B, D, noise, seed):
    params = dict(eps=10.0 ** log_eps, q=q, lam=10.0 ** log_lam, rho=rho, r1=r1, r2=r2, lambda_p=lambda_p,
                  n_iter=n_iter, robust=robust, lam_scale=lam_scale, readout=readout)
    loss = LOSSES[kind](params)
    z_a, z_b = close_views(B, D, noise, seed)
    check_float32_follows_float64(loss, z_a, z_b)


# ---------------------------------------------------------------- issue 10, item 14 (regressions)
@pytest.mark.parametrize("make, name", [
    (lambda: cl.GCAUOT(r1=math.nan), "r1"),
    (lambda: cl.GCAUOT(r2=math.inf), "r2"),
    (lambda: cl.GCAUOT(lam=1e300), "lam"),
    (lambda: cl.RINCE(lam=1e300), "lam"),
    (lambda: cl.GCARINCE(q=math.nan), "q"),
    (lambda: cl.GCAUOT(rho="25"), "rho"),
    (lambda: cl.GCAUOT(rho=(0.2, -1.0)), "rho"),
    (lambda: cl.GCAUOT(r2=-0.5), "r2"),
    (lambda: cl.InfoNCE(epsilon=math.nan), "epsilon"),
    (lambda: cl.InfoNCE(epsilon=1e-300), "epsilon"),
    (lambda: cl.GCAInfoNCE(n_iter=2**63), "n_iter"),
    (lambda: cl.GCAInfoNCE(n_iter=True), "n_iter"),
    (lambda: cl.IOTUni(lambda_p=math.inf), "lambda_p"),
    (lambda: cl.DomainTarget(alpha=math.nan, beta=0.1), "alpha"),
    (lambda: cl.KL() * math.nan, "weight"),
    (lambda: cl.GCALoss(detach_scalings="yes"), "detach_scalings"),
    (lambda: cl.GCALoss(readout="rows"), "readout"),
    (lambda: cl.GCAUOT(robust="partitions"), "robust"),
    (lambda: cl.GCAUOT(lam_scale="paper"), "lam_scale"),
    (lambda: cl.GCALoss(cost="euclidean"), "cost"),
    (lambda: cl.GCALoss(constraints=3.0), "constraints"),
])
def test_bad_hyper_parameters_raise_value_errors_naming_them(make, name):
    """Was: r1=nan, r2=inf, lam=1e300 accepted (loss nan / -inf / inf); rho='25' split into (2, 5)."""
    with pytest.raises(ValueError, match=rf"{name}"):
        make()


def test_numpy_scalars_are_accepted():
    z_a, z_b = close_views(5, 4, 0.5, seed=7, dtype=torch.float64)
    plain = cl.GCAUOT(0.3, 4, rho=0.7, lam=0.05, q=0.5, r1=0.8, r2=0.4)(z_a, z_b)
    numpy = cl.GCAUOT(np.float32(0.3), np.int64(4), rho=np.float64(0.7), lam=np.float32(0.05), q=np.float16(0.5),
                      r1=np.float64(0.8), r2=np.float32(0.4))(z_a, z_b)
    assert float(numpy) == pytest.approx(float(plain), rel=1e-6)  # np.float32(0.3) != 0.3 in float64
    cl.DomainTarget(np.float32(0.5), np.int32(0))
    cl.IOTUni(lambda_p=np.float64(0.1))


BAD_VALUES = [math.nan, math.inf, -math.inf, -1.0, 1e300, -1e300, "0.5", True, None, [0.5]]
PARAMETERS = {  # name -> (constructor of the loss with that value, values that are valid there)
    "epsilon": lambda v: cl.GCAUOT(epsilon=v),
    "n_iter": lambda v: cl.GCAUOT(n_iter=v),
    "q": lambda v: cl.GCAUOT(q=v),
    "lam": lambda v: cl.GCAUOT(lam=v),
    "rho": lambda v: cl.GCAUOT(rho=v),
    "r1": lambda v: cl.GCAUOT(r1=v),
    "r2": lambda v: cl.GCAUOT(r2=v),
    "lambda_p": lambda v: cl.IOTUni(lambda_p=v),
    "alpha": lambda v: cl.DomainTarget(alpha=v, beta=0.0),
    "beta": lambda v: cl.DomainTarget(alpha=0.0, beta=v),
}


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(sorted(PARAMETERS)), value=st.sampled_from(BAD_VALUES))
def test_property_every_hyper_parameter_rejects_non_numbers_and_out_of_range_values(name, value):
    if name == "rho" and value == math.inf:
        return  # rho = inf: hard marginals
    with pytest.raises(ValueError, match=rf"{name}=") as info:
        PARAMETERS[name](value)
    assert "expected" in str(info.value)
