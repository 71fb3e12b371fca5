"""Every numeric option of every subcommand is checked at parse time (issue 10, item 18).

Properties: a random value for any numeric option either is rejected by argparse (exit status 2,
a message naming the option) or is a value the library accepts; random values for the options of
``otalign train`` that do not scale the run time either train, fail as a run (status 1, one line),
or are rejected (status 2), never with a traceback.
"""

import argparse
import contextlib
import io
import math
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otalign import bench
from otalign import contrastive as cl
from otalign import experiments as ex
from otalign.cli import build_parser, main
from otalign.cli_args import MAX_COUNT, available_cpus, integer, integer_list, real, real_list
from otalign.experiments.run import _check_seeds
from otalign.experiments.sweep import sweep_name


def subparsers():
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def typed_options(sub):
    return {a.option_strings[-1] for a in subparsers()[sub]._actions if a.option_strings and a.type is not None}


def parse(argv):
    """(namespace or None, exit status, stderr) of parsing ``argv``."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(argv), 0, err.getvalue()
        except SystemExit as exc:
            return None, exc.code, err.getvalue()


# ---------------------------------------------------------------- the type functions


def test_integer_and_real_types():
    count = integer(1, 10)
    assert count("3") == 3 and count(" 7 ") == 7
    for bad in ["0", "11", "2.5", "1e3", "", "x", "nan"]:
        with pytest.raises(argparse.ArgumentTypeError):
            count(bad)
    positive = real(0.0, low_open=True)
    assert positive("1e-300") == 1e-300 and positive("2") == 2.0
    for bad in ["0", "-1", "nan", "inf", "-inf", "1e400", "x", ""]:
        with pytest.raises(argparse.ArgumentTypeError):
            positive(bad)
    rho = real(0.0, low_open=True, allow_inf=True)
    assert rho("inf") == math.inf
    with pytest.raises(argparse.ArgumentTypeError):
        rho("nan")
    unit = real(0.0, 1.0, low_open=True)
    assert unit("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"'1.5'; expected a finite number > 0 and <= 1"):
        unit("1.5")
    assert integer_list(0)("0, 2,1") == [0, 2, 1]
    with pytest.raises(argparse.ArgumentTypeError, match="repeats"):
        integer_list(0)("1,1")
    with pytest.raises(argparse.ArgumentTypeError, match="empty item"):
        integer_list(0)("1,,2")
    with pytest.raises(argparse.ArgumentTypeError, match="repeats"):
        real_list(-1, 1, key=sweep_name)("0.1,0.1000001")
    with pytest.raises(argparse.ArgumentTypeError, match="expected"):
        real(0.0, low_open=True)("x" * 10_000)


def test_every_numeric_option_is_covered_by_the_properties():
    """A new numeric option must be added to ACCEPTS below (and thereby checked)."""
    for sub in ("demo", "train", "bench"):
        assert typed_options(sub) - {"--compare"} == set(ACCEPTS[sub]), sub


# ---------------------------------------------------------------- what the library accepts


def _train_config(field):
    return lambda v: ex.TrainConfig(**{field: v})


Z = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))


def _loss_params(field):
    """Build every named loss with the value and call it on a tiny batch (a lazily checked value,
    such as GCA-UOT's rho, raises only then); the iterations are capped to keep this fast."""

    def check(v):
        params = ex.LossParams(**{field: v})
        for name in ex.LOSS_NAMES:
            ex.loss_factory(name, params)()
            if field != "n_iter":
                ex.loss_factory(name, params.replace(n_iter=3))()(Z[0], Z[1])

    return check


def _sweep(values):
    assert len({sweep_name(v) for v in values}) == len(values)
    for d in values:
        cl.DomainTarget(max(d, 0.0), max(-d, 0.0))


ACCEPTS = {
    "demo": {
        "--seed": lambda v: torch.Generator().manual_seed(v),
        "--epsilon": lambda v: (math.isfinite(v) and v >= sys.float_info.min and math.isfinite(1.0 / v)) or pytest.fail(v),
    },
    "train": {
        "--epsilon": _loss_params("epsilon"),
        "--n-iter": _loss_params("n_iter"),
        "--q": _loss_params("q"),
        "--lam": _loss_params("lam"),
        "--rho": _loss_params("rho"),
        "--r1": _loss_params("r1"),
        "--r2": _loss_params("r2"),
        "--lambda-p": _loss_params("lambda_p"),
        "--epochs": _train_config("epochs"),
        "--batch-size": _train_config("batch_size"),
        "--lr": _train_config("lr"),
        "--seed": _train_config("seed"),
        "--subset": _train_config("subset"),
        "--threads": _train_config("num_threads"),
        "--seeds": _check_seeds,
        "--sweep": _sweep,
    },
    "bench": {
        "--repeats": lambda v: bench.BenchSettings.create(repeats=v),
        "--iters": lambda v: bench.BenchSettings.create(fixed_iters=v),
        "--max-iter": lambda v: bench.BenchSettings.create(max_iter=v),
        "--threads": lambda v: bench.BenchSettings.create(threads=v),
        "--target": lambda v: bench.BenchSettings.create(target=v),
        "--budget": lambda v: bench.BenchSettings.create(budget_s=v),
    },
}
ATTRIBUTES = {"--n-iter": "n_iter", "--batch-size": "batch_size", "--max-iter": "max_iter"}

number_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(width=32, allow_nan=False).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-3, 12).map(str),
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-0", "0.0", "1_000", "0x10",
                     "1e-320", "5e-324", "2147483648", str(MAX_COUNT), "9223372036854775808", "three", "½", "1,2"]),
    st.text(max_size=6),
)
list_text = st.lists(number_text, min_size=1, max_size=4).map(",".join)
options = st.sampled_from([(sub, opt) for sub in ACCEPTS for opt in ACCEPTS[sub]])


