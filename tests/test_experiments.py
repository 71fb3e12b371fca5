"""The training/evaluation pipeline of ``otalign train`` (otalign.experiments).

The losses used here are small reference implementations written in this file (SimCLR's NT-Xent
and a soft-target domain-aware variant); the pipeline takes any loss as a parameter.
"""

import json
import math
import random
import re

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from otalign.experiments import (
    DOMAIN_STYLES,
    Dataset,
    RunResult,
    TrainConfig,
    alignment,
    apply_domain_styles,
    assign_domains,
    augment,
    knn_accuracy,
    linear_probe_accuracy,
    load_dataset,
    pretrain,
    run_comparison,
    run_domain_sweep,
    run_experiment,
    uniformity,
)
from otalign.experiments.domains import style


class NTXent(nn.Module):
    """SimCLR's NT-Xent: 2B x 2B cosine similarities / temperature, self-pairs excluded,
    cross-entropy towards the other view, mean over the 2B anchors."""

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.temperature = temperature

    def forward(self, z_a, z_b, **kw):
        z = F.normalize(torch.cat([z_a, z_b]), dim=1)
        n = z_a.shape[0]
        sim = (z @ z.T / self.temperature).masked_fill(
            torch.eye(2 * n, dtype=torch.bool, device=z.device), -math.inf
        )
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(sim, target)


class SoftDomainInfoNCE(nn.Module):
    """Cross-view InfoNCE towards a row-normalised target: 1 for the positive, ``alpha`` within a
    domain, ``beta`` across domains. Records that it was called with domain ids."""

    def __init__(self, alpha: float, beta: float, temperature: float = 0.5):
        super().__init__()
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.calls = 0

    def forward(self, z_a, z_b, domains):
        assert domains.dtype == torch.int64 and domains.shape == z_a.shape[:1]
        self.calls += 1
        logits = F.normalize(z_a, dim=1) @ F.normalize(z_b, dim=1).T / self.temperature
        same = (domains[:, None] == domains[None, :]).to(logits.dtype)
        target = self.alpha * same + self.beta * (1 - same)
        target.fill_diagonal_(1.0)
        target = target / target.sum(1, keepdim=True)
        return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def small_config(**kw) -> TrainConfig:
    base = dict(subset=256, batch_size=32, epochs=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(TrainConfig(subset=256))


# ---------------------------------------------------------------- smoke: train, write, parse


def test_smoke_training_lowers_the_loss_and_writes_parsable_results(tmp_path, digits):
    config = small_config(output_dir=str(tmp_path))
    cmp = run_comparison({"ntxent": lambda: NTXent(0.5)}, seeds=[0, 1], config=config, data=digits)
    for run in cmp.runs:
        steps = run.step_losses
        assert len(steps) == 2 * (256 // 32) and len(run.epoch_losses) == 2
        assert np.mean(steps[-4:]) < np.mean(steps[:4]) - 0.1, steps
        assert run.epoch_losses[1] < run.epoch_losses[0]
        assert 0.5 < run.metrics.linear_probe_acc <= 1.0  # chance is 0.1
        assert run.metrics.domain_probe_acc is None
    # one JSON per run, the comparison's JSON and PNG
    run_files = sorted((tmp_path / "runs").glob("*.json"))
    assert [p.name for p in run_files] == ["ntxent_seed0.json", "ntxent_seed1.json"]
    loaded = RunResult.load(run_files[0])
    assert loaded.config == config.replace(seed=0)
    assert loaded.step_losses == cmp.runs[0].step_losses
    assert loaded.metrics == cmp.runs[0].metrics
    assert set(loaded.timings) == {"pretrain", "evaluate", "total"} and loaded.timings["total"] > 0
    summary = json.loads((tmp_path / "comparison.json").read_text())
    stats = summary["summary"]["ntxent"]["linear_probe_acc"]
    accs = [r.metrics.linear_probe_acc for r in cmp.runs]
    assert (
        stats["n"] == 2
        and math.isclose(stats["mean"], np.mean(accs))
        and math.isclose(stats["std"], np.std(accs, ddof=1))
    )
    image = matplotlib.image.imread(tmp_path / "comparison.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    table = cmp.table()
    assert "ntxent" in table and "linear probe acc" in table and "+-" in table


def test_signals_train_through_the_1d_encoder():
    signals = torch.randn(96, 1, 40, generator=torch.Generator().manual_seed(0))
    data = Dataset(
        name="synthetic",
        x_train=signals[:64],
        y_train=torch.arange(64) % 2,
        x_test=signals[64:],
        y_test=torch.arange(32) % 2,
        d_train=None,
        d_test=None,
        n_classes=2,
        n_domains=1,
        mean=0.0,
        std=1.0,
    )
    result = pretrain(small_config(batch_size=32, epochs=1), NTXent(), data)
    assert isinstance(result.model.encoder.net[1], nn.Conv1d)
    assert len(result.step_losses) == 2 and all(math.isfinite(v) for v in result.step_losses)


def test_mnist1d_is_generated_locally_without_touching_global_rngs():
    pytest.importorskip("mnist1d")
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    data = load_dataset(TrainConfig(dataset="mnist1d"))
    assert data.x_train.shape == (4000, 1, 40) and data.x_test.shape == (1000, 1, 40)
    assert data.x_train.dtype == torch.float32 and data.n_classes == 10
    assert abs(data.mean) < 0.05 and abs(data.std - 1.0) < 0.05
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state


# ---------------------------------------------------------------- metrics against hand-computed cases


def test_linear_probe_on_separable_features():
    f_train = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y_train = torch.tensor([0, 0, 1, 1])
    f_test = torch.tensor([[-3.0], [3.0], [-0.5], [0.5]])
    # symmetric data: the decision boundary is at 0
    assert linear_probe_accuracy(f_train, y_train, f_test, torch.tensor([0, 1, 0, 1])) == 1.0
    assert linear_probe_accuracy(f_train, y_train, f_test, torch.tensor([0, 1, 1, 1])) == 0.75
    assert linear_probe_accuracy(f_train, y_train, f_test, torch.tensor([1, 0, 1, 0])) == 0.0


def test_knn_votes_by_cosine_distance():
    f_train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-100.0, 0.0]])
    y_train = torch.tensor([0, 0, 1, 1, 2])
    # scaled queries: cosine ignores the norm; the last query's nearest is class 2, then two of class 1
    f_test = torch.tensor([[50.0, 2.0], [0.01, 0.2], [-1.0, 0.2]])
    y_test = torch.tensor([0, 1, 2])
    assert knn_accuracy(f_train, y_train, f_test, y_test, k=1) == 1.0
    assert knn_accuracy(f_train, y_train, f_test, y_test, k=3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k=6"):
        knn_accuracy(f_train, y_train, f_test, y_test, k=6)


def test_alignment_of_known_pairs():
    z_a = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # normalised: e1, e2
    z_b = torch.tensor([[0.0, 5.0], [0.0, 1.0]])  # normalised: e2, e2
    assert alignment(z_a, z_b) == pytest.approx(1.0)  # (2 + 0) / 2
    assert alignment(z_a, z_b, alpha=1.0) == pytest.approx(math.sqrt(2) / 2)
    assert alignment(z_a, z_a) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="shapes"):
        alignment(z_a, z_b[:1])


