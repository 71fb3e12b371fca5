"""The contrastive layer: presets against references written here, the paper's theorem, limits,
targets, symmetry, gradients, numerics, validation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otalign import constraints as C
from otalign import contrastive as cl


def views(B=6, D=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(B, D, dtype=dtype, generator=g)
    z_b = z_a + 0.7 * torch.randn(B, D, dtype=dtype, generator=g)
    return z_a, z_b


# ---------------------------------------------------------------- references (independent code)
def ntxent_reference(z_a, z_b, temperature):
    """SimCLR Algorithm 1, written as loops over anchors (NumPy)."""
    z = np.concatenate([z_a.numpy(), z_b.numpy()])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, B = len(z), len(z_a)
    total = 0.0
    for i in range(n):
        k = (i + B) % n
        sims = np.array([z[i] @ z[j] / temperature for j in range(n)])
        denom = sum(np.exp(sims[j]) for j in range(n) if j != i)
        total += -(sims[k] - np.log(denom))
    return total / n


def scalings_reference(z_a, z_b, eps, n_iter, tau=1.0):
    """``K = exp(cos/eps)`` with a zero diagonal, the column scaling v after n_iter (possibly
    KL-relaxed) Sinkhorn iterations from v = 1, and the row scaling u of the last row step
    (``1 / (K 1)`` for n_iter = 0) (NumPy, kernel domain)."""
    z = np.concatenate([z_a.numpy(), z_b.numpy()])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    K = np.exp(z @ z.T / eps)
    np.fill_diagonal(K, 0.0)
    v = np.ones(len(z))
    u = 1.0 / K.sum(1)
    for _ in range(n_iter):
        u = (1.0 / (K @ v)) ** tau
        v = (1.0 / (K.T @ u)) ** tau
    return K, v, u


def terms_reference(K, v, q=0.6, lam=0.01, u=None):
    """Mean KL and robust terms; the robust negative term is ``(lam / u_i)^q / q`` when ``u`` is
    given (the scaling form), else ``(lam sum_j K_ij v_j)^q / q`` (the partition form)."""
    n = len(K)
    t = (np.arange(n) + n // 2) % n
    Kv = K * v[None, :]
    pos = Kv[np.arange(n), t]
    row = Kv.sum(1)
    kl = -np.log(pos / row)
    neg = lam * row if u is None else lam / u
    robust = -pos ** q / q + neg ** q / q
    return kl.mean(), robust.mean()


# ---------------------------------------------------------------- exact identities
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("B", [1, 2, 7])
def test_infonce_equals_ntxent(temperature, B):
    z_a, z_b = views(B=B, seed=B)
    got = cl.InfoNCE(temperature)(z_a, z_b)
    assert got.dim() == 0
    assert float(got) == pytest.approx(ntxent_reference(z_a, z_b, temperature), abs=1e-10)


def test_rince_formula_and_its_q_to_zero_limit():
    z_a, z_b = views()
    K, v, u = scalings_reference(z_a, z_b, 0.4, 0)
    expected = terms_reference(K, v, 0.6, 0.05)[1]
    assert terms_reference(K, v, 0.6, 0.05, u)[1] == pytest.approx(expected, abs=1e-12)  # one row step: forms agree
    assert float(cl.RINCE(0.4, q=0.6, lam=0.05)(z_a, z_b)) == pytest.approx(expected, abs=1e-10)
    q = 1e-7
    rince = float(cl.RINCE(0.4, q=q, lam=0.05)(z_a, z_b))
    assert rince == pytest.approx(float(cl.InfoNCE(0.4)(z_a, z_b)) + math.log(0.05), abs=1e-5)


@pytest.mark.parametrize("n_iter", [1, 3, 10])
def test_presets_match_references(n_iter):
    z_a, z_b = views(B=5, seed=n_iter)
    eps, q, lam = 0.3, 0.6, 0.01
    K, v, u = scalings_reference(z_a, z_b, eps, n_iter)
    kl, partition = terms_reference(K, v, q, lam)
    _, scaling = terms_reference(K, v, q, lam, u)
    assert float(cl.GCAInfoNCE(eps, n_iter)(z_a, z_b)) == pytest.approx(kl, abs=1e-10)
    assert float(cl.GCARINCE(eps, n_iter, q=q, lam=lam, robust="partition")(z_a, z_b)) == pytest.approx(partition, abs=1e-10)
    assert float(cl.GCARINCE(eps, n_iter, q=q, lam=lam, robust="scaling")(z_a, z_b)) == pytest.approx(scaling, abs=1e-10)
    rho = 0.7
    K, v, u = scalings_reference(z_a, z_b, eps, n_iter, tau=rho / (rho + eps))
    kl, partition = terms_reference(K, v, q, lam)
    _, scaling = terms_reference(K, v, q, lam, u)
    got = cl.GCAUOT(eps, n_iter, rho=rho, lam=lam, q=q, r1=0.8, r2=0.3, robust="partition")(z_a, z_b)
    assert float(got) == pytest.approx(0.8 * kl + 0.3 * partition, abs=1e-10)
    got = cl.GCAUOT(eps, n_iter, rho=rho, lam=lam, q=q, r1=0.8, r2=0.3, robust="scaling")(z_a, z_b)
    assert float(got) == pytest.approx(0.8 * kl + 0.3 * scaling, abs=1e-10)
    assert abs(scaling - partition) > 1e-3  # the forms differ for finite rho


def test_gca_infonce_never_exceeds_infonce():
    """The paper's theorem: KL(I || P) is non-increasing along the Bregman projections."""
    for seed in range(4):
        for eps in (0.1, 0.5):
            z_a, z_b = views(B=8, D=3, seed=seed)
            base = float(cl.InfoNCE(eps)(z_a, z_b))
            previous = base
            for n_iter in range(1, 26):
                value = float(cl.GCAInfoNCE(eps, n_iter)(z_a, z_b))
                assert value <= base + 1e-12
                assert value <= previous + 1e-12  # monotone in the number of iterations
                previous = value


