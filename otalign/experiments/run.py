"""Complete runs: pretrain with a loss, evaluate, record (and write) the result; grids of runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from tqdm.auto import tqdm

from .config import TrainConfig
from .data import Dataset, load_dataset
from .evaluate import evaluate
from .results import RunResult, run_filename
from .train import LossFn, pretrain

__all__ = ["run_experiment", "run_grid", "LossFactory"]

#: A zero-argument callable returning a fresh loss ``loss(z_a, z_b, **kw) -> 0-dim tensor``.
LossFactory = Callable[[], LossFn]


def run_experiment(
    config: TrainConfig, loss_fn: LossFn, name: str, data: Optional[Dataset] = None
) -> RunResult:
    """Pretrain with ``loss_fn`` (see :func:`~otalign.experiments.train.pretrain`), evaluate the
    frozen features (:func:`~otalign.experiments.evaluate.evaluate`) and return the record.

    With ``config.output_dir`` set, the record is also written to
    ``<output_dir>/runs/<name>_seed<seed>.json``. ``data``: as for ``pretrain``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r}; expected a non-empty string naming the loss")
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
    )
    if config.output_dir is not None:
        result.save(Path(config.output_dir) / "runs" / run_filename(name, config.seed))
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
) -> list[RunResult]:
    """:func:`run_experiment` for every (loss, seed), loss-major order; ``config.seed`` is replaced
    by each seed and every run gets a fresh loss from its factory. ``data`` None: loaded once."""
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
    data = load_dataset(config) if data is None else data
    jobs = [(name, seed) for name in loss_factories for seed in seeds]
    return [
        run_experiment(config.replace(seed=seed), loss_factories[name](), name, data)
        for name, seed in tqdm(jobs, desc="runs", unit="run", disable=not config.progress)
    ]
