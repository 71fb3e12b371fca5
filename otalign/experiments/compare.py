"""Compare several losses over several seeds: :func:`run_comparison` -> :class:`Comparison`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import scipy.stats

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

    def differences(self, baseline: Optional[str] = None) -> dict[str, dict[str, dict[str, Any]]]:
        """Seed-paired differences to a baseline loss (default: the first one).

        Runs with the same seed share the model's initialisation, the batch order and the
        augmentations, so ``metric(loss, seed) - metric(baseline, seed)`` removes most of the
        seed-to-seed spread. ``differences()[name][metric]`` is ``{"mean", "std", "n", "wins",
        "ties", "p_value"}`` over the seeds both losses ran: ``wins`` counts seeds where ``name``
        scored strictly higher than the baseline, ``ties`` equal scores (for the accuracy metrics;
        alignment and uniformity are lower-is-better, their differences are reported as they are);
        ``p_value`` is the two-sided paired t-test's (None with fewer than 2 seeds or no spread).
        """
        baseline = self.names[0] if baseline is None else baseline
        if baseline not in self.names:
            raise ValueError(f"baseline={baseline!r}; expected one of {self.names}")
        by_key = {(r.name, r.config.seed): r for r in self.runs}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for name in self.names:
            if name == baseline:
                continue
            seeds = [s for s in self.seeds if (name, s) in by_key and (baseline, s) in by_key]
            out[name] = {}
            for m in self.metrics:
                pairs = [
                    (getattr(by_key[name, s].metrics, m), getattr(by_key[baseline, s].metrics, m)) for s in seeds
                ]
                diffs = [x - y for x, y in pairs if x is not None and y is not None]
                stats: dict[str, Any] = dict(mean_std(diffs))
                stats["wins"] = sum(d > 0 for d in diffs)
                stats["ties"] = sum(d == 0 for d in diffs)
                stats["p_value"] = _paired_p_value(diffs)
                out[name][m] = stats
        return out

    def differences_table(self, baseline: Optional[str] = None) -> str:
        """Text table of :meth:`differences` for the accuracy metrics (percentage points, mean +-
        std over seeds, and wins / seeds)."""
        baseline = self.names[0] if baseline is None else baseline
        diffs = self.differences(baseline)
        metrics = [m for m in self.metrics if m.endswith("_acc")]
        header = ["loss", *(f"{METRIC_LABELS[m]} - {baseline}" for m in metrics)]
        rows = []
        for name, stats in diffs.items():
            cells = []
            for m in metrics:
                st = stats[m]
                p = "" if st.get("p_value") is None else f", p={st['p_value']:.2g}"
                cells.append(
                    f"{format_stat(st, percent=True)} ({st['wins']}/{st['n']} higher{p})" if st["n"] else "-"
                )
            rows.append([name, *cells])
        note = (
            f"seed-paired differences to {baseline} in percentage points (same seed = same init, batches, "
            "views); p: two-sided paired t-test"
        )
        return format_table(header, rows) + "\n" + note

    def to_dict(self) -> dict[str, Any]:
        out = {
            "config": self.config.to_dict(),
            "seeds": self.seeds,
            "summary": self.summary(),
            "runs": [r.to_dict() for r in self.runs],
        }
        if len(self.names) > 1:
            out["differences"] = {"baseline": self.names[0], "stats": self.differences()}
        return out

    @classmethod
    def load(cls, path: Union[str, Path]) -> Comparison:
        """Rebuild a comparison from its ``comparison.json`` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "comparison.json"
        values = json.loads(path.read_text())
        return cls(
            config=TrainConfig.from_dict(values["config"]),
            seeds=list(values["seeds"]),
            runs=[RunResult.from_dict(r) for r in values["runs"]],
        )

    @classmethod
    def combine(cls, *comparisons: Comparison) -> Comparison:
        """One comparison of runs made apart (e.g. in parallel processes: one loss, or one seed,
        each). They must share every setting but ``output_dir``; a (loss, seed) pair may appear
        once. Losses keep their order of first appearance (the first is the baseline of
        :meth:`differences`, paired on the seeds both ran); the seeds are the union, in order."""
        if not comparisons:
            raise ValueError("combine() needs at least one comparison")
        first = comparisons[0]
        key = first.config.replace(output_dir=None)
        seen: set[tuple[str, int]] = set()
        seeds: list[int] = []
        for c in comparisons:
            if c.config.replace(output_dir=None) != key:
                raise ValueError("the comparisons' configurations differ (beyond output_dir); expected one configuration")
            pairs = {(r.name, r.config.seed) for r in c.runs}
            if seen & pairs:
                raise ValueError(f"runs {sorted(seen & pairs)} appear twice; expected each (loss, seed) once")
            seen |= pairs
            seeds += [s for s in c.seeds if s not in seeds]
        runs = [r for c in comparisons for r in c.runs]
        order = {name: i for i, name in enumerate(dict.fromkeys(r.name for r in runs))}
        runs.sort(key=lambda r: order[r.name])  # stable: each loss's runs in the order given
        return cls(config=first.config, seeds=seeds, runs=runs)

    def save(self, directory: Union[str, Path]) -> dict[str, Path]:
        """Write ``comparison.png`` (bar plot of the metrics), then ``comparison.json`` (config,
        summary, every run's record) to ``directory``, each atomically; returns their paths by
        kind."""
        directory = Path(directory)
        title = f"{self.config.dataset}, {self.config.augmentation} aug., {len(self.seeds)} seed(s)"
        png = bar_plot(self.summary(), self.metrics, METRIC_LABELS, directory / "comparison.png", title)
        return {"json": write_json(directory / "comparison.json", self.to_dict()), "png": png}


def _paired_p_value(diffs: Sequence[float]) -> Optional[float]:
    """Two-sided p-value of the one-sample t-test of ``mean(diffs) == 0``."""
    if len(diffs) < 2 or float(np.std(diffs)) == 0.0:
        return None
    return float(scipy.stats.ttest_1samp(np.asarray(diffs, dtype=np.float64), 0.0).pvalue)


def run_comparison(
    loss_factories: Mapping[str, LossFactory],
    seeds: Sequence[int],
    config: TrainConfig,
    data: Optional[Dataset] = None,
    *,
    resume: bool = False,
) -> Comparison:
    """Run every loss with every seed (:func:`~otalign.experiments.run.run_grid`).

    Args:
        loss_factories: name -> zero-argument callable returning a fresh loss module
            ``loss(z_a, z_b, **kw) -> 0-dim tensor`` (a new one per run, so no state is shared).
        seeds: distinct non-negative run seeds; each replaces ``config.seed``.
        config: the base configuration.
        data: the data set (None: loaded once from ``config``).
        resume: reuse the runs already recorded in ``config.output_dir`` with the same settings
            and refuse a directory of other settings (see :func:`~otalign.experiments.run.run_grid`).

    With ``config.output_dir`` set, the directory is checked before any training, every run's
    JSON record is written as it finishes (the directory's old summaries are removed before the
    first one), and the comparison (:meth:`Comparison.save`) at the end. An interrupted
    comparison therefore leaves its finished runs' records and no ``comparison.json``.
    """
    seeds = list(seeds)
    runs = run_grid(loss_factories, seeds, config, data, resume=resume)
    comparison = Comparison(config=config, seeds=seeds, runs=runs)
    if config.output_dir is not None:
        comparison.save(config.output_dir)
    return comparison