@pytest.mark.parametrize("robust", ["scaling", "partition"])
def test_gca_uot_limits_of_rho(robust):
    z_a, z_b = views(seed=3)
    eps, n_iter, r1, r2, q, lam = 0.4, 6, 0.7, 0.2, 0.6, 0.01
    hard = r1 * cl.GCAInfoNCE(eps, n_iter)(z_a, z_b) + r2 * cl.GCARINCE(eps, n_iter, robust=robust)(z_a, z_b)
    big = cl.GCAUOT(eps, n_iter, rho=1e9, r1=r1, r2=r2, robust=robust)(z_a, z_b)
    small = cl.GCAUOT(eps, n_iter, rho=1e-9, r1=r1, r2=r2, robust=robust)(z_a, z_b)
    assert float(big) == pytest.approx(float(hard), abs=1e-6)
    if robust == "partition":  # rho -> 0: no projection, the plan is the kernel
        soft = r1 * cl.InfoNCE(eps)(z_a, z_b) + r2 * cl.RINCE(eps)(z_a, z_b)
    else:  # u -> 1: the negative term tends to the constant lam^q / q
        K, v, _ = scalings_reference(z_a, z_b, eps, 0)
        pos = K[np.arange(12), (np.arange(12) + 6) % 12]
        soft = r1 * float(cl.InfoNCE(eps)(z_a, z_b)) + r2 * float(np.mean(-pos ** q / q) + lam ** q / q)
    assert float(small) == pytest.approx(float(soft), abs=1e-6)
    exact = cl.GCAUOT(eps, n_iter, rho=math.inf, r1=r1, r2=r2, robust=robust)(z_a, z_b)
    assert float(exact) == pytest.approx(float(hard), abs=1e-12)


# ---------------------------------------------------------------- targets
def test_domain_target_matrix_and_its_reduction_to_paired_views():
    d = torch.tensor([0, 0, 1])
    T = cl.DomainTarget(alpha=0.5, beta=0.25).matrix(3, "joint", domains=d, dtype=torch.float64)
    # row 0 (sample 0, view a): partner 3 -> 1, itself 0, same domain {1, 4} -> 0.5, other {2, 5} -> 0.25
    expected = torch.tensor([0.0, 0.5, 0.25, 1.0, 0.5, 0.25], dtype=torch.float64)
    torch.testing.assert_close(T[0], expected / expected.sum())
    torch.testing.assert_close(T.sum(1), torch.ones(6, dtype=torch.float64))
    z_a, z_b = views(B=6, seed=9)
    dom = torch.tensor([0, 1, 2, 0, 1, 2])
    for loss in (cl.GCAInfoNCE, cl.GCARINCE, cl.GCAUOT):
        plain = loss(0.5, 4)(z_a, z_b)
        zero = loss(0.5, 4, target=cl.DomainTarget(0.0, 0.0))(z_a, z_b, domains=dom)
        assert float(zero) == pytest.approx(float(plain), abs=1e-12)


