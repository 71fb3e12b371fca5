"""Tests of ``otalign bench`` (otalign/bench): error measurement, conventions of every runner,
outputs of a quick run, and the command line. Timings are never asserted."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import otalign as ota
from otalign import bench
from otalign import constraints as C
from otalign.bench import errors
from otalign.bench.problems import ProblemSpec, build_problem, select_problems
from otalign.bench.reference import reference_solution
from otalign.bench.runners import RUNNERS
from otalign.bench.selfcheck import check_conventions, check_specs
from otalign.cli import build_parser, main


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread: on a small machine shared with other work, two OpenMP threads can make
    these (untimed) tests 10x slower; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# --------------------------------------------------------------------------------------------
# The independent error measurement, against hand-computed plans
# --------------------------------------------------------------------------------------------


def test_marginal_l1_of_known_plans():
    P = np.array([[0.2, 0.1], [0.0, 0.7]])
    # rows (0.3, 0.7) match a exactly; columns (0.2, 0.8) miss b = (0.5, 0.5) by 0.3 + 0.3
    assert errors.marginal_l1(P, [0.3, 0.7], [0.5, 0.5])[0] == pytest.approx(0.6, abs=1e-15)
    # both sides off: rows (0.3, 0.7) vs (0.5, 0.5): 0.4; columns (0.2, 0.8) vs (0.2, 0.8): 0
    assert errors.marginal_l1(P, [0.5, 0.5], [0.2, 0.8])[0] == pytest.approx(0.4, abs=1e-15)
    # the exact product plan has no error
    a, b = np.array([0.25, 0.75]), np.array([0.1, 0.6, 0.3])
    assert errors.marginal_l1(np.outer(a, b), a, b)[0] == pytest.approx(0.0, abs=1e-15)


def test_partial_violation_of_known_plans():
    a, b = np.array([0.5, 0.5]), np.array([0.5, 0.5])
    feasible = np.array([[0.3, 0.1], [0.1, 0.3]])  # rows, columns 0.4 <= 0.5; mass 0.8
    assert errors.partial_violation(feasible, a, b, 0.8)[0] == pytest.approx(0.0, abs=1e-15)
    # row 0 sums to 0.6 (0.1 over its cap), column 0 to 0.55 (0.05 over), mass 0.9 (0.1 off)
    P = np.array([[0.55, 0.05], [0.0, 0.3]])
    assert errors.partial_violation(P, a, b, 0.8)[0] == pytest.approx(0.1 + 0.05 + 0.1, abs=1e-15)


def test_measure_plan_headline_per_kind_and_batch_worst():
    a = np.full((2, 2), 0.5)
    b = np.full((2, 2), 0.5)
    cost = np.array([[[0.0, 1.0], [1.0, 0.0]]] * 2)
    good = np.array([[0.5, 0.0], [0.0, 0.5]])
    off = np.array([[0.4, 0.0], [0.0, 0.5]])  # row 0 and column 0 short by 0.1 each
    plans = np.stack([good, off])
    m = errors.measure_plan(plans, kind="balanced", a=a, b=b, cost=cost, reference_plan=np.stack([good, good]))
    assert m.error == pytest.approx(0.2)  # the worst problem of the batch
    assert m.plan_error == pytest.approx(0.1)
    assert math.isclose(m.cost_rel_error, 0.0, abs_tol=1e-15)  # both plans cost 0
    assert m.finite
    m = errors.measure_plan(plans, kind="unbalanced", a=a, b=b, cost=cost, reference_plan=np.stack([good, good]))
    assert m.error == pytest.approx(0.1)  # unbalanced: distance to the reference plan
    assert math.isnan(m.marginal_error)
    bad = plans.copy()
    bad[1, 0, 0] = np.nan
    m = errors.measure_plan(bad, kind="balanced", a=a, b=b, cost=cost)
    assert m.error == math.inf and not m.finite


def test_measure_plan_accepts_torch_and_rejects_wrong_shape():
    P = torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float32)
    m = errors.measure_plan(P, kind="balanced", a=[0.5, 0.5], b=[0.5, 0.5], cost=np.eye(2))
    assert m.error == 0.0 and m.mass == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        errors.measure_plan(np.ones((2, 3)), kind="balanced", a=[0.5, 0.5], b=[0.5, 0.5], cost=np.eye(2))
    with pytest.raises(ValueError, match="kind"):
        errors.measure_plan(P, kind="nope", a=[0.5, 0.5], b=[0.5, 0.5], cost=np.eye(2))


# --------------------------------------------------------------------------------------------
# Problems and references
# --------------------------------------------------------------------------------------------


def test_problems_are_seeded_and_well_formed():
    from otalign.bench.problems import classic_problems

    assert len(classic_problems()) == 28
    specs = {p.name: p for p in bench.all_problems()}
    assert len(specs) == 48 and len(bench.default_problems()) == 46
    spec = specs["contrastive-B256-eps0.5"]
    p1, p2 = build_problem(spec), build_problem(spec)
    assert torch.equal(p1.cost, p2.cost) and p1.cost.dtype == torch.float32
    assert p1.cost.shape == (1, 512, 512)
    assert torch.allclose(torch.diagonal(p1.cost64[0]), torch.zeros(512, dtype=torch.float64), atol=1e-12)
    assert float(p1.cost64.max()) <= 2.0 + 1e-12
    sphere = build_problem(specs["balanced-B16xn512-eps0.05"], dtype=torch.float64)
    assert sphere.cost.shape == (16, 512, 512) and sphere.cost.dtype == torch.float64
    x, y = sphere.points
    assert torch.allclose(sphere.cost64, torch.cdist(x, y) ** 2, atol=1e-10)
    assert torch.allclose(sphere.a.sum(-1), torch.ones(16, dtype=torch.float64))


def test_select_problems_patterns():
    names = [p.name for p in select_problems(["n256"])]
    assert names == ["balanced-clusters-n256-eps0.05", "unbalanced-clusters-n256-eps0.05",
                     "partial-clusters-n256-eps0.05", "balanced-n256-eps0.05", "balanced-n256-eps0.5",
                     "unbalanced-n256-eps0.05", "unbalanced-n256-eps0.5", "partial-n256-eps0.05", "partial-n256-eps0.5"]
    assert [p.name for p in select_problems(["*clusters-n256*"])] == names[:3]
    assert [p.name for p in select_problems(["contrastive-*-eps0.5"])] == [
        "contrastive-B256-eps0.5", "contrastive-B1024-eps0.5"]
    with pytest.raises(ValueError, match="matches no problem"):
        select_problems(["nope"])


@pytest.mark.parametrize("kind", ["balanced", "unbalanced", "partial"])
def test_reference_agrees_with_otalign_float64(kind):
    spec = next(s for s in check_specs(n=20, batch=2) if s.kind == kind and s.batch == 2)
    problem = build_problem(spec, dtype=torch.float64)
    ref = reference_solution(problem)
    if kind == "balanced":
        cons = C.balanced()
    elif kind == "unbalanced":
        cons = C.unbalanced(spec.rho)
    else:
        cons = C.partial(spec.mass)
    res = ota.solve(problem.cost64, cons, epsilon=spec.epsilon, tol=1e-13, max_iter=100_000, entropy=spec.entropy)
    assert bool(res.converged.all())
    np.testing.assert_allclose(res.plan.numpy(), ref.plan, atol=1e-10, rtol=0)
    if kind == "unbalanced":  # the plan-only optimality check is tight at the optimum, loose elsewhere
        assert errors.unbalanced_kkt_residual(ref.plan, problem.a64, problem.b64, problem.cost64, spec.epsilon, spec.rho).max() < 1e-10
        perturbed = ref.plan * (1 + 0.01 * np.random.default_rng(0).standard_normal(ref.plan.shape))
        assert errors.unbalanced_kkt_residual(perturbed, problem.a64, problem.b64, problem.cost64, spec.epsilon, spec.rho).max() > 1e-4


def test_reference_cache_round_trip(tmp_path):
    spec = next(s for s in check_specs(n=12, batch=1) if s.kind == "partial")
    problem = build_problem(spec, dtype=torch.float64)
    first = reference_solution(problem, cache_dir=tmp_path)
    again = reference_solution(problem, cache_dir=tmp_path)
    assert not first.cached and again.cached
    np.testing.assert_array_equal(first.plan, again.plan)
    assert len(list(tmp_path.glob("*.npz"))) == 1


# --------------------------------------------------------------------------------------------
# Every runner on tiny problems, float64: unit conventions
# --------------------------------------------------------------------------------------------

_MODULES = {"otalign": "otalign", "pot": "ot", "geomloss": "geomloss", "ott": "ott"}
_CONFIGS = [(lib, cfg) for lib, cls in RUNNERS.items() for cfg in cls.CONFIGS]
_SPECS = check_specs(n=16, batch=2)


@pytest.mark.parametrize("lib,config", _CONFIGS, ids=[f"{lib}:{cfg}" for lib, cfg in _CONFIGS])
def test_runner_matches_float64_reference(lib, config):
    pytest.importorskip(_MODULES[lib])
    why = RUNNERS[lib](config).unavailable_config()
    if why is not None:  # e.g. otalign:online before otalign.geometry exists, geomloss:online without pykeops
        pytest.skip(f"{lib}:{config}: {why}")
    results = check_conventions(libraries=[f"{lib}:{config}"], specs=_SPECS)
    ran = [r for r in results if not r.status.startswith("skipped")]
    assert ran, f"{lib}:{config} solved none of the check problems"
    for r in ran:
        assert r.ok, f"{r.runner} on {r.problem}: ||P - P*||_1 = {r.plan_error} > {r.tolerance} ({r.status})"


def test_geomloss_points_need_the_halved_blur():
    """With points, GeomLoss's cost is |x-y|^2 / 2: blur = sqrt(eps / 2) is right, sqrt(eps) is not."""
    pytest.importorskip("geomloss")
    from geomloss import SamplesLoss

    from otalign.bench.runners.geomloss_runner import _scaling_for

    spec = next(s for s in _SPECS if s.kind == "balanced" and s.batch == 1)
    problem = build_problem(spec, dtype=torch.float64)
    ref = reference_solution(problem)
    x, y = problem.points
    a, b, eps = problem.a64, problem.b64, spec.epsilon

    def plan(blur: float) -> np.ndarray:
        diameter = blur * (1 + 1e-9)  # every sweep at the target blur
        loss = SamplesLoss("sinkhorn", p=2, blur=blur, diameter=diameter, scaling=_scaling_for(diameter, blur, 1000),
                           debias=False, potentials=True, backend="tensorized")
        F, G = loss(a, x, b, y)
        # GeomLoss's potentials are in its (halved) cost units: double them for C = |x-y|^2
        return (a[:, :, None] * b[:, None, :] * torch.exp((2 * F[:, :, None] + 2 * G[:, None, :] - problem.cost64) / eps)).numpy()

    right = errors.plan_l1(plan(math.sqrt(eps / 2)), ref.plan)[0]
    wrong = errors.plan_l1(plan(math.sqrt(eps)), ref.plan)[0]
    assert right < 1e-7
    assert wrong > 1e-2


