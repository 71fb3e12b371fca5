"""The output directory of runs: checked before any work, resumed, never silently mixed.

Layout of ``output_dir``::

    runs/<name>_seed<seed>.json     one record per run (RunResult), written when the run finishes
    comparison.json, comparison.png     a comparison's summary (run_comparison)
    domain_sweep.json, domain_sweep.png a domain sweep's summary (run_domain_sweep)

Rules (the summaries are derived from ``runs/``, so they must never describe other records):

* :func:`prepare_output_dir` creates the folder and checks that it is a writable directory before
  any training, so a bad path fails at once instead of after the runs.
* **Settings**: every record in one directory has the same :func:`run_settings` (every
  :class:`TrainConfig` field except ``seed``, ``output_dir`` and ``progress``), and records of one
  loss name have the same loss description. :func:`reusable_runs` raises :class:`ResultConflict`
  (a ``ValueError``) naming the first record and field that differ.
* **Resume**: a planned run whose record exists with the same settings, seed and loss description
  is reused instead of trained.
* **Consistency**: before a record is added or replaced, the summaries are removed
  (:func:`remove_summaries`); a comparison or sweep writes its summary again when it completes. A
  summary is therefore never older than a record of ``runs/``; after an interruption there is no
  summary until the command is rerun (recorded runs are then resumed, not trained again).
* All files are written atomically (:mod:`~otalign.experiments.files`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .config import TrainConfig
from .results import RunResult, run_filename

__all__ = [
    "RUNS_DIR",
    "SUMMARY_FILES",
    "ResultConflict",
    "prepare_output_dir",
    "run_settings",
    "reusable_runs",
    "remove_summaries",
    "clear_results",
]

PathLike = Union[str, Path]

#: The folder of run records inside an output directory.
RUNS_DIR = "runs"
#: Files summarising the records of ``runs/`` (written by comparisons and domain sweeps).
SUMMARY_FILES = ("comparison.json", "comparison.png", "domain_sweep.json", "domain_sweep.png")
#: TrainConfig fields that do not change what a run computes.
_NOT_SETTINGS = ("seed", "output_dir", "progress")


class ResultConflict(ValueError):
    """An output directory holds records that the planned runs cannot be added to."""


def prepare_output_dir(path: PathLike) -> Path:
    """Create ``path`` and its ``runs/`` folder if needed and check that files can be written there.

    Raises ``ValueError`` naming the path when it (or a parent) is a regular file, is not writable,
    or cannot be created. Call it before any work, so a bad path never costs a run.
    """
    directory = Path(path)
    try:
        (directory / RUNS_DIR).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory / RUNS_DIR, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(directory) else ""
        raise ValueError(
            f"output_dir={str(directory)!r} cannot hold results: {reason}{where}; expected a writable "
            "directory (or a path where one can be created)"
        ) from None
    return directory


def run_settings(config: TrainConfig) -> dict[str, Any]:
    """What a run computes, apart from its seed: every field of ``config`` except ``seed``,
    ``output_dir`` and ``progress``."""
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_SETTINGS}


def _first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> Optional[str]:
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<missing>") != new.get(key, "<missing>"):
            return f"{key}={old.get(key, '<missing>')!r} (now {new.get(key, '<missing>')!r})"
    return None


def _load_record(path: Path) -> RunResult:
    try:
        return RunResult.load(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ResultConflict(
            f"{path} is not a readable run record ({type(exc).__name__}: {str(exc)[:120]}); expected "
            f"only records of otalign runs in {path.parent}"
        ) from None


def reusable_runs(
    output_dir: PathLike,
    config: TrainConfig,
    losses: Mapping[str, Optional[dict[str, Any]]],
    seeds: Sequence[int],
) -> dict[tuple[str, int], RunResult]:
    """The records of ``output_dir/runs`` that the planned runs (every loss name of ``losses`` x
    every seed, under ``config``) can reuse, keyed by ``(name, seed)``.

    ``losses[name]`` is the description the run of ``name`` will record (None when unknown).
    Raises :class:`ResultConflict` (a ``ValueError``), before anything is trained or removed,
    when any record there was made with other settings (:func:`run_settings`), when a record of a
    planned loss name has another loss description, or when a record cannot be read.
    """
    runs_dir = Path(output_dir) / RUNS_DIR
    if not runs_dir.is_dir():
        return {}
    settings = run_settings(config)
    by_file: dict[str, RunResult] = {}
    for path in sorted(runs_dir.glob("*.json")):
        record = _load_record(path)
        difference = _first_difference(run_settings(record.config), settings)
        if difference is not None:
            raise ResultConflict(
                f"{path} was recorded with {difference}; expected every run in {output_dir} to share "
                "the same settings"
            )
        if record.name in losses and record.loss != losses[record.name]:
            if record.loss is None or losses[record.name] is None:
                what = "without a loss description" if record.loss is None else f"with loss {json.dumps(record.loss)}"
                raise ResultConflict(
                    f"{path} was recorded {what}, so it cannot be matched to this run of {record.name!r}"
                )
            difference = _first_difference(record.loss, losses[record.name])
            raise ResultConflict(
                f"{path} was recorded with loss {record.name!r} {difference}; expected the same "
                "loss hyper-parameters for every run of one loss name"
            )
        by_file[path.name] = record
    reusable = {}
    for name in losses:
        for seed in seeds:
            record = by_file.get(run_filename(name, seed))
            if record is None:
                continue
            if record.name != name or record.config.seed != seed:
                raise ResultConflict(
                    f"{runs_dir / run_filename(name, seed)} holds the run of {record.name!r} with seed "
                    f"{record.config.seed}; expected the run of {name!r} with seed {seed}"
                )
            reusable[name, seed] = record
    return reusable


def remove_summaries(output_dir: PathLike) -> list[Path]:
    """Remove the summaries (:data:`SUMMARY_FILES`) of ``output_dir``; returns those removed.

    Called before a record is added or replaced, so that no summary describes other records than
    those in ``runs/``."""
    removed = []
    for name in SUMMARY_FILES:
        path = Path(output_dir) / name
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def clear_results(output_dir: PathLike) -> list[Path]:
    """Remove every result of ``output_dir``: the records ``runs/*.json`` and the summaries (other
    files are left alone); returns the paths removed."""
    removed = remove_summaries(output_dir)
    runs_dir = Path(output_dir) / RUNS_DIR
    if runs_dir.is_dir():
        for path in sorted(runs_dir.glob("*.json")):
            path.unlink()
            removed.append(path)
    return removed
