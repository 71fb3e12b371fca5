"""PNG figures of comparisons and domain sweeps (matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .files import atomic_write

__all__ = ["bar_plot", "sweep_plot"]

Stats = Mapping[str, Optional[float]]  # {"mean", "std", "n"} as made by results.mean_std


def _save(fig: Figure, path: Union[str, Path]) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))


def _err(stats: Stats) -> float:
    return 0.0 if stats["std"] is None else float(stats["std"])


def bar_plot(
    summary: Mapping[str, Mapping[str, Stats]],
    metrics: Sequence[str],
    labels: Mapping[str, str],
    path: Union[str, Path],
    title: str,
) -> Path:
    """One panel per metric, one bar per run name (mean, error bar = std over seeds).

    ``summary[name][metric]`` holds the statistics; ``labels[metric]`` is the panel title.
    """
    names = list(summary)
    fig = Figure(figsize=(3.2 * len(metrics), 3.4), layout="constrained")
    fig.suptitle(title)
    colours = [f"C{i % 10}" for i in range(len(names))]
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        means = [summary[n][metric]["mean"] for n in names]
        ax.bar(
            range(len(names)),
            [math.nan if m is None else m for m in means],
            yerr=[_err(summary[n][metric]) for n in names],
            color=colours,
            capsize=4,
        )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(labels[metric])
        if metric.endswith("_acc"):
            valid = [m for m in means if m is not None]
            low = min(valid) if valid else 0.0
            ax.set_ylim(max(0.0, low - 0.1), 1.0)
    return _save(fig, path)


def sweep_plot(
    keys: Sequence[float],
    domain_acc: Sequence[Stats],
    class_acc: Sequence[Stats],
    path: Union[str, Path],
    title: str,
) -> Path:
    """Domain and class accuracy (mean, error bars = std over seeds) against alpha - beta."""
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for stats, label, colour in (
        (domain_acc, "domain acc (linear probe)", "C3"),
        (class_acc, "class acc (linear probe)", "C0"),
    ):
        ax.errorbar(
            list(keys),
            [s["mean"] for s in stats],
            yerr=[_err(s) for s in stats],
            marker="o",
            capsize=3,
            label=label,
            color=colour,
        )
    ax.set_xlabel(r"$\alpha - \beta$")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
