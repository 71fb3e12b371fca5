"""The contrastive options in the experiment pipeline: new loss names and CLI options, and
``Comparison.combine`` (what ``make demo`` uses to pair two parallel processes)."""

import json

import pytest

from otalign import experiments as ex
from otalign.cli import main

TINY = ["--epochs", "1", "--subset", "128", "--batch-size", "64", "--no-progress", "--seeds", "0,1"]


def test_two_processes_combine_into_one_paired_comparison(tmp_path, capsys):
    assert main(["train", "--compare", "infonce", "--out", str(tmp_path / "a"), *TINY]) == 0
    assert main(["train", "--compare", "gca-uot-partition,iot-uni", "--n-iter", "2", "--robust", "scaling",
                 "--lam-scale", "authors", "--out", str(tmp_path / "b"), *TINY]) == 0
    a, b = ex.Comparison.load(tmp_path / "a"), ex.Comparison.load(tmp_path / "b")
    both = ex.Comparison.combine(a, b)
    assert both.names == ["infonce", "gca-uot-partition", "iot-uni"] and both.seeds == [0, 1]
    diffs = both.differences()  # to the first loss, infonce
    assert set(diffs) == {"gca-uot-partition", "iot-uni"}
    stats = diffs["gca-uot-partition"]["linear_probe_acc"]
    paired = [r.metrics.linear_probe_acc - a.runs[i].metrics.linear_probe_acc for i, r in enumerate(b.runs[:2])]
    assert stats["mean"] == pytest.approx(sum(paired) / 2, abs=1e-9)
    recorded = json.loads((tmp_path / "b" / "comparison.json").read_text())
    assert recorded["runs"][0]["name"] == "gca-uot-partition"
    with pytest.raises(ValueError, match="appear twice"):
        ex.Comparison.combine(a, a)
    with pytest.raises(ValueError, match="configurations differ"):
        ex.Comparison.combine(a, ex.Comparison(b.config.replace(epochs=2), b.seeds, b.runs))
    # one process per seed (what make demo does): losses in order, seeds the union
    seed0 = ex.Comparison(a.config, [0], [a.runs[0], b.runs[0]])
    seed1 = ex.Comparison(a.config, [1], [a.runs[1], b.runs[1]])
    by_seed = ex.Comparison.combine(seed0, seed1)
    assert by_seed.seeds == [0, 1] and by_seed.names == ["infonce", "gca-uot-partition"]
    assert by_seed.differences()["gca-uot-partition"]["linear_probe_acc"]["mean"] == pytest.approx(
        stats["mean"], abs=1e-12)


def test_named_losses_take_the_new_options():
    p = ex.LossParams(epsilon=0.3, n_iter=3, robust="partition", lam_scale="authors", readout="raw", lambda_p=0.4)
    uot = ex.loss_factory("gca-uot", p)()
    robust = uot.divergence.parts()[1][1]
    assert (robust.form, robust.lam_scale, uot.readout) == ("partition", "authors", "raw")
    assert ex.loss_factory("gca-uot-scaling", p)().divergence.parts()[1][1].form == "scaling"
    assert ex.loss_factory("iot-uni", p)().lambda_p == 0.4
    assert ex.loss_factory("rince", p)().divergence.lam_scale == "authors"
    with pytest.raises(ValueError, match="lam_scale="):
        ex.loss_factory("gca-rince", ex.LossParams(lam_scale="paper"))
