"""The runner interface shared by every library, and the common result record.

A runner wraps one library in one named configuration (``"pot:sinkhorn_log"``). The harness
(:mod:`otalign.bench.harness`) asks it for *calls*: zero-argument functions that solve the
prepared problem and return a :class:`SolveOutput` whose plan is complete when the call returns
(JAX calls end with ``block_until_ready``). Everything a call does is timed, so input conversion
belongs in :meth:`Runner.prepare`, and measuring the answer happens after the call.

Iterations are counted in *sweeps*: one update of every dual (both potentials for balanced and
unbalanced problems; the two caps and the mass for partial ones), the unit of every library here.
"""

from __future__ import annotations

import importlib
import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch

from ..problems import BenchProblem, ProblemSpec

__all__ = ["SolveOutput", "Call", "Runner", "RunRecord", "DEFAULT_KNOBS", "json_ready"]


@dataclass
class SolveOutput:
    """What one call returns.

    Attributes:
        plan: ``(B, n, m)`` plan (torch tensor, NumPy or JAX array), complete (synchronised);
            None for point-cloud problems, whose answer is ``potentials``.
        n_iters: sweeps performed (the largest over the batch), None if the library does not say.
        potentials: point-cloud problems: ``(f, g)`` of shapes ``(n,)``, ``(m,)`` in cost units,
            converted to the convention ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / epsilon)``.
    """

    plan: Any
    n_iters: Optional[int]
    potentials: Optional[tuple[Any, Any]] = None


Call = Callable[[], SolveOutput]

#: Default tolerance sweep (loose to tight) for libraries whose knob is an error threshold.
DEFAULT_KNOBS: tuple[float, ...] = (
    1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7,
)


