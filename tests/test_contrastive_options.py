"""Options of the contrastive losses (issue 15): ``cost=`` (presets and a caller's callable),
``readout=``, ``robust=``, ``lam_scale=``, IOT, and their bad values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otalign import constraints as C
from otalign import contrastive as cl


def views(B=5, D=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(B, D, dtype=dtype, generator=g)
    z_b = z_a + 0.6 * torch.randn(B, D, dtype=dtype, generator=g)
    return z_a, z_b


def neg_cosine(x, y):  # written as a user would: the default cost
    return -(F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T)


MAKERS = [
    lambda **kw: cl.InfoNCE(0.3, **kw),
    lambda **kw: cl.RINCE(0.3, **kw),
    lambda **kw: cl.GCAInfoNCE(0.3, 4, **kw),
    lambda **kw: cl.GCARINCE(0.3, 4, **kw),
    lambda **kw: cl.GCAUOT(0.3, 4, **kw),
    lambda **kw: cl.IOTUni(0.3, 3, **kw),
]


# ---------------------------------------------------------------- cost=
@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("layout", ["joint", "cross"])
def test_a_callable_equal_to_the_default_cost_reproduces_the_default_loss_exactly(make, layout):
    z_a, z_b = views(seed=1)
    z_a.requires_grad_(True)
    default = make(layout=layout)(z_a, z_b)
    custom = make(layout=layout, cost=neg_cosine)(z_a, z_b)
    assert torch.equal(default, custom)
    g1, = torch.autograd.grad(default, z_a)
    g2, = torch.autograd.grad(custom, z_a)
    torch.testing.assert_close(g1, g2, rtol=1e-13, atol=1e-15)
    for name, fn in cl.COST_PRESETS.items():  # every preset is its published callable
        assert torch.equal(make(layout=layout, cost=name)(z_a, z_b), make(layout=layout, cost=fn)(z_a, z_b))


def test_a_joint_cost_callable_gives_the_same_loss():
    z_a, z_b = views(seed=2)

    def joint(a, b):  # (2B, 2B) over [z_a; z_b]
        z = F.normalize(torch.cat([a, b]), dim=-1)
        return -(z @ z.T)

    for make in MAKERS:
        assert float(make(cost=joint)(z_a, z_b)) == pytest.approx(float(make()(z_a, z_b)), abs=1e-12)

    def joint_with_inf_diagonal(a, b):  # self-pairs are never used: anything goes there
        return joint(a, b) + torch.diag(torch.full((2 * len(a),), math.inf, dtype=a.dtype))

    assert float(cl.GCAUOT(0.3, 4, cost=joint_with_inf_diagonal)(z_a, z_b)) == pytest.approx(
        float(cl.GCAUOT(0.3, 4)(z_a, z_b)), abs=1e-12)


def test_a_view_aware_joint_cost_is_used_as_given():
    """A joint cost can treat within-view pairs differently: here it doubles them."""
    z_a, z_b = views(seed=3)
    B = len(z_a)

    def views_apart(a, b):
        C_ = torch.cat([torch.cat([2 * neg_cosine(a, a), neg_cosine(a, b)], 1),
                        torch.cat([neg_cosine(b, a), 2 * neg_cosine(b, b)], 1)])
        return C_

    got = cl.InfoNCE(0.4, cost=views_apart)(z_a, z_b)
    z = F.normalize(torch.cat([z_a, z_b]), dim=-1)
    S = z @ z.T
    S[:B, :B] *= 2
    S[B:, B:] *= 2
    logits = (S / 0.4).masked_fill(torch.eye(2 * B, dtype=torch.bool), -math.inf)
    t = torch.cat([torch.arange(B) + B, torch.arange(B)])
    assert float(got) == pytest.approx(float(F.cross_entropy(logits, t)), abs=1e-12)


def test_sqeuclidean_preset_is_the_squared_distance_and_passes_gradcheck():
    z_a, z_b = views(B=3, D=3, seed=4)
    C_ = cl.views_cost(z_a, z_b, "joint", "sqeuclidean")
    z = torch.cat([z_a, z_b])
    for i in range(6):
        for j in range(6):
            assert float(C_[i, j]) == pytest.approx(float(((z[i] - z[j]) ** 2).sum()), abs=1e-12)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    for loss in (cl.GCAUOT(2.0, 4, cost="sqeuclidean"), cl.GCAInfoNCE(1.5, 3, cost="sqeuclidean", readout="raw"),
                 cl.RINCE(1.0, cost="sqeuclidean"), cl.IOTUni(2.0, 2, cost="sqeuclidean")):
        assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (z_a, z_b), atol=1e-7, rtol=1e-5)
    assert float(cl.InfoNCE(1.0, cost="sqeuclidean")(3 * z_a, 3 * z_b)) != pytest.approx(
        float(cl.InfoNCE(1.0, cost="sqeuclidean")(z_a, z_b)))  # not normalised, unlike the cosines


def test_gradients_reach_the_parameters_of_a_callable_cost():
    """A learned metric ``C = -(a W)(b W)^T``: gradcheck through the plan into ``W``."""
    z_a, z_b = views(B=3, D=3, seed=5)
    W0 = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(3, 3, dtype=torch.float64,
                                                               generator=torch.Generator().manual_seed(0))

    def loss_of(W):
        return cl.GCAUOT(0.5, 3, cost=lambda a, b: -(a @ W) @ (b @ W).T)(z_a, z_b)

    assert torch.autograd.gradcheck(loss_of, (W0.clone().requires_grad_(True),), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (lambda a, b: torch.zeros(len(a), len(a) + 1, dtype=a.dtype), r"cost returned shape \(5, 6\)"),
    (lambda a, b: torch.zeros(3 * len(a), 3 * len(a), dtype=a.dtype), r"cost returned shape \(15, 15\)"),
    (lambda a, b: neg_cosine(a, b).numpy(), "cost returned ndarray"),
    (lambda a, b: neg_cosine(a, b).long(), "cost returned"),
    (lambda a, b: neg_cosine(a, b) / 0.0, "cost returned a non-finite entry"),
    (lambda a, b: neg_cosine(a, b).masked_fill(torch.eye(len(a), dtype=torch.bool), math.nan),
     "cost returned a non-finite entry"),  # the cross-view diagonal holds the positives
])
def test_bad_cost_callables_raise_value_errors_naming_cost(bad, match):
    z_a, z_b = views(seed=6)
    with pytest.raises(ValueError, match=match):
        cl.GCAUOT(0.5, 2, cost=bad)(z_a, z_b)


def test_a_joint_shaped_cost_in_the_cross_layout_is_refused():
    z_a, z_b = views(seed=7)

    def joint(a, b):
        z = torch.cat([a, b])
        return neg_cosine(z, z)

    with pytest.raises(ValueError, match=r"cost returned shape \(10, 10\); expected \(5, 5\)"):
        cl.InfoNCE(cost=joint, layout="cross")(z_a, z_b)


# ---------------------------------------------------------------- readout=, robust=, lam_scale=
def test_raw_and_renormalised_readouts_differ_and_agree_where_they_should():
    z_a, z_b = views(seed=8)
    renorm = float(cl.GCAInfoNCE(0.2, 1)(z_a, z_b))
    raw = float(cl.GCAInfoNCE(0.2, 1, readout="raw")(z_a, z_b))
    assert abs(renorm - raw) > 1e-3
    # converged balanced plan: rows and columns sum to 1, so renormalising the rows changes nothing
    assert float(cl.GCAInfoNCE(0.5, 400, readout="raw")(z_a, z_b)) == pytest.approx(
        float(cl.GCAInfoNCE(0.5, 400)(z_a, z_b)), abs=1e-9)
    # n_iter = 0: no solver step, both read InfoNCE's row projection
    assert float(cl.GCALoss(n_iter=0, readout="raw", epsilon=0.5)(z_a, z_b)) == pytest.approx(
        float(cl.InfoNCE(0.5)(z_a, z_b)), abs=1e-12)
    # the raw read-out of a relaxed plan (no exact column step) uses the plan as computed
    res_loss = cl.GCAUOT(0.5, 5, rho=0.4, r2=0.0, readout="raw")
    view, res = cl.learned_plan(cl.views_cost(z_a, z_b), epsilon=0.5, n_iter=5, constraints=cl.unit_marginals(0.4),
                                readout="raw")
    t = torch.cat([torch.arange(5) + 5, torch.arange(5)])
    assert float(res_loss(z_a, z_b)) == pytest.approx(float(-res.log_plan[torch.arange(10), t].mean()), abs=1e-12)


def test_robust_forms_agree_for_one_row_step_and_in_the_balanced_limit_differ_otherwise():
    z_a, z_b = views(seed=9)
    a = cl.GCALoss(n_iter=0, divergence=cl.Robust(form="scaling"))(z_a, z_b)
    b = cl.GCALoss(n_iter=0, divergence=cl.Robust(form="partition"))(z_a, z_b)
    assert float(a) == pytest.approx(float(b), abs=1e-12)
    # balanced: the forms differ by one half-step (u from v^(T-1), the partition from v^(T)),
    # which vanishes as the scalings converge
    far = [float(cl.GCARINCE(0.5, n, robust=f)(z_a, z_b)) for n in (2, 300) for f in ("scaling", "partition")]
    assert abs(far[0] - far[1]) > 1e-6 and far[2] == pytest.approx(far[3], abs=1e-9)
    # relaxed: the partition enters the scaling form with the exponent q rho / (rho + eps)
    s = float(cl.GCAUOT(0.5, 300, rho=0.2, robust="scaling", r1=0.0)(z_a, z_b))
    p = float(cl.GCAUOT(0.5, 300, rho=0.2, robust="partition", r1=0.0)(z_a, z_b))
    assert abs(s - p) > 1e-2


def test_option_values_and_combinations_are_checked():
    with pytest.raises(ValueError, match="robust='rows'"):
        cl.GCARINCE(robust="rows")
    with pytest.raises(ValueError, match="readout='rows'"):
        cl.IOT(readout="rows")
    with pytest.raises(ValueError, match="lam_scale='N'"):
        cl.RINCE(lam_scale="N")
    with pytest.raises(ValueError, match="lam_scale='authors' needs the unit-marginal constraints"):
        cl.GCALoss(C.unbalanced(0.5), divergence=cl.Robust(lam_scale="authors"))
    with pytest.raises(ValueError, match="cost=3"):
        cl.GCALoss(cost=3)
    with pytest.raises(ValueError, match="config has the key 'relax'"):
        cl.GCAUOT.from_authors_config({"epsilon": 0.5, "relax": 0.2})
    with pytest.raises(ValueError, match="config has no 'epsilon'"):
        cl.GCAUOT.from_authors_config({"lam": 0.01})
    with pytest.raises(ValueError, match="q=2"):
        cl.GCAUOT.from_authors_config({"epsilon": 0.5, "q": 2})


def test_forward_components_carry_every_term_and_iot_uni_has_the_uniformity_term():
    z_a, z_b = views(seed=10)
    comps = cl.IOTUni(0.4, 3, lambda_p=0.3).forward_components(z_a, z_b)
    assert set(comps.terms) == {"kl", "uniformity"}
    assert float(comps.loss) == pytest.approx(float(comps.terms["kl"] + comps.terms["uniformity"]), abs=1e-12)
    assert float(comps.terms["uniformity"]) > 0
    # the uniform plan has no uniformity penalty: equal cosines everywhere
    same = torch.ones(4, 3, dtype=torch.float64)
    uni = cl.IOTUni(0.4, 3, lambda_p=1.0).forward_components(same, same)
    assert float(uni.terms["uniformity"]) == pytest.approx(0.0, abs=1e-12)
    assert float(uni.terms["kl"]) == pytest.approx(math.log(7), abs=1e-12)


def test_losses_keep_the_inputs_float64_and_return_float32_otherwise():
    z_a, z_b = views(seed=11)
    for make in MAKERS:
        assert make()(z_a, z_b).dtype == torch.float64
        assert make()(z_a.float(), z_b.float()).dtype == torch.float32
        assert make()(z_a.half(), z_b.half()).dtype == torch.float32


def test_the_default_robust_form_is_the_documented_one():
    assert cl.DEFAULT_ROBUST in ("scaling", "partition")
    assert cl.GCAUOT().divergence.parts()[1][1].form == cl.DEFAULT_ROBUST
    assert cl.GCARINCE().divergence.form == cl.DEFAULT_ROBUST
    assert np.isclose(cl.GCAUOT(r1=0.5).divergence.parts()[0][0], 0.5)
