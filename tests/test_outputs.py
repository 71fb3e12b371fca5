"""Output directories of the experiment pipeline (issue 10, items 19, 20, 21): checked before any
work, resumed rather than overwritten, refused when they hold other settings, written atomically,
and summaries never older than the run records.

The bookkeeping tests replace ``pretrain`` and ``evaluate`` by fast deterministic fakes (they are
not what is tested here; tests/test_experiments.py and tests/test_train_cli.py train for real).
"""

import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otalign import experiments as ex
from otalign.experiments import outputs
from otalign.experiments import compare as compare_module
from otalign.experiments import run as run_module
from otalign.experiments.evaluate import Metrics
from otalign.experiments.files import atomic_write, atomic_write_text
from otalign.experiments.results import RunResult, run_filename, write_json
from otalign.experiments.train import TrainResult


class FakeTraining:
    """``pretrain`` / ``evaluate`` stand-ins: metrics are a function of the loss's ``tag``, the
    seed and the settings; ``interrupt_at`` raises KeyboardInterrupt at that (0-based) run. The
    comparison's bar plot is replaced by a small file written the same (atomic) way."""

    def __init__(self, monkeypatch, interrupt_at=None):
        self.calls = 0
        self.interrupt_at = interrupt_at
        monkeypatch.setattr(run_module, "pretrain", self.pretrain)
        monkeypatch.setattr(run_module, "evaluate", self.evaluate)
        monkeypatch.setattr(run_module, "load_dataset", lambda config: "data")
        monkeypatch.setattr(compare_module, "bar_plot", lambda summary, metrics, labels, path, title: atomic_write_text(path, title))

    def pretrain(self, config, loss_fn, data=None):
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls += 1
        value = float(loss_fn()) + config.seed + config.epochs
        return TrainResult(config, model=value, data=data, step_losses=[value], epoch_losses=[value], seconds=0.01)

    def evaluate(self, model, data, config):
        return Metrics(linear_probe_acc=model % 1, knn_acc=0.5, alignment=model, uniformity=-model)


class Tagged:
    """A loss factory with a description (like the named losses)."""

    def __init__(self, tag: float):
        self.tag = tag

    def __call__(self):
        return lambda: self.tag

    def describe(self):
        return {"loss": "tagged", "tag": self.tag}


def config(tmp_path, **kw):
    return ex.TrainConfig(output_dir=str(tmp_path / "out"), progress=False, **kw)


def records(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((directory / "runs").glob("*.json"))}


def stray_files(directory: Path) -> list[str]:
    return [str(p) for p in directory.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ item 19: the directory is checked before any work


def test_an_output_path_under_a_regular_file_fails_before_training(tmp_path, monkeypatch):
    fake = FakeTraining(monkeypatch)
    (tmp_path / "somefile").write_text("not a directory")
    bad = ex.TrainConfig(output_dir=str(tmp_path / "somefile" / "res"), progress=False)
    for call in (lambda: ex.run_comparison({"a": Tagged(1.0)}, [0], bad),
                 lambda: ex.run_grid({"a": Tagged(1.0)}, [0], bad),
                 lambda: ex.run_experiment(bad, Tagged(1.0)(), "a", data="data"),
                 lambda: ex.run_domain_sweep({0.5: Tagged(1.0)}, bad, data=None)):
        with pytest.raises(ValueError, match=r"output_dir=.*somefile/res.* cannot hold results: Not a directory"):
            call()
    assert fake.calls == 0
    (tmp_path / "plainfile").write_text("x")
    with pytest.raises(ValueError, match="cannot hold results"):
        outputs.prepare_output_dir(tmp_path / "plainfile")
    assert outputs.prepare_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert (tmp_path / "new" / "deeper" / "runs").is_dir() and not stray_files(tmp_path)


# ------------------------------------------------------------------ item 20: resume identical runs, refuse others


def test_resume_reuses_identical_records_and_trains_only_new_runs(tmp_path, monkeypatch):
    fake = FakeTraining(monkeypatch)
    cfg = config(tmp_path, epochs=2)
    first = ex.run_comparison({"a": Tagged(0.25)}, [0, 1], cfg, resume=True)
    before = records(tmp_path / "out")
    assert fake.calls == 2 and len(before) == 2
    again = ex.run_comparison({"a": Tagged(0.25), "b": Tagged(0.5)}, [0, 1], cfg, resume=True)
    assert fake.calls == 4  # only b's two runs were trained
    after = records(tmp_path / "out")
    assert {k: after[k] for k in before} == before  # a's records untouched
    assert [r.to_dict() for r in again.runs[:2]] == [r.to_dict() for r in first.runs]
    assert json.loads((tmp_path / "out" / "comparison.json").read_text())["summary"].keys() == {"a", "b"}


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(config=dict(epochs=3)), r"a_seed0.json was recorded with epochs=2 \(now 3\)"),
        (dict(config=dict(lr=1e-3)), r"recorded with lr=0.003 \(now 0.001\)"),
        (dict(tag=0.75), r"a_seed0.json was recorded with loss 'a' tag=0.25 \(now 0.75\)"),
    ],
)
def test_resume_refuses_a_directory_of_other_settings_before_any_work(tmp_path, monkeypatch, change, match):
    fake = FakeTraining(monkeypatch)
    ex.run_comparison({"a": Tagged(0.25)}, [0], config(tmp_path, epochs=2), resume=True)
    before = records(tmp_path / "out")
    other = config(tmp_path, **{"epochs": 2, **change.get("config", {})})
    with pytest.raises(ex.ResultConflict, match=match):
        ex.run_comparison({"a": Tagged(change.get("tag", 0.25))}, [0, 1], other, resume=True)
    assert fake.calls == 1 and records(tmp_path / "out") == before
    assert (tmp_path / "out" / "comparison.json").exists()  # nothing removed either