def test_ott_needs_the_cost_shift_for_kl_unbalanced():
    """OTT's unbalanced entropy is Shannon's: unshifted, it solves another problem."""
    pytest.importorskip("ott")
    import jax.numpy as jnp
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    from otalign.bench.runners import OttRunner

    spec = next(s for s in _SPECS if s.kind == "unbalanced" and s.batch == 1)
    problem = build_problem(spec, dtype=torch.float64)
    ref = reference_solution(problem)
    runner = OttRunner("sinkhorn", dtype=torch.float64)  # enables x64
    shifted = runner.tight(runner.prepare(problem))().plan
    tau = spec.rho / (spec.rho + spec.epsilon)
    geom = geometry.Geometry(cost_matrix=jnp.asarray(problem.cost64[0].numpy()), epsilon=spec.epsilon)
    prob = linear_problem.LinearProblem(geom, jnp.asarray(problem.a64[0].numpy()), jnp.asarray(problem.b64[0].numpy()),
                                        tau_a=tau, tau_b=tau)
    plain = sinkhorn.Sinkhorn(threshold=1e-12, max_iterations=100_000)(prob).matrix
    assert errors.plan_l1(shifted, ref.plan)[0] < 1e-7
    assert errors.plan_l1(plain, ref.plan)[0] > 1e-3


