"""Tests of the benchmark's real-use problems (clustered clouds, colour histograms, point clouds),
of its float64 reference solver, and of the measurement of every runner on them.
Timings are never asserted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import otalign as ota
from otalign import bench
from otalign import constraints as C
from otalign.bench import datasets, errors
from otalign.bench.dual_ascent import solve_dual_ascent
from otalign.bench.harness import bench_configuration
from otalign.bench.problems import IMAGE_BINS, ProblemSpec, build_problem, select_problems
from otalign.bench.reference import reference_solution
from otalign.bench.runners import RUNNERS, make_runners


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(name: str) -> ProblemSpec:
    return next(p for p in bench.all_problems() if p.name == name)


def _small(kind: str, family: str = "clusters", n: int = 48, eps: float = 0.05, **extra) -> ProblemSpec:
    params = {"balanced": {}, "unbalanced": {"rho": 0.1, "b_mass": 1.2}, "partial": {"mass": 0.8, "entropy": "shannon"}}
    return ProblemSpec(name=f"t-{kind}-{family}-{n}", family=family, kind=kind, batch=1, n=n, m=n + 5, epsilon=eps,
                       dim=2, **{**params[kind], **extra})


# --------------------------------------------------------------------------------------------
# The data: seeded, reproducible, with the advertised cost range and masses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["balanced-clusters-n1024-eps0.05", "unbalanced-clusters-n256-eps0.05",
                                  "partial-clusters-n256-eps0.05", "partial-images-g12-eps0.01",
                                  "unbalanced-images-g12-eps0.01"])
def test_real_use_problems_are_seeded_with_cost_range_and_masses(name):
    spec = _spec(name)
    p1, p2 = build_problem(spec), build_problem(spec)
    assert torch.equal(p1.cost, p2.cost) and torch.equal(p1.a, p2.a) and torch.equal(p1.b, p2.b)
    assert p1.cost.shape == (1, spec.n, spec.m) and p1.cost.dtype == torch.float32
    cost = p1.cost64[0]
    assert float(cost.min()) >= 0.0 and float(cost.max()) == 1.0  # scaled to [0, 1], max exactly 1
    assert float(cost.min()) < 1e-3  # close pairs exist: the range is the whole [0, 1]
    assert 1e-3 <= spec.epsilon <= 5e-2  # a fraction of the cost range, as advertised
    assert bool((p1.a64 > 0).all()) and bool((p1.b64 > 0).all())
    assert float(p1.a64.sum()) == pytest.approx(1.0, abs=1e-14)
    target_mass = 1.2 if spec.kind == "unbalanced" else 1.0
    assert float(p1.b64.sum()) == pytest.approx(target_mass, abs=1e-14)
    if spec.kind == "partial":  # capacities bind: the answer is not the scaled Gibbs kernel
        ref = torch.as_tensor(reference_solution(build_problem(spec, dtype=torch.float64)).plan[0])
        assert int(((ref.sum(1) - p1.a64[0]).abs() < 1e-9 * p1.a64[0]).sum()) >= spec.n // 10
    x, y = p1.points
    if spec.family == "clusters":  # the points are scaled so that the cost is |x - y|^2
        assert torch.allclose(cost, torch.cdist(x[0], y[0]) ** 2, atol=1e-12)


def test_clusters_have_exact_cluster_masses_and_depend_on_the_seed():
    x, y, a, b = datasets.gaussian_mixture_pair(1000, 999, 3, seed=7)
    assert x.shape == (1000, 3) and y.shape == (999, 3)
    for weights, w, n in ((datasets.SOURCE_WEIGHTS, a, 1000), (datasets.TARGET_WEIGHTS, b, 999)):
        counts = datasets.cluster_counts(weights, n)
        assert counts.sum() == n and (counts > 0).all()
        masses = [float(s.sum()) for s in torch.split(w, counts.tolist())]
        np.testing.assert_allclose(masses, weights, atol=1e-14)
    # the two groups' totals differ by the advertised imbalance
    assert datasets.TARGET_WEIGHTS[3:].sum() - datasets.SOURCE_WEIGHTS[3:].sum() == pytest.approx(datasets.GROUP_IMBALANCE)
    x2 = datasets.gaussian_mixture_pair(1000, 999, 3, seed=8)[0]
    assert not torch.equal(x, x2)
    with pytest.raises(ValueError, match="n=3"):
        datasets.cluster_counts(datasets.SOURCE_WEIGHTS, 3)
    with pytest.raises(ValueError, match="dim=4"):
        datasets.gaussian_mixture_pair(100, 100, 4, seed=0)


def test_color_histograms_are_the_sample_images_with_empty_bins_dropped():
    from sklearn.datasets import load_sample_image

    for name in datasets.IMAGES:
        np.testing.assert_array_equal(datasets.sample_image(name), load_sample_image(name))
    centres, weights = datasets.color_histogram("china.jpg", IMAGE_BINS)
    spec = _spec("balanced-images-g12-eps0.01")
    assert centres.shape == (spec.n, 3) and (spec.n, spec.m) == (488, 389)
    assert (weights > 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-14)
    assert centres.min() >= 0 and centres.max() <= 255
    # recount by hand: the pixels of the first non-empty cell
    pixels = datasets.sample_image("china.jpg").reshape(-1, 3).astype(int)
    cell = tuple(int(c) for c in centres[0] * IMAGE_BINS / 256)
    inside = ((pixels * IMAGE_BINS // 256) == cell).all(1).sum()
    assert weights[0] == pytest.approx(inside / len(pixels))
    with pytest.raises(ValueError, match="bins"):
        datasets.color_histogram("china.jpg", 1)
    with pytest.raises(ValueError, match="image"):
        datasets.sample_image("lena.jpg")


def test_point_problems_are_selected_only_by_name_and_scaled():
    defaults = {p.name for p in bench.default_problems()}
    assert not any(n.startswith("points") for n in defaults)
    assert [p.name for p in select_problems(["points-n10k-d3"])] == ["points-n10k-d3"]
    assert [p.name for p in select_problems(["points"])] == ["points-n10k-d3", "points-n50k-d3"]
    assert all(not p.lazy for p in select_problems(["*"]))  # a broad pattern does not pull them in
    spec = ProblemSpec(name="points-t", family="points", kind="balanced", batch=1, n=300, m=310, epsilon=0.05,
                       dim=3, default=False)
    problem = build_problem(spec)
    assert problem.cost is None and problem.cost64 is None
    x, y = problem.points
    sq = torch.cdist(x[0], y[0]) ** 2
    assert float(sq.max()) == pytest.approx(1.0, abs=1e-12)  # exact maximum from the convex hulls


# --------------------------------------------------------------------------------------------
# The difficulty the families are there for
# --------------------------------------------------------------------------------------------


def _plain_sinkhorn_sweeps(C: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, target: float, cap: int) -> int:
    """Sweeps of textbook float64 Sinkhorn (u = a / K v, v = b / K^T u) to an L1 marginal error."""
    K = np.exp(-C / eps)
    v = np.ones_like(b)
    for it in range(1, cap + 1):
        u = a / (K @ v)
        v = b / (K.T @ u)
        if it % 10 == 0:
            rows = u * (K @ v)  # the columns are exact after the v update
            if np.abs(rows - a).sum() <= target:
                return it
    return cap + 1


def test_clustered_problem_needs_a_thousand_plain_sweeps():
    """The headline family's point: plain Sinkhorn needs ~1,000+ sweeps to L1 1e-4 at eps 0.05."""
    problem = build_problem(_spec("balanced-clusters-n256-eps0.05"), dtype=torch.float64)
    C, a, b = (t[0].numpy() for t in (problem.cost64, problem.a64, problem.b64))
    sweeps = _plain_sinkhorn_sweeps(C, a, b, 0.05, 1e-4, cap=5000)
    assert 800 <= sweeps <= 3000, sweeps


