"""Compare several losses over several seeds: :func:`run_comparison` -> :class:`Comparison`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .config import TrainConfig
from .data import Dataset
from .plots import bar_plot
from .results import RunResult, mean_std, write_json
from .run import LossFactory, run_grid
from .tables import format_stat, format_table

__all__ = ["Comparison", "run_comparison", "METRIC_LABELS"]

#: Metrics reported by comparisons, in table order, with their display names.
METRIC_LABELS = {
    "linear_probe_acc": "linear probe acc",
    "knn_acc": "kNN acc",
    "domain_probe_acc": "domain probe acc",
    "alignment": "alignment",
    "uniformity": "uniformity",
}


@dataclass
class Comparison:
    """Runs of several losses x seeds under one configuration (``config.seed`` is replaced per run).

    Attributes:
        config: the base configuration.
        seeds: the seeds, in order.
        runs: one record per (loss, seed), grouped by loss in the order of the factories.
    """

    config: TrainConfig
    seeds: list[int]
    runs: list[RunResult]

    @property
    def names(self) -> list[str]:
        """Loss names in order of first appearance."""
        return list(dict.fromkeys(r.name for r in self.runs))

    @property
    def metrics(self) -> list[str]:
        """Reported metrics (``domain_probe_acc`` only with domains)."""
        return [m for m in METRIC_LABELS if any(getattr(r.metrics, m) is not None for r in self.runs)]

    def summary(self) -> dict[str, dict[str, dict[str, Optional[float]]]]:
        """``summary[name][metric] = {"mean", "std", "n"}`` over seeds; the metrics plus
        ``"final_loss"`` (last epoch's loss) and ``"seconds"`` (total time per run)."""
        out: dict[str, dict[str, dict[str, Optional[float]]]] = {}
        for name in self.names:
            runs = [r for r in self.runs if r.name == name]
            out[name] = {m: mean_std([getattr(r.metrics, m) for r in runs]) for m in self.metrics}
            out[name]["final_loss"] = mean_std([r.epoch_losses[-1] for r in runs])
            out[name]["seconds"] = mean_std([r.timings["total"] for r in runs])
        return out

    def table(self) -> str:
        """Text table: one row per loss, mean +- std over seeds per metric (accuracies in %)."""
        summary = self.summary()
        header = ["loss", *(METRIC_LABELS[m] for m in self.metrics), "final loss", "s / run"]
        rows = []
        for name, stats in summary.items():
            cells = [format_stat(stats[m], percent=m.endswith("_acc")) for m in self.metrics]
            rows.append(
                [name, *cells, format_stat(stats["final_loss"], False), f"{stats['seconds']['mean']:.1f}"]
            )
        note = (
            f"{self.config.dataset}, {self.config.augmentation} augmentation, {self.config.epochs} epochs, "
            f"batch {self.config.batch_size}, seeds {self.seeds}; mean +- std over seeds"
        )
        return format_table(header, rows) + "\n" + note

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "seeds": self.seeds,
            "summary": self.summary(),
            "runs": [r.to_dict() for r in self.runs],
        }

    def save(self, directory: Union[str, Path]) -> dict[str, Path]:
        """Write ``comparison.json`` (config, summary, every run's record) and ``comparison.png``
        (bar plot of the metrics) to ``directory``; returns their paths by kind."""
        directory = Path(directory)
        title = f"{self.config.dataset}, {self.config.augmentation} aug., {len(self.seeds)} seed(s)"
        return {
            "json": write_json(directory / "comparison.json", self.to_dict()),
            "png": bar_plot(self.summary(), self.metrics, METRIC_LABELS, directory / "comparison.png", title),
        }


def run_comparison(
    loss_factories: Mapping[str, LossFactory],
    seeds: Sequence[int],
    config: TrainConfig,
    data: Optional[Dataset] = None,
) -> Comparison:
    """Run every loss with every seed (:func:`~otalign.experiments.run.run_grid`).

    Args:
        loss_factories: name -> zero-argument callable returning a fresh loss module
            ``loss(z_a, z_b, **kw) -> 0-dim tensor`` (a new one per run, so no state is shared).
        seeds: distinct non-negative run seeds; each replaces ``config.seed``.
        config: the base configuration.
        data: the data set (None: loaded once from ``config``).

    With ``config.output_dir`` set, every run's JSON record is written as it finishes and the
    comparison (:meth:`Comparison.save`) at the end.
    """
    seeds = list(seeds)
    runs = run_grid(loss_factories, seeds, config, data)
    comparison = Comparison(config=config, seeds=seeds, runs=runs)
    if config.output_dir is not None:
        comparison.save(config.output_dir)
    return comparison