class Runner(ABC):
    """One library in one configuration.

    Subclasses set the class attributes and implement :meth:`supports`, :meth:`prepare`,
    :meth:`fixed` and :meth:`to_tolerance`.

    Class attributes:
        library: short name used on the command line (``"pot"``).
        label: display name (``"POT"``).
        module: module whose import decides availability (``"ot"``).
        knob: name of the library's own stopping parameter (``"stopThr"``).
        CONFIGS: configuration name -> options of that configuration.
        DEFAULT: configurations run when the command line names only the library.
        backend: ``"torch"`` or ``"jax"`` (how calls are timed and memory is measured).
        compiles: the first call of each new call object compiles (its time is reported apart).
    """

    library: ClassVar[str]
    label: ClassVar[str]
    module: ClassVar[str]
    knob: ClassVar[str]
    CONFIGS: ClassVar[dict[str, dict[str, Any]]]
    DEFAULT: ClassVar[tuple[str, ...]]
    backend: ClassVar[str] = "torch"
    compiles: ClassVar[bool] = False

    def __init__(self, config: str, *, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if config not in self.CONFIGS:
            raise ValueError(
                f"{self.library} has no configuration {config!r}; expected one of {sorted(self.CONFIGS)}"
            )
        self.config = config
        self.options: dict[str, Any] = dict(self.CONFIGS[config])
        self.device = torch.device(device)
        self.dtype = dtype

    @property
    def knob_name(self) -> str:
        """Name of the stopping parameter swept by time-to-tolerance."""
        return self.knob

    @property
    def name(self) -> str:
        """``"library:config"``."""
        return f"{self.library}:{self.config}"

    @classmethod
    def unavailable(cls, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> Optional[str]:
        """Why this library cannot run here (None when it can): not importable, no GPU backend..."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # e.g. OTT's jaxopt import
                importlib.import_module(cls.module)
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
            return f"{cls.label} is not importable ({type(exc).__name__}: {exc})"
        return None

    @classmethod
    def default_configs(cls) -> tuple[str, ...]:
        """Configurations run when the command line names only the library."""
        return cls.DEFAULT

    @classmethod
    def version(cls) -> Optional[str]:
        try:
            return str(getattr(importlib.import_module(cls.module), "__version__", "unknown"))
        except Exception:  # noqa: BLE001
            return None

    #: configurations that solve point-cloud problems (``spec.lazy``), and only those
    ONLINE_CONFIGS: ClassVar[tuple[str, ...]] = ()

    def unavailable_config(self) -> Optional[str]:
        """Why this configuration (rather than the whole library) cannot run here, or None."""
        return None

    def supports(self, spec: ProblemSpec) -> Optional[str]:
        """None if this configuration solves ``spec``; otherwise the reason it does not.

        Dense configurations skip point-cloud problems and online ones skip dense problems;
        subclasses add their own reasons in :meth:`supports_kind`.
        """
        if spec.lazy and not self.is_online:
            return (
                f"{self.name} needs the n x m cost matrix; the point-cloud problems (n = {spec.n}) run only the "
                "online configurations"
            )
        if not spec.lazy and self.is_online:
            return f"{self.name} is an online (point-cloud) configuration; it runs the point-cloud problems only"
        return self.supports_kind(spec)

    @property
    def is_online(self) -> bool:
        """Whether this configuration is an online (point-cloud) one."""
        return self.config in self.ONLINE_CONFIGS

    @abstractmethod
    def supports_kind(self, spec: ProblemSpec) -> Optional[str]:
        """None if this configuration solves ``spec``'s kind; otherwise the reason it does not."""

    @abstractmethod
    def prepare(self, problem: BenchProblem) -> Any:
        """Convert the problem to the library's inputs (not timed)."""

    @abstractmethod
    def fixed(self, prepared: Any, n_iter: int) -> Call:
        """A call running ``n_iter`` sweeps with the tolerance out of reach."""

    @abstractmethod
    def to_tolerance(self, prepared: Any, knob: float, max_iter: int) -> Call:
        """A call stopping at the library's own criterion ``knob`` (at most ``max_iter`` sweeps)."""

    def knobs(self, spec: ProblemSpec) -> list[float]:
        """Values of the stopping knob for the time-to-tolerance sweep, loose to tight."""
        return list(DEFAULT_KNOBS)

    def min_iters(self, prepared: Any) -> int:
        """Smallest sweep count :meth:`fixed` can run."""
        return 1

    #: plan L1 error below which the float64 convention check passes (see ``selfcheck``)
    check_tol: ClassVar[float] = 1e-7

    def tight(self, prepared: Any) -> Call:
        """A call run to (near) machine precision, for the convention check."""
        return self.to_tolerance(prepared, 1e-12, 100_000)


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_ready(x: Any) -> Any:
    """``x`` with every non-finite float (recursively in dicts, lists, tuples) replaced by None."""
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return _finite_or_none(x)


@dataclass
class RunRecord:
    """The common result record: one measurement of one configuration on one problem.

    Attributes:
        problem: problem name.
        library, config: which runner.
        mode: ``"fixed"`` (fixed sweep count, ms per sweep), ``"tol"`` (one point of the
            time-to-tolerance sweep), ``"curve"`` (one point of the error-vs-iterations grid),
            ``"skip"`` or ``"error"``.
        knob, knob_value: the stopping parameter and its value (``"n_iter"`` for fixed/curve).
        n_iters: sweeps performed (reported by the library, or known from the call).
        times_s: seconds of each timed call (warm calls only).
        time_s: median of ``times_s``.
        first_call_s: the first call of this call object (includes compilation for JAX).
        compile_s: ``first_call_s - time_s`` for compiling libraries, else None.
        ms_per_iter: ``1000 * time_s / n_iters`` (fixed mode).
        peak_mem_bytes, mem_method: see :mod:`otalign.bench.timing`.
        error, marginal_error, plan_error, cost_rel_error, mass, finite: see
            :mod:`otalign.bench.errors`.
        met_target: ``error <= target`` (tol mode).
        status: ``"ok"``, or what went wrong / why it was skipped.
    """

    problem: str
    library: str
    config: str
    mode: str
    knob: Optional[str] = None
    knob_value: Optional[float] = None
    n_iters: Optional[int] = None
    times_s: list[float] = field(default_factory=list)
    time_s: Optional[float] = None
    first_call_s: Optional[float] = None
    compile_s: Optional[float] = None
    ms_per_iter: Optional[float] = None
    peak_mem_bytes: Optional[int] = None
    mem_method: Optional[str] = None
    error: Optional[float] = None
    marginal_error: Optional[float] = None
    plan_error: Optional[float] = None
    cost_rel_error: Optional[float] = None
    mass: Optional[float] = None
    finite: Optional[bool] = None
    met_target: Optional[bool] = None
    status: str = "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats become None; ``finite``/``status`` say why)."""
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}