# --------------------------------------------------------------------------------------------
# The float64 reference solver, against independent solves
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["clusters", "images"])
@pytest.mark.parametrize("kind", ["balanced", "unbalanced", "partial"])
def test_dual_ascent_agrees_with_pot_float64(kind, family):
    import ot

    if family == "clusters":
        problem = build_problem(_small(kind, n=40, eps=0.1), dtype=torch.float64)
        Cm, a, b = problem.cost64[0], problem.a64[0], problem.b64[0]
        spec = problem.spec
        eps, rho, mass = spec.epsilon, spec.rho, spec.mass
    else:  # every 8th bin of the histograms, renormalised
        src = build_problem(_spec(f"{kind}-images-g12-eps0.01"), dtype=torch.float64)
        Cm = src.cost64[0][::8, ::8].contiguous()
        a = src.a64[0][::8] / src.a64[0][::8].sum()
        b = src.b64[0][::8] / src.b64[0][::8].sum() * float(src.b64[0].sum())
        eps, rho, mass = 0.02, src.spec.rho, src.spec.mass
    res = solve_dual_ascent(kind, Cm, a, b, epsilon=eps, rho=rho, mass=mass,
                            entropy="shannon" if kind == "partial" else "kl")
    assert res.stop in ("tol", "stalled")
    if kind == "balanced":
        P = ot.sinkhorn(a, b, Cm, eps, method="sinkhorn_log", stopThr=1e-15, numItermax=500_000, warn=False)
    elif kind == "unbalanced":
        P = ot.unbalanced.sinkhorn_unbalanced(a, b, Cm, eps, rho, method="sinkhorn", reg_type="kl",
                                              stopThr=1e-15, numItermax=500_000)
    else:
        # POT's criterion is the change of the plan, whose float64 floor is ~1e-15: 1e-12 ends it
        P = ot.partial.entropic_partial_wasserstein_logscale(a, b, Cm, eps, m=torch.tensor(mass, dtype=torch.float64),
                                                             stopThr=1e-12, numItermax=500_000)
    assert float((res.plan - P).abs().sum()) < 1e-10