def test_resume_refuses_unreadable_and_misnamed_records(tmp_path, monkeypatch):
    FakeTraining(monkeypatch)
    cfg = config(tmp_path)
    ex.run_grid({"a": Tagged(0.25)}, [0, 1], cfg, resume=True)
    runs = tmp_path / "out" / "runs"
    os.replace(runs / "a_seed1.json", runs / "a_seed2.json")  # a record under another run's name
    with pytest.raises(ex.ResultConflict, match=r"a_seed2.json holds the run of 'a' with seed 1"):
        ex.run_grid({"a": Tagged(0.25)}, [2], cfg, resume=True)
    (runs / "a_seed2.json").write_text('{"name": "a", "conf')
    with pytest.raises(ex.ResultConflict, match=r"a_seed2.json is not a readable run record"):
        ex.run_grid({"a": Tagged(0.25)}, [0], cfg, resume=True)


def test_a_record_without_loss_description_is_not_matched_to_a_described_loss(tmp_path, monkeypatch):
    FakeTraining(monkeypatch)
    cfg = config(tmp_path)
    ex.run_grid({"a": lambda: (lambda: 0.25)}, [0], cfg, resume=True)  # a plain factory: loss=None
    assert RunResult.load(tmp_path / "out" / "runs" / "a_seed0.json").loss is None
    with pytest.raises(ex.ResultConflict, match="without a loss description"):
        ex.run_grid({"a": Tagged(0.25)}, [0], cfg, resume=True)


def test_without_resume_runs_are_trained_again_and_replace_their_records(tmp_path, monkeypatch):
    fake = FakeTraining(monkeypatch)
    cfg = config(tmp_path)
    ex.run_grid({"a": Tagged(0.25)}, [0], cfg)
    ex.run_grid({"a": Tagged(0.75)}, [0], cfg)
    assert fake.calls == 2
    assert RunResult.load(tmp_path / "out" / "runs" / "a_seed0.json").loss == {"loss": "tagged", "tag": 0.75}


def test_clear_results_removes_only_result_files(tmp_path, monkeypatch):
    FakeTraining(monkeypatch)
    ex.run_comparison({"a": Tagged(0.25)}, [0, 1], config(tmp_path), resume=True)
    (tmp_path / "out" / "notes.txt").write_text("mine")
    removed = outputs.clear_results(tmp_path / "out")
    assert sorted(p.name for p in removed) == ["a_seed0.json", "a_seed1.json", "comparison.json", "comparison.png"]
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine" and not records(tmp_path / "out")


# ------------------------------------------------------------------ item 21: atomic writes, summaries never stale