def test_geomloss_schedule_length_is_the_requested_sweep_count():
    pytest.importorskip("geomloss")
    from otalign.bench.runners.geomloss_runner import _scaling_for, schedule_sweeps

    for diameter, blur in ((1.7, math.sqrt(0.05)), (1.4, math.sqrt(0.5)), (0.3 * (1 + 1e-9), 0.3)):
        for sweeps in (5, 6, 20, 100, 1000):
            assert schedule_sweeps(diameter, blur, _scaling_for(diameter, blur, sweeps)) == sweeps


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def test_memory_meter_sees_an_allocation():
    from otalign.bench.timing import MemoryMeter

    meter = MemoryMeter(torch.device("cpu"))
    out, peak = meter.measure(lambda: float(np.ones(10_000_000).sum()))  # 80 MB, freed on return
    if peak is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert out == 1e7
    assert peak >= 60 * 2**20
    _, small = meter.measure(lambda: 1 + 1)
    assert small < 20 * 2**20


# --------------------------------------------------------------------------------------------
# A quick-style run: JSON, PNGs, summary; one extra otalign configuration declared in one place
# --------------------------------------------------------------------------------------------


def test_quick_run_writes_json_and_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.OTALIGN_CONFIGS, "check5", {"check_every": 5})
    out = tmp_path / "bench"
    rc = main([
        "bench", "--quick", "--problems", "balanced-n256-eps0.5,partial-n256-eps0.5", "--repeats", "1",
        "--libraries", "otalign,pot:sinkhorn_log,pot:batch,geomloss,ott",
        "--iters", "5", "--max-iter", "60", "--budget", "2", "--out", str(out), "--no-progress",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "otalign/best" in printed and "balanced-n256-eps0.5" in printed and "ms/iter" in printed
    data = json.loads((out / "bench.json").read_text())
    assert not (out / "bench.partial.json").exists()  # replaced by bench.json at the end
    for key in ("schema", "settings", "machine", "versions", "notices", "runners", "methods",
                "problems", "records", "summary", "plots", "wall_s"):
        assert key in data, key
    assert data["schema"] == "otalign-bench/1"
    assert data["settings"]["quick"] is True and data["settings"]["fixed_iters"] == 5
    assert data["versions"]["torch"] == torch.__version__
    assert {"otalign:default", "otalign:check5"} <= set(data["runners"])
    names = {p["spec"]["name"] for p in data["problems"]}
    assert names == {"balanced-n256-eps0.5", "partial-n256-eps0.5"}
    for p in data["problems"]:
        assert p["reference"]["solver"].startswith("otalign.bench.dual_ascent")
    recs = data["records"]
    for cfg in ("default", "check5"):
        modes = {r["mode"] for r in recs if r["library"] == "otalign" and r["config"] == cfg}
        assert {"fixed", "tol", "curve"} <= modes
    fixed = [r for r in recs if r["mode"] == "fixed" and r["status"].startswith("ok")]
    assert fixed and all(r["ms_per_iter"] > 0 and r["n_iters"] >= 5 for r in fixed)
    # GeomLoss and OTT have no partial transport: recorded as skipped there
    assert any(r["library"] == "ott" and r["mode"] == "skip" and r["problem"].startswith("partial") for r in recs)
    rows = [r for r in data["summary"] if r["measure"] == "ms_per_iter" and r["problem"] == "balanced-n256-eps0.5"]
    assert len(rows) == 1
    row = rows[0]
    assert row["values"]["otalign"]["config"] in set(bench.OTALIGN_CONFIGS)  # the best one is named
    others = [v["value"] for lib, v in row["values"].items() if lib != "otalign" and v["value"] is not None]
    assert row["ratio"] == pytest.approx(row["values"]["otalign"]["value"] / min(others))
    assert len(data["plots"]) == 2
    for path in data["plots"]:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def test_cli_parses_bench_arguments():
    args = build_parser().parse_args([
        "bench", "--quick", "--problems", "n256", "--libraries", "otalign,pot:sinkhorn_log", "--dtype", "float64",
        "--repeats", "7", "--out", "somewhere", "--target", "1e-5", "--iters", "30",
    ])
    assert args.command == "bench" and args.quick and args.repeats == 7 and args.target == 1e-5
    settings = bench.BenchSettings.create(quick=True, problems=["n256"], libraries=["otalign", "pot:sinkhorn_log"],
                                          dtype="float64", repeats=7, fixed_iters=30)
    assert settings.repeats == 7 and settings.fixed_iters == 30 and settings.max_iter == 300  # quick preset kept
    assert settings.library_selection == [("otalign", None), ("pot", "sinkhorn_log")]
    assert len(settings.problem_specs) == 9  # n256: three clustered, six sphere problems
    assert bench.BenchSettings.create(quick=True).problem_specs == bench.quick_problems()
    assert bench.BenchSettings.create().repeats == 5
    assert bench.BenchSettings.create().cpu_threads == 1  # one thread on the CPU unless asked
    assert bench.BenchSettings.create(threads=2).cpu_threads == 2
    with pytest.raises(ValueError, match="threads"):
        bench.BenchSettings.create(threads=0)
    with pytest.raises(ValueError, match="curve_iters"):
        bench.BenchSettings.create(curve_iters=(0, 5))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--repeats", "0"], "--repeats"),
        (["--repeats", "two"], "--repeats"),
        (["--dtype", "float16"], "--dtype"),
        (["--problems", "nope"], "matches no problem"),
        (["--problems", "n256,,n1024"], "empty item"),
        (["--libraries", "torchot"], "unknown library"),
        (["--libraries", "pot:sinkhorn_fast"], "no configuration"),
        (["--target", "-1"], "--target"),
        (["--target", "inf"], "--target"),
        (["--device", "tpu"], "device"),
        (["--iters", "1.5"], "--iters"),
        (["--threads", "0"], "--threads"),
        (["--budget", "0"], "--budget"),
    ],
)
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown when CUDA is missing")
def test_cli_rejects_cuda_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cuda"])
    assert "cuda" in capsys.readouterr().err


def test_cli_demo_is_unchanged(capsys):
    assert main(["demo"]) == 0
    assert capsys.readouterr().out.strip()


def test_cli_list(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "contrastive-B1024-eps0.5" in out and "otalign: default*" in out and "geomloss: anneal*, fixed_eps, online*" in out
    assert "balanced-clusters-n1024-eps0.05" in out and "points-n50k-d3" in out


def test_spec_is_json_ready():
    spec = ProblemSpec(name="x", family="sphere", kind="balanced", batch=1, n=4, m=5, epsilon=0.1)
    assert json.loads(json.dumps(spec.to_dict()))["m"] == 5


def test_cli_check_runs_in_float64(capsys):
    assert main(["bench", "--check", "--libraries", "otalign"]) == 0
    out = capsys.readouterr().out
    assert "all conventions agree" in out
    assert "otalign:default" in out and "FAIL" not in out and "check-partial-B3" in out