@pytest.mark.parametrize("kind", ["balanced", "unbalanced", "partial"])
def test_reference_agrees_with_otalign_float64_on_weighted_problems(kind):
    problem = build_problem(_small(kind, n=40, eps=0.1), dtype=torch.float64)
    spec = problem.spec
    ref = reference_solution(problem)
    a, b = problem.a64[0], problem.b64[0]
    cons = {"balanced": lambda: C.balanced(a, b), "unbalanced": lambda: C.unbalanced(spec.rho, a=a, b=b),
            "partial": lambda: C.partial(spec.mass, a=a, b=b)}[kind]()
    res = ota.solve(problem.cost64[0], cons, epsilon=spec.epsilon, tol=1e-13, max_iter=200_000, entropy=spec.entropy)
    np.testing.assert_allclose(res.plan.numpy(), ref.plan[0], atol=1e-10, rtol=0)


def test_dual_ascent_small_epsilon_is_certified():
    """At epsilon = 1e-3 of the range (kernel entries down to exp(-1000)) the reference still
    meets its marginals to the float64 floor (its plan has the Gibbs form
    ``a_i b_j exp((f_i + g_j - C_ij) / eps)`` by construction, and with the marginals that
    identifies the optimum) and agrees with otalign's float64 solve."""
    eps = 1e-3
    problem = build_problem(_small("balanced", n=30, eps=eps), dtype=torch.float64)
    Cm, a, b = problem.cost64[0], problem.a64[0], problem.b64[0]
    res = solve_dual_ascent("balanced", Cm, a, b, epsilon=eps)
    assert errors.marginal_l1(res.plan, a, b)[0] < 1e-12
    ota_plan = ota.solve(Cm, C.balanced(a, b), epsilon=eps, tol=1e-13, max_iter=2_000_000).plan
    assert float((res.plan - ota_plan).abs().sum()) < 1e-9
    u = build_problem(_small("unbalanced", n=30, eps=1e-3), dtype=torch.float64)
    res = solve_dual_ascent("unbalanced", u.cost64[0], u.a64[0], u.b64[0], epsilon=1e-3, rho=0.1)
    assert errors.unbalanced_kkt_residual(res.plan, u.a64[0], u.b64[0], u.cost64[0], 1e-3, 0.1)[0] < 1e-10
    assert abs(float(res.plan.sum()) - 1.1) > 0.01  # genuinely unbalanced: neither mass is kept


