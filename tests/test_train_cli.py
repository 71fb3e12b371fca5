"""`otalign train`: the losses by name, the CLI wiring, and a tiny end-to-end run per mode."""

import json

import pytest
import torch

from otalign import contrastive as cl
from otalign import experiments as ex
from otalign.cli import main


def test_every_named_loss_is_the_contrastive_preset():
    expected = {"infonce": cl.InfoNCE, "rince": cl.RINCE, "gca-infonce": cl.GCAInfoNCE,
                "gca-rince": cl.GCARINCE, "gca-uot": cl.GCAUOT, "gca-uot-scaling": cl.GCAUOT,
                "gca-uot-partition": cl.GCAUOT, "iot": cl.IOT, "iot-uni": cl.IOTUni}
    assert set(ex.LOSS_NAMES) == set(expected)
    params = ex.LossParams(epsilon=0.3, n_iter=4, q=0.5, lam=0.02, rho=0.7, r1=0.6, r2=0.4, robust="partition",
                           lambda_p=0.3)
    z_a, z_b = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    uot = dict(rho=0.7, lam=0.02, q=0.5, r1=0.6, r2=0.4)
    direct = {"infonce": cl.InfoNCE(0.3), "rince": cl.RINCE(0.3, q=0.5, lam=0.02), "gca-infonce": cl.GCAInfoNCE(0.3, 4),
              "gca-rince": cl.GCARINCE(0.3, 4, q=0.5, lam=0.02, robust="partition"),
              "gca-uot": cl.GCAUOT(0.3, 4, robust="partition", **uot),
              "gca-uot-scaling": cl.GCAUOT(0.3, 4, robust="scaling", **uot),
              "gca-uot-partition": cl.GCAUOT(0.3, 4, robust="partition", **uot),
              "iot": cl.IOT(0.3, 4), "iot-uni": cl.IOTUni(0.3, 4, lambda_p=0.3)}
    for name in ex.LOSS_NAMES:
        loss = ex.loss_factory(name, params)()
        assert type(loss) is expected[name]
        assert float(loss(z_a, z_b)) == pytest.approx(float(direct[name](z_a, z_b)), abs=1e-12)
    d = torch.tensor([0, 1, 0, 1, 2, 2])
    dom = ex.domain_loss_factory("gca-infonce", 0.5, 0.1, params)()
    ref = cl.GCAInfoNCE(0.3, 4, target=cl.DomainTarget(0.5, 0.1))
    assert float(dom(z_a, z_b, domains=d)) == pytest.approx(float(ref(z_a, z_b, domains=d)), abs=1e-12)


def test_bad_names_and_hyper_parameters_fail_before_training():
    with pytest.raises(ValueError, match="loss='simclr'"):
        ex.loss_factory("simclr")
    with pytest.raises(ValueError, match="q="):
        ex.loss_factory("rince", ex.LossParams(q=2.0))
    with pytest.raises(ValueError, match="robust="):
        ex.loss_factory("gca-uot", ex.LossParams(robust="rows"))
    with pytest.raises(SystemExit):
        main(["train", "--loss", "gca-uot", "--readout", "rows", "--epochs", "1"])
    with pytest.raises(SystemExit):
        main(["train", "--compare", "infonce,nope", "--epochs", "1"])


TINY = ["--epochs", "1", "--subset", "256", "--batch-size", "64", "--no-progress"]


def test_single_run_compare_and_domain_sweep_write_their_results(tmp_path, capsys):
    assert main(["train", "--loss", "gca-uot", "--n-iter", "3", "--out", str(tmp_path / "one"), *TINY]) == 0
    runs = list((tmp_path / "one" / "runs").glob("*.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["name"] == "gca-uot"
    assert "linear probe" in capsys.readouterr().out

    assert main(["train", "--compare", "infonce,gca-infonce", "--seeds", "0,1", "--n-iter", "2",
                 "--out", str(tmp_path / "cmp"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "infonce" in out and "gca-infonce" in out and "+-" in out
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(summary["summary"]) == {"infonce", "gca-infonce"}
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0

    assert main(["train", "--domain-sweep", "--loss", "gca-infonce", "--sweep=-0.5,0.5", "--seeds", "0",
                 "--n-iter", "2", "--out", str(tmp_path / "dom"), *TINY]) == 0
    sweep = json.loads((tmp_path / "dom" / "domain_sweep.json").read_text())
    assert len(sweep["rows"]) == 2
    assert (tmp_path / "dom" / "domain_sweep.png").exists()