def test_label_target_and_custom_target():
    z_a, z_b = views(B=5, seed=2)
    unique = torch.arange(5)
    assert float(cl.GCALoss(target=cl.LabelTarget(), n_iter=3)(z_a, z_b, labels=unique)) == pytest.approx(
        float(cl.GCAInfoNCE(0.5, 3)(z_a, z_b)), abs=1e-12)
    labels = torch.tensor([0, 1, 0, 1, 2])
    T = cl.LabelTarget().matrix(5, "joint", labels=labels, dtype=torch.float64)
    assert float(T[0, 2]) == pytest.approx(1 / 3) and float(T[0, 0]) == 0 and float(T[4, 9]) == 1.0
    custom = cl.CustomTarget(cl.PairedViews().matrix(5, "joint", dtype=torch.float64) * 3)
    assert float(cl.GCALoss(target=custom, n_iter=2)(z_a, z_b)) == pytest.approx(float(cl.GCAInfoNCE(0.5, 2)(z_a, z_b)), abs=1e-12)
    with pytest.raises(ValueError, match="expected \\(6, 6\\) for a batch of 3"):
        cl.GCALoss(target=custom)(z_a[:3], z_b[:3])
    with pytest.raises(ValueError, match="domains is None"):
        cl.GCALoss(target=cl.DomainTarget(0.5, 0.1))(z_a, z_b)
    with pytest.raises(ValueError, match="domains has shape"):
        cl.GCALoss(target=cl.DomainTarget(0.5, 0.1))(z_a, z_b, domains=torch.zeros(4, dtype=torch.long))


def test_a_solver_constraint_set_plugs_in_block_masses_between_domains():
    z_a, z_b = views(B=6, seed=4)
    dom = torch.tensor([0, 0, 0, 1, 1, 1])

    def within_domains(n, *, device=None, dtype=torch.float32, domains=None, **_):
        groups = torch.cat([domains, domains])
        ones = torch.ones(n, dtype=dtype, device=device)
        counts = torch.bincount(groups, minlength=2).to(dtype)
        mass = 0.9 * torch.diag(counts) + 0.1 * torch.outer(counts, counts) / counts.sum()  # as in the docs
        return C.balanced(ones, ones) + [C.BlockMass(row_groups=groups, col_groups=groups, mass=mass)]

    loss = cl.GCALoss(within_domains, epsilon=0.5, n_iter=50)
    comps = loss.forward_components(z_a, z_b, domains=dom)
    assert torch.isfinite(comps.loss) and float(comps.marginal_error) < 1e-6
    logits, res = cl.plan_logits(cl.views_cost(z_a, z_b), epsilon=0.5, n_iter=50, constraints=within_domains, domains=dom)
    P = res.plan
    g = torch.cat([dom, dom])
    within = float(P[g[:, None] == g[None, :]].sum())
    assert within == pytest.approx(0.9 * 12 + 0.1 * (36 + 36) / 12, abs=1e-6)
    relaxed = cl.GCALoss(C.unbalanced(0.5), epsilon=0.5, n_iter=5)(z_a, z_b)  # a static set works too
    assert torch.isfinite(relaxed)


# ---------------------------------------------------------------- structure
PRESETS = [
    lambda eps=0.3, **kw: cl.InfoNCE(eps, **kw),
    lambda eps=0.3, **kw: cl.RINCE(eps, **kw),
    lambda eps=0.3, **kw: cl.GCAInfoNCE(eps, 5, **kw),
    lambda eps=0.3, **kw: cl.GCARINCE(eps, 5, **kw),
    lambda eps=0.3, **kw: cl.GCAUOT(eps, 5, **kw),
    lambda eps=0.3, **kw: cl.GCAUOT(eps, 5, robust="partition", **kw),
    lambda eps=0.3, **kw: cl.IOTUni(eps, 3, **kw),
]


@pytest.mark.parametrize("make", PRESETS)
@pytest.mark.parametrize("layout", ["joint", "cross"])
def test_symmetry_and_batch_permutation_invariance(make, layout):
    z_a, z_b = views(B=7, seed=5)
    loss = make(layout=layout)
    value = loss(z_a, z_b)
    assert float(loss(z_b, z_a)) == pytest.approx(float(value), abs=1e-12)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert float(loss(z_a[perm], z_b[perm])) == pytest.approx(float(value), abs=1e-12)
    assert float(loss(3.0 * z_a, 0.5 * z_b)) == pytest.approx(float(value), abs=1e-12)  # normalised inside


def test_cross_layout_infonce_is_the_symmetric_clip_loss():
    z_a, z_b = views(B=6, seed=8)
    za, zb = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    logits = za @ zb.T / 0.2
    tgt = torch.arange(6)
    clip = (F.cross_entropy(logits, tgt) + F.cross_entropy(logits.T, tgt)) / 2
    assert float(cl.InfoNCE(0.2, layout="cross")(z_a, z_b)) == pytest.approx(float(clip), abs=1e-12)