def test_dual_ascent_rejects_bad_input():
    Cm, a, b = torch.rand(3, 4), torch.full((3,), 1 / 3), torch.full((4,), 0.25)
    with pytest.raises(ValueError, match="kind="):
        solve_dual_ascent("semi", Cm, a, b, epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon="):
        solve_dual_ascent("balanced", Cm, a, b, epsilon=0.0)
    with pytest.raises(ValueError, match="rho="):
        solve_dual_ascent("unbalanced", Cm, a, b, epsilon=0.1)
    with pytest.raises(ValueError, match="mass="):
        solve_dual_ascent("partial", Cm, a, b, epsilon=0.1, mass=1.5)
    with pytest.raises(ValueError, match="positive"):
        solve_dual_ascent("balanced", Cm, torch.tensor([0.5, 0.5, 0.0]), b, epsilon=0.1)
    with pytest.raises(ValueError, match="shape|expected \\(n, m\\)"):
        solve_dual_ascent("balanced", Cm, b, b, epsilon=0.1)


# --------------------------------------------------------------------------------------------
# Every runner: the error it reports is the error of the plan it returns
# --------------------------------------------------------------------------------------------


def _independent_error(plan, problem, ref) -> float:
    """The headline error recomputed here, without otalign.bench.errors."""
    P = plan.detach().cpu().double() if isinstance(plan, torch.Tensor) else torch.from_numpy(np.array(plan, np.float64))
    P = P[0] if P.dim() == 3 else P  # OTT returns (n, m) for a single problem
    if problem.spec.kind == "balanced":
        return float((P.sum(1) - problem.a64[0]).abs().sum() + (P.sum(0) - problem.b64[0]).abs().sum())
    return float((P - torch.as_tensor(ref.plan[0])).abs().sum())


_DENSE = [(lib, cfg) for lib, cls in RUNNERS.items() for cfg in cls.CONFIGS
          if not (lib, cfg) in {("pot", "lazy"), ("geomloss", "online"), ("otalign", "online"), ("otalign", "keops")}]


@pytest.mark.parametrize("lib,config", _DENSE, ids=[f"{lib}:{cfg}" for lib, cfg in _DENSE])
def test_runner_reports_the_error_of_its_plan(lib, config):
    pytest.importorskip({"otalign": "otalign", "pot": "ot", "geomloss": "geomloss", "ott": "ott"}[lib])
    settings = bench.BenchSettings.create(quick=True, repeats=1, fixed_iters=7, curve_iters=(3,), curve_extend=(),
                                          budget_s=5.0, max_iter=400)
    runners, _ = make_runners([(lib, config)], device="cpu", dtype=torch.float32)
    runner = runners[0]
    checked = 0
    for kind in ("balanced", "unbalanced", "partial"):
        spec = _small(kind, n=24)
        if runner.supports(spec) is not None:
            continue
        problem = build_problem(spec)
        ref = reference_solution(problem)
        records = bench_configuration(runner, problem, ref, settings)
        fixed = next(r for r in records if r.mode == "fixed")
        out = runner.fixed(runner.prepare(problem), int(fixed.knob_value))()
        assert fixed.error == pytest.approx(_independent_error(out.plan, problem, ref), rel=1e-6, abs=1e-12)
        assert fixed.n_iters == int(fixed.knob_value)  # the sweeps it was asked for
        for r in records:
            assert r.mode in ("fixed", "tol", "curve") and math.isfinite(r.error)
        checked += 1
    assert checked, f"{lib}:{config} solved none of the kinds"


# --------------------------------------------------------------------------------------------
# Point clouds: measurement from potentials, online runners, the otalign geometry notice
# --------------------------------------------------------------------------------------------


def test_measure_potentials_matches_the_dense_plan():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(37, 3, generator=g, dtype=torch.float64), torch.rand(41, 3, generator=g, dtype=torch.float64)
    a = torch.rand(37, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(41, generator=g, dtype=torch.float64) + 0.1
    a, b = a / a.sum(), b / b.sum()
    f, g_ = 0.01 * torch.randn(37, generator=g, dtype=torch.float64), 0.01 * torch.randn(41, generator=g, dtype=torch.float64)
    eps = 0.05
    P = a[:, None] * b[None, :] * torch.exp((f[:, None] + g_[None, :] - torch.cdist(x, y) ** 2) / eps)
    rows, cols = errors.potential_marginals(f, g_, x=x, y=y, a=a, b=b, epsilon=eps, tile=8)
    np.testing.assert_allclose(rows, P.sum(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(cols, P.sum(0).numpy(), rtol=1e-12)
    m = errors.measure_potentials(f, g_, kind="balanced", x=x, y=y, a=a, b=b, epsilon=eps)
    assert m.error == pytest.approx(float((P.sum(1) - a).abs().sum() + (P.sum(0) - b).abs().sum()), rel=1e-12)
    assert math.isnan(m.plan_error)
    with pytest.raises(ValueError, match="balanced"):
        errors.measure_potentials(f, g_, kind="partial", x=x, y=y, a=a, b=b, epsilon=eps)


def test_pot_lazy_runner_on_a_point_cloud_problem():
    spec = ProblemSpec(name="points-t", family="points", kind="balanced", batch=1, n=60, m=64, epsilon=0.1, dim=3,
                       default=False, fixed_iters=5, max_iter=5000)
    settings = bench.BenchSettings.create(repeats=1, curve_iters=(5,), curve_extend=(50, 500, 5000), budget_s=10.0)
    runners, _ = make_runners([("pot", "lazy"), ("pot", "sinkhorn")], device="cpu", dtype=torch.float32)
    lazy, dense = runners
    assert dense.supports(spec) is not None and "online" in dense.supports(spec)
    assert lazy.supports(_small("balanced")) is not None
    problem = build_problem(spec)
    records = bench_configuration(lazy, problem, reference_solution(problem), settings)
    fixed = next(r for r in records if r.mode == "fixed")
    assert fixed.n_iters == 5 and fixed.ms_per_iter > 0
    met = [r for r in records if r.mode == "tol" and r.met_target]
    assert met and met[0].error <= settings.target and met[0].n_iters >= 10
    curve = [r for r in records if r.mode == "curve"]
    # the grid extension stops at the first point that meets the target
    assert [r.error <= settings.target for r in curve[:-1]] == [False] * (len(curve) - 1)


def test_otalign_point_cloud_configs_need_the_geometry_layer():
    from pathlib import Path

    from otalign.bench.runners.otalign_runner import geometry_unavailable

    runners, notices = make_runners([("otalign", "online"), ("otalign", "keops")], device="cpu", dtype=torch.float32)
    here = Path(next(iter(ota.__path__)))
    if not (here / "geometry").exists():  # this checkout has no geometry layer (yet)
        assert runners == []
        assert len(notices) == 2 and all("needs otalign.geometry" in n for n in notices), notices
        assert "needs otalign.geometry" in geometry_unavailable("online")
    else:
        assert "online" in [r.config for r in runners]


# --------------------------------------------------------------------------------------------
# Settings: per-problem caps, the --quick preset stays small
# --------------------------------------------------------------------------------------------


def test_per_problem_caps_and_overrides():
    s = bench.BenchSettings.create()
    hard, easy = _spec("balanced-clusters-n1024-eps0.001"), _spec("balanced-n256-eps0.05")
    points = next(p for p in bench.point_problems() if p.name == "points-n50k-d3")
    assert s.max_iter_for(hard) == 200_000 and s.max_iter_for(easy) == 2000
    assert s.fixed_iters_for(easy) == 100 and s.fixed_iters_for(points) == 10
    s = bench.BenchSettings.create(max_iter=50, fixed_iters=7)
    assert s.max_iter_for(hard) == 50 and s.fixed_iters_for(points) == 7
    with pytest.raises(ValueError, match="curve_extend"):
        bench.BenchSettings.create(curve_extend=(0,))


def test_quick_problems_are_small_and_converge_within_the_quick_cap():
    """What keeps --quick short (under a minute on the 2-core machine when it is not shared): small
    costs, and every quick problem reaches the target within the quick sweep cap (the clustered
    problems, which need 1,000+ sweeps, are not in it)."""
    settings = bench.BenchSettings.create(quick=True)
    assert settings.budget_s <= 2.0 and settings.repeats <= 3
    for spec in settings.problem_specs:
        assert spec.batch * spec.n * spec.m <= 512 * 512
        problem = build_problem(spec)
        if spec.kind == "balanced":
            cons = C.balanced(problem.a[0], problem.b[0])
        else:
            cons = C.unbalanced(spec.rho) if spec.kind == "unbalanced" else C.partial(spec.mass)
        res = ota.solve(problem.cost[0], cons, epsilon=spec.epsilon, tol=1e-5, max_iter=settings.max_iter_for(spec),
                        entropy=spec.entropy, grad="none")
        assert bool(res.converged.all()), spec.name
    assert any(s.family == "images" for s in settings.problem_specs)
