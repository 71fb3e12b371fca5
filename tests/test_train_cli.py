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


# ---------------------------------------------------------------- issue 10, items 18-21: the CLI's input and its output directory

import contextlib  # noqa: E402
import io  # noqa: E402

from otalign.experiments import run as run_module  # noqa: E402


def run_cli(argv):
    """``main(argv)`` in-process: (exit status, stdout, stderr); a traceback fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a run was trained")

    monkeypatch.setattr(run_module, "pretrain", fail)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--epsilon", "nan"], "argument --epsilon: 'nan'; expected a finite number"),
        (["demo", "--epsilon", "-1"], "argument --epsilon"),
        (["demo", "--seed", "-3"], "argument --seed"),
        (["train", "--rho", "0"], "argument --rho: '0'; expected a number > 0"),
        (["train", "--rho", "nan"], "argument --rho"),
        (["train", "--epsilon", "inf"], "argument --epsilon"),
        (["train", "--r1", "nan"], "argument --r1"),
        (["train", "--lr", "1e300"], "argument --lr"),
        (["train", "--epochs", "0"], "argument --epochs"),
        (["train", "--n-iter", "2.5"], "argument --n-iter"),
        (["train", "--seeds", "0,0"], "repeats a value"),
        (["train", "--compare", "infonce,infonce"], "repeats a loss"),
        (["train", "--domain-sweep", "--sweep=0.1,0.1000001"], "repeats a value"),
        (["train", "--threads", "100000"], "argument --threads"),
        (["train", "--batch-size", "100", "--subset", "50"], "--batch-size 100 is larger than the 50 training samples"),
        (["train", "--batch-size", "5000"], "--batch-size 5000 is larger than the 1347 training samples of digits"),
        (["train", "--subset", "100000"], "subset=100000; expected at most 1347"),
        (["train", "--seeds", "0,1"], "--seeds applies to --compare"),
        (["train", "--compare", "infonce", "--seed", "3"], "--seed applies to a single run"),
        (["train", "--compare", "infonce", "--domain-sweep"], "not allowed with argument"),
        (["train", "--r1", "0", "--r2", "0"], "identically zero"),
        (["train", "--dataset", "mnist1d", "--domain-sweep"], "domains"),
    ],
)
def test_bad_numbers_end_in_a_usage_message_with_status_2(argv, message, tmp_path, monkeypatch):
    """Regression (item 18): these were tracebacks with status 1 (or reached the library)."""
    forbid_training(monkeypatch)
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "out"), "--no-progress"]
    code, out, err = run_cli(argv)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_an_output_path_under_a_file_fails_before_training(tmp_path, monkeypatch):
    """Regression (item 19): ``--out somefile/res`` trained and evaluated, then lost the run."""
    forbid_training(monkeypatch)
    (tmp_path / "somefile").write_text("x")
    code, _, err = run_cli(["train", "--loss", "infonce", *TINY, "--out", str(tmp_path / "somefile" / "res")])
    assert code == 2 and "somefile/res" in err and "Not a directory" in err


def test_rerunning_resumes_refuses_other_settings_and_overwrites_on_request(tmp_path, monkeypatch):
    """Regression (item 20): a rerun into the same --out silently replaced runs/*.json."""
    out = str(tmp_path / "out")
    base = ["train", "--compare", "infonce,gca-infonce", "--seeds", "0", "--n-iter", "2", *TINY, "--out", out]
    assert run_cli(base)[0] == 0
    runs = tmp_path / "out" / "runs"
    first = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert sorted(first) == ["gca-infonce_seed0.json", "infonce_seed0.json"]
    with monkeypatch.context() as m:  # the same command: every run is read back, none trained
        forbid_training(m)
        code, out_text, err = run_cli(base)
        assert code == 0 and "2 of 2 run(s) already recorded" in err and "gca-infonce" in out_text
        code, _, err = run_cli([*base, "--epsilon", "0.3"])  # other hyper-parameters: refused
        assert code == 2 and "epsilon=0.5 (now 0.3)" in err and "--overwrite" in err
        code, _, err = run_cli([*base[:-2], "--epochs", "2", "--out", out])  # other settings: refused
        assert code == 2 and "epochs=1 (now 2)" in err
    assert {p.name: p.read_text() for p in runs.glob("*.json")} == first
    code, _, err = run_cli([*base, "--epsilon", "0.3", "--overwrite"])
    assert code == 0 and "removed" in err
    records = {p.name: json.loads(p.read_text()) for p in runs.glob("*.json")}
    assert sorted(records) == sorted(first) and all(r["loss"]["epsilon"] == 0.3 for r in records.values())
    assert {r["loss"]["loss"] for r in records.values()} == {"infonce", "gca-infonce"}


def test_ctrl_c_mid_comparison_leaves_consistent_results_and_the_rerun_completes(tmp_path, monkeypatch):
    """Regression (item 21): an interrupted comparison left new records beside the old
    comparison.json; now the summary is removed before new records are written and rewritten by
    the rerun, which resumes the finished runs."""
    out = tmp_path / "out"
    assert run_cli(["train", "--compare", "infonce", "--seeds", "0", *TINY, "--out", str(out)])[0] == 0
    real = run_module.pretrain
    calls, interrupt = [], [True]

    def interrupted_second_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and interrupt.pop():
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "pretrain", interrupted_second_run)
    cmd = ["train", "--compare", "infonce,rince", "--seeds", "0,1", *TINY, "--out", str(out)]
    code, _, err = run_cli(cmd)
    assert code == 130 and "rerun the same command" in err
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == ["infonce_seed0.json", "infonce_seed1.json"]
    assert not (out / "comparison.json").exists() and not list(out.rglob("*.tmp"))
    calls.clear()
    interrupt.append(False)
    code, _, err = run_cli(cmd)
    assert code == 0 and len(calls) == 2 and "2 of 4 run(s) already recorded" in err
    summary = json.loads((out / "comparison.json").read_text())
    assert len(summary["runs"]) == 4
    for run in summary["runs"]:
        assert json.loads((out / "runs" / f"{run['name']}_seed{run['config']['seed']}.json").read_text()) == run


def test_train_help_documents_the_output_directory(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "resumes" in text and "--overwrite" in text and "exit status" in text
