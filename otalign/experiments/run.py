"""Complete runs: pretrain with a loss, evaluate, record (and write) the result; grids of runs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from tqdm.auto import tqdm

from .config import TrainConfig
from .data import Dataset, load_dataset
from .evaluate import evaluate
from .outputs import RUNS_DIR, prepare_output_dir, remove_summaries, reusable_runs
from .results import RunResult, run_filename
from .train import LossFn, pretrain

__all__ = ["run_experiment", "run_grid", "describe_loss", "LossFactory"]

#: A zero-argument callable returning a fresh loss ``loss(z_a, z_b, **kw) -> 0-dim tensor``.
#: It may have a ``describe()`` method returning its name and hyper-parameters (see
#: :func:`describe_loss`).
LossFactory = Callable[[], LossFn]


def describe_loss(factory: Any) -> Optional[dict[str, Any]]:
    """``factory.describe()`` (a JSON-compatible dict naming the loss and its hyper-parameters),
    or None when the factory has no such method. Recorded in every run's record and compared when
    runs are resumed, so that a run is never reused for a loss with other hyper-parameters."""
    describe = getattr(factory, "describe", None)
    if not callable(describe):
        return None
    description = describe()
    try:
        if not isinstance(description, dict) or json.loads(json.dumps(description, allow_nan=False)) != description:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            f"{factory!r}.describe() returned {str(description)[:120]}; expected a dict of JSON values "
            "(strings, finite numbers, lists, dicts)"
        ) from None
    return description


def run_experiment(
    config: TrainConfig,
    loss_fn: LossFn,
    name: str,
    data: Optional[Dataset] = None,
    *,
    loss: Optional[dict[str, Any]] = None,
) -> RunResult:
    """Pretrain with ``loss_fn`` (see :func:`~otalign.experiments.train.pretrain`), evaluate the
    frozen features (:func:`~otalign.experiments.evaluate.evaluate`) and return the record.

    With ``config.output_dir`` set, the directory is checked (created, writable) before training,
    and the record is written to ``<output_dir>/runs/<name>_seed<seed>.json`` (atomically, after
    removing the directory's comparison / sweep summaries, which no longer describe ``runs/``; see
    :mod:`~otalign.experiments.outputs`). ``data``: as for ``pretrain``. ``loss``: the loss's
    description, recorded as :attr:`RunResult.loss`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r}; expected a non-empty string naming the loss")
    if config.output_dir is not None:
        prepare_output_dir(config.output_dir)
    start = time.perf_counter()
    trained = pretrain(config, loss_fn, data)
    eval_start = time.perf_counter()
    metrics = evaluate(trained.model, trained.data, config)
    end = time.perf_counter()
    result = RunResult(
        name=name,
        config=config,
        epoch_losses=trained.epoch_losses,
        step_losses=trained.step_losses,
        metrics=metrics,
        timings={"pretrain": trained.seconds, "evaluate": end - eval_start, "total": end - start},
        loss=loss,
    )
    if config.output_dir is not None:
        remove_summaries(config.output_dir)
        result.save(Path(config.output_dir) / RUNS_DIR / run_filename(name, config.seed))
    return result


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if (
        not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ValueError(f"seeds={seeds!r}; expected a non-empty sequence of distinct non-negative integers")
    return seeds


def run_grid(
    loss_factories: Mapping[str, LossFactory],
    seeds: Sequence[int],
    config: TrainConfig,
    data: Optional[Dataset] = None,
    *,
    resume: bool = False,
) -> list[RunResult]:
    """:func:`run_experiment` for every (loss, seed), loss-major order; ``config.seed`` is replaced
    by each seed and every run gets a fresh loss from its factory. ``data`` None: loaded once
    (only if a run is trained).

    With ``config.output_dir`` set, the directory is checked before any training. With
    ``resume=True`` the runs already recorded there with the same settings, seed and loss
    description (:func:`describe_loss`) are read back instead of trained, and a directory holding
    records made with other settings, or with another description of a planned loss, raises
    :class:`~otalign.experiments.outputs.ResultConflict` (a ``ValueError``) before any work; see
    :mod:`~otalign.experiments.outputs`. With ``resume=False`` every run is trained and its
    record replaces any earlier one.
    """
    if not isinstance(loss_factories, Mapping) or not loss_factories:
        raise ValueError(
            f"loss_factories={loss_factories!r}; expected a non-empty mapping name -> loss factory"
        )
    for name, factory in loss_factories.items():
        if not isinstance(name, str) or not name or not callable(factory):
            raise ValueError(
                f"loss_factories[{name!r}]={factory!r}; expected a non-empty name and a callable factory"
            )
    seeds = _check_seeds(seeds)
    losses = {name: describe_loss(factory) for name, factory in loss_factories.items()}
    reused: dict[tuple[str, int], RunResult] = {}
    if config.output_dir is not None:
        prepare_output_dir(config.output_dir)
        if resume:
            reused = reusable_runs(config.output_dir, config, losses, seeds)
    jobs = [(name, seed) for name in loss_factories for seed in seeds]
    if data is None and any(job not in reused for job in jobs):
        data = load_dataset(config)
    results = []
    for name, seed in tqdm(jobs, desc="runs", unit="run", disable=not config.progress):
        if (name, seed) in reused:
            results.append(reused[name, seed])
            continue
        run_config = config.replace(seed=seed)
        results.append(run_experiment(run_config, loss_factories[name](), name, data, loss=losses[name]))
    return results