@pytest.mark.parametrize("make", PRESETS)
def test_gradcheck_float64(make):
    z_a, z_b = views(B=3, D=3, seed=6)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    loss = make()
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (z_a, z_b), atol=1e-7, rtol=1e-5)
    d = torch.tensor([0, 1, 0])
    dom = make(target=cl.DomainTarget(0.7, 0.2))
    assert torch.autograd.gradcheck(lambda a, b: dom(a, b, domains=d), (z_a, z_b), atol=1e-7, rtol=1e-5)


def test_detached_scalings_keep_the_value_and_change_the_gradient():
    z_a, z_b = views(seed=7)
    z_a.requires_grad_(True)
    unrolled = cl.GCAInfoNCE(0.3, 5)(z_a, z_b)
    detached = cl.GCALoss(epsilon=0.3, n_iter=5, detach_scalings=True)(z_a, z_b)
    assert float(unrolled) == pytest.approx(float(detached), abs=1e-12)
    g1, = torch.autograd.grad(unrolled, z_a)
    g2, = torch.autograd.grad(detached, z_a)
    assert float((g1 - g2).abs().max()) > 1e-6


# ---------------------------------------------------------------- numerics and validation
@pytest.mark.parametrize("make", PRESETS)
def test_no_nan_at_small_epsilon_in_float32(make):
    g = torch.Generator().manual_seed(0)
    z_a = torch.randn(256, 64, generator=g, requires_grad=True)
    z_b = (z_a.detach() + 0.1 * torch.randn(256, 64, generator=g)).requires_grad_(True)
    loss = make(0.02)  # the same preset at a small temperature
    value = loss(z_a, z_b)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.isfinite(z_a.grad).all() and torch.isfinite(z_b.grad).all()


def test_half_precision_inputs_and_autocast_are_computed_in_float32():
    z_a, z_b = views(B=16, D=8, seed=1, dtype=torch.float32)
    ref = cl.GCAUOT(0.2, 5)(z_a, z_b)
    for dtype in (torch.float16, torch.bfloat16):
        got = cl.GCAUOT(0.2, 5)(z_a.to(dtype), z_b.to(dtype))
        assert got.dtype == torch.float32 and torch.isfinite(got)
        assert float(got) == pytest.approx(float(ref), abs=5e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cl.GCAUOT(0.2, 5)(z_a, z_b)
    assert got.dtype == torch.float32 and float(got) == pytest.approx(float(ref), abs=1e-5)


def test_forward_components():
    z_a, z_b = views(B=8, seed=3)
    comps = cl.GCAUOT(0.4, 8, r1=1.0, r2=0.5).forward_components(z_a, z_b)
    assert set(comps.terms) == {"kl", "robust"}
    assert float(comps.loss) == pytest.approx(float(comps.terms["kl"] + comps.terms["robust"]), abs=1e-12)
    assert comps.per_anchor.shape == (16,)
    tight = cl.GCAInfoNCE(0.5, 200).forward_components(z_a, z_b)
    loose = cl.InfoNCE(0.5).forward_components(z_a, z_b)
    assert float(tight.marginal_error) < 1e-8 < float(loose.marginal_error)
    assert 0 < float(tight.plan_entropy) <= math.log(15) + 1e-12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=0.0), "epsilon"),
        (dict(n_iter=-1), "n_iter"),
        (dict(layout="diagonal"), "layout"),
        (dict(target="paired"), "target"),
        (dict(divergence="kl"), "divergence"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cl.GCALoss(**kwargs)


def test_bad_calls():
    z_a, z_b = views()
    with pytest.raises(ValueError, match="equal shapes"):
        cl.InfoNCE()(z_a, z_b[:3])
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        cl.InfoNCE()(z_a[0], z_b[0])
    with pytest.raises(ValueError, match="q="):
        cl.RINCE(q=1.5)
    with pytest.raises(ValueError, match="lam="):
        cl.GCAUOT(lam=0.0)
    with pytest.raises(ValueError, match="alpha"):
        cl.DomainTarget(alpha=-1.0, beta=0.0)


def test_losses_are_built_on_the_solver_layer(monkeypatch):
    calls = []
    real = cl.functional.solve

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cl.functional, "solve", spy)
    z_a, z_b = views()
    cl.GCAUOT(0.3, 4, rho=0.5)(z_a, z_b)
    assert calls and calls[0]["max_iter"] == 4 and calls[0]["entropy"] == "shannon"