@settings(max_examples=400, deadline=None)
@given(where=options, data=st.data())
def test_random_values_of_numeric_options_are_rejected_with_status_2_or_accepted_by_the_library(where, data):
    sub, opt = where
    text = data.draw(list_text if opt in ("--seeds", "--sweep") else number_text, label="value")
    args, code, err = parse([sub, f"{opt}={text}"])
    if args is None:
        assert code == 2 and f"argument {opt}" in err and "Traceback" not in err, err
        assert len(err) < 2000
        return
    value = getattr(args, ATTRIBUTES.get(opt, opt.lstrip("-").replace("-", "_")))
    ACCEPTS[sub][opt](value)  # raises if the library rejects what the parser let through


#: Mostly values in range, so that most examples train.
plausible_text = st.one_of(st.floats(1e-45, 3.5e38).map(repr), st.integers(0, 10**6).map(str), st.floats(0.0, 1.0).map(repr))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(opt=st.sampled_from(["--epsilon", "--q", "--lam", "--rho", "--r1", "--r2", "--lr", "--seed", "--threads", "--batch-size"]),
       text=st.one_of(plausible_text, plausible_text, number_text))
def test_random_training_options_train_fail_as_a_run_or_exit_2_never_a_traceback(tmp_path_factory, opt, text):
    """End to end (tiny GCA-UOT runs, which read every loss hyper-parameter). Options whose
    accepted values scale the run time (--epochs, --n-iter, --subset) are covered by the parse
    property above."""
    out = tmp_path_factory.getbasetemp() / "e2e"
    argv = ["train", "--loss", "gca-uot", "--n-iter", "2", "--epochs", "1", "--subset", "64", "--batch-size", "32",
            "--no-progress", "--overwrite", "--out", str(out), f"{opt}={text}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    err = err.getvalue()
    assert "Traceback" not in err
    assert code in (0, 1, 2), (code, err)
    if code == 2:
        assert f"argument {opt}" in err or "--batch-size" in err, err
    if code == 1:
        assert "a run failed" in err, err


def test_demo_and_bench_accept_their_documented_ranges():
    args, code, _ = parse(["demo", "--epsilon", "1e-9", "--seed", str(2**63 - 1)])
    assert code == 0 and args.epsilon == 1e-9
    args, code, _ = parse(["bench", "--threads", str(available_cpus()), "--max-iter", str(MAX_COUNT)])
    assert code == 0 and args.threads == available_cpus()
    _, code, err = parse(["bench", "--threads", str(available_cpus() + 1)])
    assert code == 2 and "--threads" in err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed="3"), "seed='3'"),
        (dict(seed=True), "seed=True"),
        (dict(seed=-1), "seed=-1"),
        (dict(seed=2**64), "seed="),
        (dict(seed=1.0), "seed=1.0"),
        (dict(epsilon=math.nan), "epsilon=nan"),
        (dict(epsilon="0.05"), "epsilon='0.05'"),
        (dict(epsilon=True), "epsilon=True"),
        (dict(epsilon=1e-320), "epsilon=1e-320"),
        (dict(epsilon=math.inf), "epsilon=inf"),
    ],
)
def test_run_demo_rejects_bad_arguments_before_any_work(kwargs, match):
    from otalign.demo import run_demo

    with pytest.raises(ValueError, match=match):
        run_demo(**kwargs)
