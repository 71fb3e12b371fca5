"""otalign's options that reproduce the GCA authors' computations (github nerdslab/gca), held
against re-implementations written here from their definitions, in float64, values and
gradients to 1e-10.

The references follow the authors' code (kernel-domain Sinkhorn, their marginals, their
initialisation, their layouts: interleaved views in the CIFAR file, blocked views in the ImageNet
file and in the IOT baselines) except for two deliberate differences otalign keeps everywhere:
self-pairs are forbidden (``K_ii = 0``) instead of given the largest cost, and cosines are not
clamped at 1e-7 (paper.md section 4.14, items 1 and 2).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from otalign import contrastive as cl

TOL = 1e-10


def views(B=6, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(B, D, dtype=torch.float64, generator=g)
    z_b = z_a + 0.8 * torch.randn(B, D, dtype=torch.float64, generator=g)
    return z_a.requires_grad_(True), z_b.requires_grad_(True)


# ---------------------------------------------------------------- references (the authors' definitions)
def stacked(z_a, z_b, interleaved):
    """The authors' single (2B, D) batch: views interleaved (CIFAR file: rows 2k, 2k+1 are a
    pair) or blocked (ImageNet file and IOT: rows i, i+B)."""
    if interleaved:
        return torch.stack([z_a, z_b], dim=1).reshape(-1, z_a.shape[1])
    return torch.cat([z_a, z_b])


def partners(n, interleaved):
    i = torch.arange(n)
    return i ^ 1 if interleaved else (i + n // 2) % n


def kernel(z, eps, shift=1.0):
    """``exp(-(shift - cos) / eps)`` with the self-pairs forbidden (0)."""
    z = F.normalize(z, dim=1)
    K = torch.exp(-(shift - z @ z.T) / eps)
    return K * (1 - torch.eye(len(z), dtype=z.dtype))


def uot_scalings(K, iterations, f1, f2, a, v0):
    """The authors' relaxed Sinkhorn: ``u = (a / (K v))^f1``, ``v = (b / (K^T u))^f2``, from
    ``v = v0`` (their stabilisation branch never triggers at these sizes)."""
    v = v0
    u = None
    for _ in range(iterations):
        u = (a / (K @ v)) ** f1
        v = (a / (K.T @ u)) ** f2
    return u, v


def authors_gca_uot(z_a, z_b, eps, iterations, lam, q, relax1, relax2, r1, r2, scale="authors", shift=1.0):
    """gca_loss_cifar.gca_uot: ``mean_i [r1 CE_i + r2 (-(P_it / u_i)^q / q + (lam sum_j T_ij / u_j)^q / q)]``
    with ``P = diag(u) K diag(v)``. ``scale="authors"``: marginals and ``v`` started at ``1/N``
    (their code); ``"otalign"``: marginals and start 1. Returns (loss, robust mean, CE mean)."""
    z = stacked(z_a, z_b, interleaved=True)
    N = len(z)
    K = kernel(z, eps, shift)
    mass = 1.0 / N if scale == "authors" else 1.0
    ones = torch.full((N,), mass, dtype=z.dtype)
    f1 = 1.0 if math.isinf(relax1) else relax1 / (relax1 + eps)
    f2 = 1.0 if math.isinf(relax2) else relax2 / (relax2 + eps)
    u, v = uot_scalings(K, iterations, f1, f2, ones, ones)
    P = u[:, None] * K * v[None, :]
    t = partners(N, interleaved=True)
    ids = torch.arange(N) // 2
    T = ((ids[:, None] == ids[None, :]) & ~torch.eye(N, dtype=torch.bool)).to(z.dtype)
    rows = torch.arange(N)
    ce = -(torch.log(P[rows, t]) - torch.log(P.sum(1)))  # cross_entropy(P.log(), targets), one row each
    pos = P[rows, t] / u
    neg = lam * (T / u[None, :]).sum(1)
    robust = -pos ** q / q + neg ** q / q
    return (r2 * robust + r1 * ce).mean(), robust.mean(), ce.mean()


def authors_hs_rince(z_a, z_b, eps, lam, q):
    """gca_loss_cifar.hs_rince: one row step from ``u = v = 1/N``:
    ``mean_i [-(P_it / u1_i)^q / q + (lam sum_j T_ij / u1_j)^q / q]``, ``u1 = u / (K v)``."""
    z = stacked(z_a, z_b, interleaved=True)
    N = len(z)
    K = kernel(z, eps, shift=0.0)
    v = torch.full((N,), 1.0 / N, dtype=z.dtype)
    u1 = v / (K @ v)
    P = u1[:, None] * K * v[None, :]
    t = partners(N, interleaved=True)
    rows = torch.arange(N)
    return (-(P[rows, t] / u1) ** q / q + (lam / u1[t]) ** q / q).mean()


def authors_imagenet_gca_ince(z_a, z_b, eps, iterations):
    """gca_loss_imagenet.gca_ince: ``u = v = 1``, ``iterations`` Sinkhorn sweeps, then
    ``kl_div(log P, P_tgt, "batchmean") = -(1/N) sum_i log P_{i, t(i)}`` on the raw plan."""
    z = stacked(z_a, z_b, interleaved=False)
    N = len(z)
    K = kernel(z, eps)
    ones = torch.ones(N, dtype=z.dtype)
    u, v = uot_scalings(K, iterations, 1.0, 1.0, ones, ones)
    P = u[:, None] * K * v[None, :]
    return -torch.log(P[torch.arange(N), partners(N, interleaved=False)]).sum() / N


def authors_cifar_gca_ince(z_a, z_b, eps, iterations):
    """gca_loss_cifar.gca_ince: the same plan, read with ``cross_entropy(P.log(), targets)``
    (``log P`` formed as ``log u + log K + log v``, so that the forbidden diagonal is ``-inf``
    without a ``log 0`` in the graph)."""
    z = stacked(z_a, z_b, interleaved=True)
    N = len(z)
    K = kernel(z, eps)
    ones = torch.ones(N, dtype=z.dtype)
    u, v = uot_scalings(K, iterations, 1.0, 1.0, ones, ones)
    zn = F.normalize(z, dim=1)
    log_K = (-(1 - zn @ zn.T) / eps).masked_fill(torch.eye(N, dtype=torch.bool), -math.inf)
    logP = torch.log(u)[:, None] + log_K + torch.log(v)[None, :]
    t = partners(N, interleaved=True)
    return -(logP[torch.arange(N), t] - torch.logsumexp(logP, dim=1)).mean()


def authors_iot(z_a, z_b, eps, iterations, lambda_p=0.0):
    """gca_loss_imagenet.iot / iot_uni: ``iterations`` times row-normalise, column-normalise and
    transpose; ``-(1/2n) sum log`` of the entries on the +-n diagonals; ``iot_uni`` adds
    ``lambda_p * kl_div(log P, Q, "batchmean")``, ``Q`` = ``P`` with every off-diagonal entry
    replaced by their mean (gradients flow through the mean)."""
    z = stacked(z_a, z_b, interleaved=False)
    N = len(z)
    P = kernel(z, eps)
    for _ in range(iterations):
        P = P / P.sum(dim=1, keepdim=True)
        P = (P / P.sum(dim=0, keepdim=True)).T
    n = N // 2
    loss = -torch.log(torch.cat([P.diagonal(n), P.diagonal(-n)])).sum() / (2 * n)
    if lambda_p:
        off = ~torch.eye(N, dtype=torch.bool)
        m = P[off].mean()
        loss = loss + lambda_p * (m * (torch.log(m) - torch.log(P[off]))).sum() / N  # Q_ii = P_ii = 0: no term
    return loss


def assert_same(ours, ref, inputs):
    assert float(ours) == pytest.approx(float(ref), abs=TOL, rel=TOL)
    g_ours = torch.autograd.grad(ours, inputs, retain_graph=True)
    g_ref = torch.autograd.grad(ref, inputs, retain_graph=True)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


# ---------------------------------------------------------------- robust="scaling" and lam_scale
@pytest.mark.parametrize("rho", [0.2, 1.3, math.inf])
@pytest.mark.parametrize("scale", ["authors", "otalign"])
def test_scaling_form_is_the_authors_robust_term(rho, scale):
    z_a, z_b = views(seed=1)
    eps, n_iter, lam, q = 0.5, 6, 0.05, 0.8
    cost = "cosine_distance" if scale == "authors" else "cosine"
    ours = cl.GCAUOT(eps, n_iter, rho=rho, lam=lam, q=q, r1=0.0, r2=1.0, robust="scaling", lam_scale=scale, cost=cost)
    _, robust, _ = authors_gca_uot(z_a, z_b, eps, n_iter, lam, q, rho, rho, 1.0, 1.0, scale=scale,
                                   shift=1.0 if scale == "authors" else 0.0)
    assert_same(ours(z_a, z_b), robust, (z_a, z_b))


def test_lam_scale_authors_reproduces_their_cifar_gca_uot_from_their_config():
    """The whole loss of a config copied from config/simclr_cifar10.yaml (every key)."""
    yaml = {"backbone": "resnet18", "batch_size": 512, "epsilon": 0.5, "iterations": 10, "lam": 0.01, "q": 0.98,
            "relax_item1": 0.2, "relax_item2": 0.2, "r1": 1, "r2": 0.02, "learning_rate": 0.6, "gpus": 2,
            "seed": 42, "optimizer": "SGD", "projection_dim": 128, "max_epochs": 500}
    loss = cl.GCAUOT.from_authors_config(yaml)
    z_a, z_b = views(B=8, seed=2)
    ref, _, _ = authors_gca_uot(z_a, z_b, 0.5, 10, 0.01, 0.98, 0.2, 0.2, 1.0, 0.02)
    assert_same(loss(z_a, z_b), ref, (z_a, z_b))
    # asymmetric relaxations and r2 = 1 (the weights of the robust term matter then)
    loss = cl.GCAUOT.from_authors_config({"epsilon": 0.4, "iterations": 3, "lam": 0.2, "q": 0.6,
                                          "relax_items1": 0.5, "relax_items2": 2.0, "r1": 0.3, "r2": 1})
    ref, _, _ = authors_gca_uot(z_a, z_b, 0.4, 3, 0.2, 0.6, 0.5, 2.0, 0.3, 1.0)
    assert_same(loss(z_a, z_b), ref, (z_a, z_b))


def test_lam_scale_authors_in_the_balanced_case_is_lam_times_n_up_to_n_to_the_minus_q():
    """The documented relation: authors' term = N^-q x otalign's term with lam * N."""
    z_a, z_b = views(B=5, seed=3)
    N, q, lam = 10, 0.7, 0.01
    authors = cl.GCARINCE(0.5, 4, q=q, lam=lam, robust="scaling", lam_scale="authors")(z_a, z_b)
    ours = cl.GCARINCE(0.5, 4, q=q, lam=lam * N, robust="scaling")(z_a, z_b)
    assert float(authors) == pytest.approx(N ** -q * float(ours), abs=TOL, rel=TOL)


def test_rince_on_the_authors_scale_is_their_hs_rince():
    z_a, z_b = views(seed=4)
    assert_same(cl.RINCE(0.5, q=0.6, lam=0.3, lam_scale="authors")(z_a, z_b),
                authors_hs_rince(z_a, z_b, 0.5, 0.3, 0.6), (z_a, z_b))


def test_the_authors_cost_shift_scales_only_the_robust_terms():
    """cost="cosine_distance" = "cosine" + 1: the same KL term (also relaxed), and for balanced
    marginals the robust term times exp(-q / eps), in both forms."""
    z_a, z_b = views(seed=5)
    eps, q = 0.4, 0.7
    for form in ("scaling", "partition"):
        a = cl.GCAUOT(eps, 5, rho=0.3, q=q, robust=form).forward_components(z_a, z_b)
        b = cl.GCAUOT(eps, 5, rho=0.3, q=q, robust=form, cost="cosine_distance").forward_components(z_a, z_b)
        assert float(b.terms["kl"]) == pytest.approx(float(a.terms["kl"]), abs=TOL)
        a = cl.GCARINCE(eps, 5, q=q, robust=form)(z_a, z_b)
        b = cl.GCARINCE(eps, 5, q=q, robust=form, cost="cosine_distance")(z_a, z_b)
        assert float(b) == pytest.approx(math.exp(-q / eps) * float(a), abs=TOL, rel=TOL)


# ---------------------------------------------------------------- readout="raw"
@pytest.mark.parametrize("n_iter", [1, 4, 10])
def test_raw_readout_is_the_authors_imagenet_readout(n_iter):
    z_a, z_b = views(seed=6 + n_iter)
    assert_same(cl.GCAInfoNCE(0.5, n_iter, readout="raw")(z_a, z_b),
                authors_imagenet_gca_ince(z_a, z_b, 0.5, n_iter), (z_a, z_b))


def test_renormalised_readout_is_the_authors_cifar_readout():
    z_a, z_b = views(seed=11)
    assert_same(cl.GCAInfoNCE(0.3, 7)(z_a, z_b), authors_cifar_gca_ince(z_a, z_b, 0.3, 7), (z_a, z_b))


# ---------------------------------------------------------------- IOT and IOT-uni
@pytest.mark.parametrize("iterations", [1, 2, 5, 10])
@pytest.mark.parametrize("lambda_p", [0.0, 0.2, 1.5])
def test_iot_is_the_authors_iot(iterations, lambda_p):
    """Their ``iterations = k`` = ``n_iter = (k + 1) // 2`` sweeps, raw for odd k, renormalised for even k."""
    z_a, z_b = views(seed=20 + iterations)
    readout = "raw" if iterations % 2 else "renormalised"
    ours = cl.IOT(0.5, (iterations + 1) // 2, lambda_p=lambda_p, readout=readout)(z_a, z_b)
    assert_same(ours, authors_iot(z_a, z_b, 0.5, iterations, lambda_p), (z_a, z_b))


def test_iot_uni_defaults_are_the_authors_defaults():
    z_a, z_b = views(seed=30)
    assert_same(cl.IOTUni()(z_a, z_b), authors_iot(z_a, z_b, 0.5, 10, 0.2), (z_a, z_b))
    assert float(cl.IOT()(z_a, z_b)) == pytest.approx(float(cl.GCAInfoNCE(0.5, 5)(z_a, z_b)), abs=TOL)
