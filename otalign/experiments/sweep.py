"""Domain experiment: sweep losses keyed by ``alpha - beta`` (the analogue of the paper's Fig. 1B).

Each loss is trained on the 4-domain digits data (:mod:`otalign.experiments.domains`) and called
as ``loss(z_a, z_b, domains=d)``; a domain-aware loss with target weights ``alpha`` within a
domain and ``beta`` across domains should make the domain more linearly decodable from the
frozen features as ``alpha - beta`` grows, while class accuracy stays roughly constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .config import TrainConfig
from .data import Dataset
from .domains import DOMAIN_STYLES
from .plots import sweep_plot
from .results import RunResult, mean_std, write_json
from .run import LossFactory, run_grid
from .tables import format_stat, format_table

__all__ = ["DomainSweep", "run_domain_sweep", "sweep_name"]


def sweep_name(key: float) -> str:
    """Run name of the loss at ``alpha - beta = key``, e.g. ``"alpha-beta=+0.2"``."""
    return f"alpha-beta={key:+g}"


@dataclass
class DomainSweep:
    """Runs of a domain sweep.

    Attributes:
        config: the base configuration (with ``domains=True``).
        seeds: the seeds, in order.
        keys: the values of ``alpha - beta``, ascending.
        runs: one record per (key, seed); the run name is :func:`sweep_name` of its key.
    """

    config: TrainConfig
    seeds: list[int]
    keys: list[float]
    runs: list[RunResult]

    def rows(self) -> list[dict[str, Any]]:
        """Per key: ``alpha_minus_beta`` and ``{"mean", "std", "n"}`` over seeds of
        ``domain_acc`` (domain probe), ``class_acc`` (class linear probe) and ``knn_acc``."""
        out = []
        for key in self.keys:
            runs = [r for r in self.runs if r.name == sweep_name(key)]
            out.append(
                {
                    "alpha_minus_beta": key,
                    "domain_acc": mean_std([r.metrics.domain_probe_acc for r in runs]),
                    "class_acc": mean_std([r.metrics.linear_probe_acc for r in runs]),
                    "knn_acc": mean_std([r.metrics.knn_acc for r in runs]),
                }
            )
        return out

    def table(self) -> str:
        """Text table: one row per ``alpha - beta``, accuracies in % (mean +- std over seeds)."""
        header = ["alpha - beta", "domain acc", "class acc", "kNN acc"]
        rows = [
            [
                f"{r['alpha_minus_beta']:+g}",
                *(format_stat(r[k], percent=True) for k in ("domain_acc", "class_acc", "knn_acc")),
            ]
            for r in self.rows()
        ]
        note = (
            f"digits in {len(DOMAIN_STYLES)} style domains, {self.config.augmentation} augmentation, "
            f"{self.config.epochs} epochs, seeds {self.seeds}; linear probes on frozen features"
        )
        return format_table(header, rows) + "\n" + note

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "seeds": self.seeds,
            "rows": self.rows(),
            "runs": [r.to_dict() for r in self.runs],
        }

    def save(self, directory: Union[str, Path]) -> dict[str, Path]:
        """Write ``domain_sweep.png`` (domain and class accuracy against ``alpha - beta``), then
        ``domain_sweep.json`` (config, rows, every run's record) to ``directory``, each
        atomically; returns their paths."""
        directory = Path(directory)
        rows = self.rows()
        png = sweep_plot(
            self.keys,
            [r["domain_acc"] for r in rows],
            [r["class_acc"] for r in rows],
            directory / "domain_sweep.png",
            f"domain sweep on digits, seeds {self.seeds}",
        )
        return {"json": write_json(directory / "domain_sweep.json", self.to_dict()), "png": png}


def run_domain_sweep(
    loss_factories: Mapping[float, LossFactory],
    config: TrainConfig,
    seeds: Sequence[int] = (0,),
    data: Optional[Dataset] = None,
    *,
    resume: bool = False,
) -> DomainSweep:
    """Train and evaluate one loss per ``alpha - beta`` value, on digits with 4 style domains.

    Args:
        loss_factories: ``alpha - beta`` (a finite float) -> zero-argument callable returning a
            fresh domain-aware loss ``loss(z_a, z_b, domains=d) -> 0-dim tensor``.
        config: the base configuration; ``domains`` is set to True (``dataset`` must be ``"digits"``).
        seeds: distinct non-negative run seeds.
        data: a data set with domains (None: loaded from the configuration).
        resume: reuse the runs already recorded in ``config.output_dir`` with the same settings
            and refuse a directory of other settings (see :func:`~otalign.experiments.run.run_grid`).

    With ``config.output_dir`` set, the directory is checked before any training, every run's
    JSON record is written as it finishes (the directory's old summaries are removed before the
    first one) and the sweep (:meth:`DomainSweep.save`) at the end.
    """
    if not isinstance(loss_factories, Mapping) or not loss_factories:
        raise ValueError(
            f"loss_factories={loss_factories!r}; expected a non-empty mapping alpha - beta -> loss factory"
        )
    for key in loss_factories:
        if isinstance(key, bool) or not isinstance(key, (int, float)) or not math.isfinite(key):
            raise ValueError(f"loss_factories key {key!r}; expected a finite number (alpha - beta)")
    if data is not None and data.d_train is None:
        raise ValueError(f"data={data.name!r} has no domains; expected a data set loaded with domains=True")
    config = config.replace(domains=True)
    keys = sorted(float(k) for k in loss_factories)
    if len({sweep_name(k) for k in keys}) != len(keys):
        raise ValueError(
            f"loss_factories keys {sorted(loss_factories)}; expected distinct values of alpha - beta"
        )
    named = {sweep_name(float(k)): factory for k, factory in sorted(loss_factories.items())}
    seeds = list(seeds)
    runs = run_grid(named, seeds, config, data, resume=resume)
    sweep = DomainSweep(config=config, seeds=seeds, keys=keys, runs=runs)
    if config.output_dir is not None:
        sweep.save(config.output_dir)
    return sweep