class HalfWriter:
    """A file whose ``write`` writes half of the data, then is interrupted (Ctrl-C)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


def interrupt_writes(monkeypatch):
    real_open = io.open

    def flaky_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfWriter(f) if "w" in mode else f

    monkeypatch.setattr(io, "open", flaky_open)


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    """Regression: records were written with Path.write_text, which truncates first, so Ctrl-C
    during a write left a cut JSON file."""
    path = tmp_path / "runs" / "a_seed0.json"
    write_json(path, {"old": list(range(100))})
    old = path.read_text()
    with monkeypatch.context() as m:
        interrupt_writes(m)
        with pytest.raises(KeyboardInterrupt):
            write_json(path, {"new": list(range(1000))})
    assert path.read_text() == old and json.loads(old)["old"][-1] == 99
    assert not stray_files(tmp_path)


def test_atomic_writes_replace_the_file_and_keep_its_mode(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "one")
    os.chmod(path, 0o640)
    atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_text() == "two" and (path.stat().st_mode & 0o777) == 0o640
    def fail_midway(f):
        f.write(b"three")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail_midway)
    assert path.read_text() == "two" and not stray_files(tmp_path)


def test_an_interrupted_comparison_leaves_no_stale_summary_and_resumes(tmp_path, monkeypatch):
    """Regression: Ctrl-C mid-comparison left the new run records beside the old comparison.json."""
    cfg = config(tmp_path)
    FakeTraining(monkeypatch)
    ex.run_comparison({"a": Tagged(0.25)}, [0], cfg, resume=True)
    assert (tmp_path / "out" / "comparison.json").exists()
    fake = FakeTraining(monkeypatch, interrupt_at=1)
    with pytest.raises(KeyboardInterrupt):
        ex.run_comparison({"a": Tagged(0.25), "b": Tagged(0.5)}, [0, 1], cfg, resume=True)
    out = tmp_path / "out"
    assert sorted(records(out)) == ["a_seed0.json", "a_seed1.json"]  # a_seed1 finished, b_seed0 was interrupted
    assert not (out / "comparison.json").exists() and not (out / "comparison.png").exists()
    fake = FakeTraining(monkeypatch)
    cmp = ex.run_comparison({"a": Tagged(0.25), "b": Tagged(0.5)}, [0, 1], cfg, resume=True)
    assert fake.calls == 2  # b's runs only
    assert_consistent(out)
    assert len(cmp.runs) == 4


def assert_consistent(out: Path, one_setting: bool = True) -> None:
    """The directory invariants: one setting per directory (unless runs were forced in without
    resume), every summary describes exactly records of runs/ (same content), no temporary files."""
    recs = {name: json.loads(text) for name, text in records(out).items()}
    settings_seen = {json.dumps(outputs.run_settings(ex.TrainConfig.from_dict(r["config"])), sort_keys=True) for r in recs.values()}
    assert len(settings_seen) <= 1 or not one_setting
    for summary in ("comparison.json", "domain_sweep.json"):
        path = out / summary
        if path.exists():
            for run in json.loads(path.read_text())["runs"]:
                name = run_filename(run["name"], run["config"]["seed"])
                assert name in recs, f"{summary} lists {name}, which runs/ does not hold"
                assert recs[name] == run, f"{summary} differs from runs/{name}"
    assert not stray_files(out)


commands = st.lists(
    st.fixed_dictionaries({
        "losses": st.sets(st.sampled_from(["a", "b"]), min_size=1),
        "seeds": st.sets(st.integers(0, 2), min_size=1),
        "epochs": st.sampled_from([1, 2]),
        "tag": st.sampled_from([0.25, 0.5]),
        "mode": st.sampled_from(["resume", "overwrite", "plain"]),
        "interrupt_at": st.one_of(st.none(), st.integers(0, 3)),
    }),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmds=commands)
def test_any_sequence_of_commands_keeps_the_directory_consistent(tmp_path_factory, monkeypatch, cmds):
    """Property (the class of items 20-21): whatever comparisons run into one directory, with
    resume, --overwrite or neither, and wherever they are interrupted, the summaries never
    describe other records than those of runs/, resumed runs are never retrained, a refused
    command changes nothing, and no temporary file is left."""
    tmp = tmp_path_factory.mktemp("seq")
    out = tmp / "out"
    forced = False  # resume=False replaces records whatever the directory holds (the library's default)
    for cmd in cmds:
        forced |= cmd["mode"] == "plain"
        cfg = ex.TrainConfig(output_dir=str(out), progress=False, epochs=cmd["epochs"])
        factories = {name: Tagged(cmd["tag"] + (name == "b")) for name in sorted(cmd["losses"])}
        before = records(out) if out.exists() else {}
        if cmd["mode"] == "overwrite" and out.exists():
            outputs.clear_results(out)
        fake = FakeTraining(monkeypatch, interrupt_at=cmd["interrupt_at"])
        try:
            ex.run_comparison(factories, sorted(cmd["seeds"]), cfg, resume=cmd["mode"] != "plain")
        except ex.ResultConflict:
            assert cmd["mode"] == "resume" and records(out) == before and fake.calls == 0
        except KeyboardInterrupt:
            assert not (out / "comparison.json").exists() or fake.calls == 0
        else:
            planned = {run_filename(n, s) for n in factories for s in cmd["seeds"]}
            if cmd["mode"] == "resume":
                assert fake.calls == len(planned - set(before))
                assert all(records(out)[k] == before[k] for k in planned & set(before))
            assert (out / "comparison.json").exists()
        assert_consistent(out, one_setting=not forced)
