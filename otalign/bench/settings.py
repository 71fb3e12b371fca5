"""Settings of a benchmark run (the full and the ``--quick`` presets) and their validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

import torch

from .problems import ProblemSpec, quick_problems, select_problems
from .runners import parse_libraries

__all__ = ["BenchSettings", "DTYPES", "FIXED_ITERS"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
#: sweeps of the ms/iter measurement unless the problem or ``--iters`` says otherwise
FIXED_ITERS = 100


@dataclass
class BenchSettings:
    """What to run and how.

    Attributes:
        problems: name patterns (see :func:`otalign.bench.problems.select_problems`); None: all
            problems (the quick subset with ``quick=True``).
        libraries: ``library`` or ``library:config`` items; None: every library, default configs.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:<k>"`` or ``"auto"`` (CUDA when available).
        dtype: ``"float32"`` or ``"float64"``.
        repeats: timed calls per median (after a warm-up call).
        out: output directory (JSON, plots, reference cache).
        quick: the short preset (small problems, fewer sweeps and repeats).
        target: L1 error target of time-to-tolerance (see :mod:`otalign.bench.errors`).
        fixed_iters: sweep count of the ms-per-sweep measurement (None: the problem's own,
            ``spec.fixed_iters``, else :data:`FIXED_ITERS`).
        curve_iters: sweep counts of the error-vs-iterations grid (always run).
        curve_extend: further sweep counts of the grid, run in order only while the previous
            point's error is still above ``target`` (the slow problems' curves reach the target).
        max_iter: cap on sweeps in time-to-tolerance runs (and on the grid); None: the
            problem's own (``spec.max_iter``: 2,000 for the sphere and contrastive problems,
            200,000 for the real-use ones, where ``budget_s`` is the practical limit).
        budget_s: seconds after which a stage (repeats, tolerance sweep, grid) of one
            configuration on one problem stops early (recorded in the JSON).
        reference_device: where the float64 references are computed (default: ``device``).
        threads: CPU threads of torch (``torch.set_num_threads``) and, when JAX's backend has not
            started yet, of XLA (``XLA_FLAGS``) during the run. None: 1 on ``cpu`` (every library
            on one core: steady and comparable figures, see docs/benchmarks.md), the libraries'
            own on ``cuda``.
    """

    problems: Optional[list[str]] = None
    libraries: Optional[list[str]] = None
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 5
    out: str = "results/bench"
    quick: bool = False
    target: float = 1e-4
    fixed_iters: Optional[int] = None
    curve_iters: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200)
    curve_extend: tuple[int, ...] = (500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000)
    max_iter: Optional[int] = None
    budget_s: float = 120.0
    reference_device: Optional[str] = None
    threads: Optional[int] = None
    _resolved: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(cls, *, quick: bool = False, **given: Any) -> "BenchSettings":
        """Settings of the full (or, with ``quick=True``, the quick) preset, with ``given`` on top.

        ``None`` values in ``given`` mean "use the preset". The result is validated.
        """
        base = cls(quick=quick)
        if quick:
            base = replace(
                base, repeats=3, fixed_iters=20, curve_iters=(5, 20, 50), curve_extend=(200,),
                max_iter=300, budget_s=2.0,
            )
        unknown = set(given) - {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        settings = replace(base, **{k: v for k, v in given.items() if v is not None})
        settings.validate()
        return settings

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` (naming the option and the value) on any bad setting."""
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; expected one of {', '.join(DTYPES)}")
        for name in ("repeats", "fixed_iters", "max_iter"):
            value = getattr(self, name)
            if name != "repeats" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected an integer >= 1")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads={self.threads!r}; expected an integer >= 1")
        if not isinstance(self.target, (int, float)) or not math.isfinite(self.target) or self.target <= 0:
            raise ValueError(f"target={self.target!r}; expected a finite number > 0")
        if not isinstance(self.budget_s, (int, float)) or not self.budget_s > 0:
            raise ValueError(f"budget_s={self.budget_s!r}; expected a number > 0")
        if not self.curve_iters or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.curve_iters
        ):
            raise ValueError(f"curve_iters={self.curve_iters!r}; expected positive integers")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.curve_extend):
            raise ValueError(f"curve_extend={self.curve_extend!r}; expected positive integers")
        if not str(self.out).strip():
            raise ValueError("out is empty; expected a directory path")
        self._resolved["device"] = self._device(self.device, "device")
        self._resolved["reference_device"] = (
            self._resolved["device"] if self.reference_device is None
            else self._device(self.reference_device, "reference_device")
        )
        self._resolved["problems"] = self._problems()
        self._resolved["libraries"] = parse_libraries(self.libraries)

    @staticmethod
    def _device(spec: str, name: str) -> torch.device:
        if spec == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(spec)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"{name}={spec!r}; expected 'cpu', 'cuda', 'cuda:<index>' or 'auto'") from exc
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}={spec!r}; expected 'cpu', 'cuda', 'cuda:<index>' or 'auto'")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"{name}={spec!r} but torch.cuda.is_available() is False here; use --device cpu")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ValueError(f"{name}={spec!r}; only {torch.cuda.device_count()} CUDA device(s) here")
        return device

    def _problems(self) -> list[ProblemSpec]:
        if self.problems:
            return select_problems(self.problems)
        return quick_problems() if self.quick else select_problems(None)

    # -- resolved values ------------------------------------------------------------------------
    @property
    def torch_device(self) -> torch.device:
        if "device" not in self._resolved:
            self.validate()
        return self._resolved["device"]

    @property
    def torch_reference_device(self) -> torch.device:
        if "reference_device" not in self._resolved:
            self.validate()
        return self._resolved["reference_device"]

    @property
    def cpu_threads(self) -> Optional[int]:
        """Threads the run uses (None: the libraries' own)."""
        if self.threads is not None:
            return self.threads
        return 1 if self.torch_device.type == "cpu" else None

    def max_iter_for(self, spec: ProblemSpec) -> int:
        """Sweep cap of ``spec``'s time-to-tolerance runs and grid: ``--max-iter`` or the problem's."""
        return self.max_iter if self.max_iter is not None else spec.max_iter

    def fixed_iters_for(self, spec: ProblemSpec) -> int:
        """Sweeps of ``spec``'s ms/iter measurement: ``--iters``, the problem's, or FIXED_ITERS."""
        if self.fixed_iters is not None:
            return self.fixed_iters
        return spec.fixed_iters if spec.fixed_iters is not None else FIXED_ITERS

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def problem_specs(self) -> list[ProblemSpec]:
        if "problems" not in self._resolved:
            self.validate()
        return self._resolved["problems"]

    @property
    def library_selection(self) -> list[tuple[str, Optional[str]]]:
        if "libraries" not in self._resolved:
            self.validate()
        return self._resolved["libraries"]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["curve_iters"] = list(self.curve_iters)
        d["curve_extend"] = list(self.curve_extend)
        d["resolved_device"] = str(self.torch_device)
        d["resolved_threads"] = self.cpu_threads
        d["resolved_problems"] = [p.name for p in self.problem_specs]
        d["resolved_libraries"] = [f"{lib}:{cfg}" if cfg else lib for lib, cfg in self.library_selection]
        return d