def test_uniformity_of_known_configurations():
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -2.0]])
    # 4 neighbouring pairs at squared distance 2, 2 opposite pairs at 4
    assert uniformity(square) == pytest.approx(math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6))
    assert uniformity(torch.ones(5, 3)) == pytest.approx(0.0)
    assert uniformity(square, t=1.0) == pytest.approx(math.log((4 * math.exp(-2) + 2 * math.exp(-4)) / 6))
    with pytest.raises(ValueError, match="N >= 2"):
        uniformity(square[:1])


# ---------------------------------------------------------------- determinism


def test_same_seed_same_run_different_seed_different_run(digits):
    config = small_config(epochs=1)
    first = run_experiment(config, NTXent(), "ntxent", digits)
    again = run_experiment(config, NTXent(), "ntxent", digits)
    other = run_experiment(config.replace(seed=1), NTXent(), "ntxent", digits)
    assert first.step_losses == again.step_losses
    assert first.metrics == again.metrics
    assert other.step_losses != first.step_losses
    assert other.metrics.alignment != first.metrics.alignment


def test_pretraining_leaves_global_state_alone(digits):
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    pretrain(small_config(epochs=1, num_threads=1), NTXent(), digits)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


# ---------------------------------------------------------------- augmentations


@pytest.mark.parametrize("preset", ["standard", "extreme"])
@pytest.mark.parametrize("shape", [(16, 1, 8, 8), (16, 1, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augmentations_keep_shape_dtype_and_follow_the_generator(preset, shape, dtype):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x_copy = x.clone()
    fn = augment.PRESETS[preset]
    out = fn(x, torch.Generator().manual_seed(7))
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert torch.equal(x, x_copy)  # not in place
    assert torch.equal(out, fn(x, torch.Generator().manual_seed(7)))
    assert not torch.allclose(out, fn(x, torch.Generator().manual_seed(8)))
    twins = fn(x[:1].expand(2, *shape[1:]).contiguous(), torch.Generator().manual_seed(7))
    assert not torch.allclose(twins[0], twins[1])  # per-sample parameters


def test_extreme_views_differ_more_than_standard_views(digits):
    x = digits.x_train[:256]
    change, corr = {}, {}
    for name, fn in augment.PRESETS.items():
        g = torch.Generator().manual_seed(0)
        a, b = fn(x, g), fn(x, g)
        change[name] = float((a - x).pow(2).mean() / x.var())  # distance to the clean image
        fa, fb = (F.normalize(v.flatten(1) - v.flatten(1).mean(1, keepdim=True), dim=1) for v in (a, b))
        corr[name] = float((fa * fb).sum(1).mean())  # correlation between the two views
    assert change["extreme"] > 1.5 * change["standard"] > 0, change
    assert corr["standard"] > 2 * corr["extreme"] > 0, corr


def test_augmentation_input_validation():
    with pytest.raises(ValueError, match="expected a float tensor"):
        augment.standard(torch.zeros(4, 8, dtype=torch.float32), torch.Generator())
    with pytest.raises(ValueError, match="area"):
        augment.random_resized_crop(torch.zeros(4, 1, 8, 8), torch.Generator(), area=(0.5, 1.5))


# ---------------------------------------------------------------- domains


def test_domain_styles_are_deterministic_and_distinct(digits):
    x = digits.x_train[:64]
    outs = [style(x, d) for d in range(len(DOMAIN_STYLES))]
    for d, out in enumerate(outs):
        assert out.shape == x.shape and torch.equal(out, style(x, d))
    assert torch.equal(outs[0], x)
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            per_image = (outs[i] - outs[j]).abs().flatten(1).amax(1)
            assert (per_image > 0.05).float().mean() > 0.9, (DOMAIN_STYLES[i], DOMAIN_STYLES[j])


def test_domain_assignment_is_balanced_and_seeded():
    d = assign_domains(103, seed=0)
    assert torch.equal(d, assign_domains(103, seed=0)) and not torch.equal(d, assign_domains(103, seed=1))
    counts = torch.bincount(d, minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103
    x = torch.rand(103, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    styled = apply_domain_styles(x, d)
    for k in range(4):
        assert torch.equal(styled[d == k], style(x[d == k], k))
    with pytest.raises(ValueError, match="domains has shape"):
        apply_domain_styles(x, d[:5])


def test_domain_sweep_passes_domains_and_reports_domain_accuracy(tmp_path):
    made = []

    def factory(alpha, beta):
        def make():
            made.append(SoftDomainInfoNCE(alpha, beta))
            return made[-1]

        return make

    config = small_config(subset=128, batch_size=64, epochs=1, output_dir=str(tmp_path))
    sweep = run_domain_sweep({0.5: factory(0.5, 0.0), -0.5: factory(0.0, 0.5)}, config)
    assert sweep.keys == [-0.5, 0.5] and sweep.config.domains
    assert all(loss.calls == 2 for loss in made)
    rows = sweep.rows()
    for row in rows:
        assert 0.25 < row["domain_acc"]["mean"] <= 1.0  # 4 balanced domains: chance is 0.25
        assert 0.1 < row["class_acc"]["mean"] <= 1.0
    table = sweep.table()
    assert "+0.5" in table and "-0.5" in table and "domain acc" in table
    saved = json.loads((tmp_path / "domain_sweep.json").read_text())
    assert [r["alpha_minus_beta"] for r in saved["rows"]] == [-0.5, 0.5]
    assert matplotlib.image.imread(tmp_path / "domain_sweep.png").ndim == 3
    assert len(list((tmp_path / "runs").glob("alpha-beta=*_seed0.json"))) == 2


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset="cifar10"), "TrainConfig.dataset='cifar10'"),
        (dict(augmentation="heavy"), "TrainConfig.augmentation='heavy'"),
        (dict(epochs=0), "TrainConfig.epochs=0"),
        (dict(batch_size=1), "TrainConfig.batch_size=1"),
        (dict(lr=0.0), "TrainConfig.lr=0.0"),
        (dict(lr=math.nan), "TrainConfig.lr=nan"),
        (dict(weight_decay=-1e-4), "TrainConfig.weight_decay"),
        (dict(optimizer="lamb"), "TrainConfig.optimizer='lamb'"),
        (dict(seed=-1), "TrainConfig.seed=-1"),
        (dict(subset=1), "TrainConfig.subset=1"),
        (dict(embedding_dim=2.5), "TrainConfig.embedding_dim=2.5"),
        (dict(device="tpu:x"), "TrainConfig.device='tpu:x'"),
        (dict(dataset="mnist1d", domains=True), "TrainConfig.domains=True"),
        (dict(progress="yes"), "TrainConfig.progress='yes'"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        TrainConfig(**kwargs)


def test_config_round_trip_and_unknown_keys():
    config = TrainConfig(epochs=3, output_dir="out", subset=100)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="epoch"):
        TrainConfig.from_dict({"epoch": 3})


def test_data_dependent_limits_and_loss_contract(digits):
    with pytest.raises(ValueError, match=re.escape("TrainConfig.subset=5000")):
        load_dataset(TrainConfig(subset=5000))
    with pytest.raises(ValueError, match=re.escape("TrainConfig.batch_size=512")):
        pretrain(small_config(batch_size=512), NTXent(), digits)
    with pytest.raises(ValueError, match="expected a 0-dim tensor"):
        pretrain(small_config(epochs=1), lambda z_a, z_b: (z_a - z_b).pow(2).sum(1), digits)
    with pytest.raises(FloatingPointError, match="loss is nan"):
        pretrain(small_config(epochs=1), lambda z_a, z_b: z_a.sum() * math.nan, digits)
    with pytest.raises(ValueError, match="seeds"):
        run_comparison({"ntxent": NTXent}, seeds=[0, 0], config=small_config(), data=digits)


def _fake_run(name, seed, acc, knn):
    from otalign.experiments.evaluate import Metrics

    return RunResult(
        name=name,
        config=TrainConfig(seed=seed),
        epoch_losses=[1.0],
        step_losses=[1.0],
        metrics=Metrics(linear_probe_acc=acc, knn_acc=knn, alignment=0.1, uniformity=-2.0),
        timings={"pretrain": 1.0, "evaluate": 0.1, "total": 1.1},
    )


def test_seed_paired_differences_and_json_round_trip(tmp_path):
    from otalign.experiments.compare import Comparison

    accs = {"base": [0.90, 0.80, 0.70], "new": [0.91, 0.80, 0.75]}
    runs = [_fake_run(name, s, accs[name][s], 0.5) for name in accs for s in range(3)]
    cmp = Comparison(config=TrainConfig(), seeds=[0, 1, 2], runs=runs)
    d = cmp.differences()["new"]["linear_probe_acc"]
    diffs = np.array([0.01, 0.0, 0.05])
    assert d["mean"] == pytest.approx(diffs.mean())
    assert d["std"] == pytest.approx(diffs.std(ddof=1))
    assert (d["n"], d["wins"], d["ties"]) == (3, 2, 1)
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(3))  # paired t statistic, 2 degrees of freedom
    assert d["p_value"] == pytest.approx(2 * (1 - (0.5 + t / (2 * math.sqrt(2 + t * t)))))  # Student t, nu = 2
    assert cmp.differences()["new"]["knn_acc"]["p_value"] is None  # no spread: no test
    assert cmp.differences()["new"]["knn_acc"]["wins"] == 0
    # the unpaired std (0.1 per loss) hides what the paired one shows
    assert cmp.summary()["new"]["linear_probe_acc"]["std"] > 3 * d["std"]
    assert "2/3 higher" in cmp.differences_table()
    assert "base" in cmp.differences("new") and "new" not in cmp.differences("new")
    with pytest.raises(ValueError, match="baseline='nope'"):
        cmp.differences("nope")
    cmp.save(tmp_path)
    back = Comparison.load(tmp_path)
    assert back.differences() == cmp.differences()
    assert json.loads((tmp_path / "comparison.json").read_text())["differences"]["baseline"] == "base"
