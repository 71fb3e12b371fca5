"""Clocks, peak memory and machine/library information.

Timing
    CPU: ``time.perf_counter`` around the call. GPU, torch-based libraries: CUDA events recorded
    around the call, with ``torch.cuda.synchronize()`` before and after. JAX: the runner's call
    ends with ``block_until_ready()`` (JAX uses its own streams, so CUDA events recorded on
    torch's stream would not see its work) and is timed with ``perf_counter``.

Peak memory (bytes allocated during one call, over what was allocated before it; the inputs the
runner prepared beforehand are not counted, the returned plan is)
    * GPU, torch-based libraries: ``torch.cuda.max_memory_allocated()`` after
      ``torch.cuda.reset_peak_memory_stats()``, minus ``torch.cuda.memory_allocated()`` before.
    * GPU, JAX: ``peak_bytes_in_use`` of the device's ``memory_stats()`` minus ``bytes_in_use``
      before. JAX cannot reset its peak, so this is an upper bound (it may come from an earlier
      call); reported with method ``"jax-peak-bytes (lifetime)"``.
    * CPU (every library): growth of the process's peak resident set size: the kernel's
      high-water mark ``VmHWM`` is reset by writing ``5`` to ``/proc/self/clear_refs``, then
      ``VmHWM`` after the call minus ``VmRSS`` before (after ``gc.collect()`` and glibc's
      ``malloc_trim(0)``). It counts every allocation (torch, NumPy, XLA), at page granularity.
      It can under-count memory that an allocator reuses from its own cache without touching new
      pages. Where ``/proc/self/clear_refs`` is not writable the figure is ``None``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch

__all__ = ["Clock", "MemoryMeter", "median", "cpu_time_rounds", "best_cpu_time", "machine_info", "library_versions"]

T = TypeVar("T")


def median(values: list[float]) -> Optional[float]:
    """Median, or None for an empty list."""
    return statistics.median(values) if values else None


def cpu_time_rounds(fns: dict[str, Callable[[], Any]], rounds: int, calls: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function in each of ``rounds`` rounds: CPU time of this process
    (``time.process_time``: not inflated when other processes share the cores) for ``calls``
    calls, the functions interleaved within each round, each warmed up by one untimed call per
    round. For comparisons on a shared machine, where medians of wall-clock times move by +-30%
    between identical runs (the benchmark scripts in ``benchmarks/``): take the best round
    (:func:`best_cpu_time`), or the median over rounds of the ratio of two functions' times in the
    same round (slow phases of the machine then cancel)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            t0 = time.process_time()
            for _ in range(calls):
                fn()
            times[name].append((time.process_time() - t0) / calls)
    return times


def best_cpu_time(fns: dict[str, Callable[[], Any]], rounds: int, calls: int = 1) -> dict[str, float]:
    """The best round of :func:`cpu_time_rounds`: seconds per call of each function."""
    return {name: min(values) for name, values in cpu_time_rounds(fns, rounds, calls).items()}


class Clock:
    """Times a call on ``device`` (see the module docstring for the method)."""

    def __init__(self, device: torch.device, *, cuda_events: bool = True) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.cuda_events = cuda_events and self.cuda

    @property
    def method(self) -> str:
        if self.cuda_events:
            return "cuda-events+synchronize"
        if self.cuda:
            return "perf_counter+synchronize"
        return "perf_counter"

    def time(self, fn: Callable[[], T]) -> tuple[T, float]:
        """Run ``fn`` once; return its output and the seconds it took."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        if self.cuda_events:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return out, start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return out, time.perf_counter() - t0


def proc_status(field: str, required: bool = False) -> Optional[int]:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes; None where
    it cannot be read (not Linux), or ``RuntimeError`` naming the field when ``required``."""
    value = _read_status(field)
    if value is None and required:
        raise RuntimeError(f"{field} not readable from /proc/self/status (Linux only)")
    return value


def _read_status(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the peak resident memory ``VmHWM`` to the current RSS (``5`` into
    ``/proc/self/clear_refs``); False where that file is not writable."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class MemoryMeter:
    """Measures the peak memory of one call (see the module docstring).

    Attributes:
        device: where the computation runs.
        backend: ``"torch"`` or ``"jax"`` (selects the GPU method).
    """

    device: torch.device
    backend: str = "torch"

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated" if self.backend == "torch" else "jax-peak-bytes (lifetime)"
        return "peak-RSS growth (/proc VmHWM reset)"

    def measure(self, fn: Callable[[], T]) -> tuple[T, Optional[int]]:
        """Run ``fn`` once; return its output and the peak bytes it allocated (None: unknown)."""
        if self.device.type == "cuda" and self.backend == "torch":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            out = fn()
            torch.cuda.synchronize(self.device)
            return out, max(int(torch.cuda.max_memory_allocated(self.device)) - base, 0)
        if self.device.type == "cuda":
            import jax

            dev = jax.devices("gpu")[0]
            before = (dev.memory_stats() or {}).get("bytes_in_use")
            out = fn()
            peak = (dev.memory_stats() or {}).get("peak_bytes_in_use")
            return out, None if before is None or peak is None else max(int(peak) - int(before), 0)
        gc.collect()
        _malloc_trim()
        base = proc_status("VmRSS")
        if base is None or not reset_peak_rss():
            return fn(), None
        out = fn()
        peak = proc_status("VmHWM")
        return out, None if peak is None else max(peak - base, 0)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Host, CPU and (when used) GPU description."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=int(props.total_memory),
            cuda=torch.version.cuda,
        )
    return info


def library_versions() -> dict[str, Optional[str]]:
    """Versions of otalign, torch, NumPy and every comparator (None: not importable)."""
    import importlib

    versions: dict[str, Optional[str]] = {}
    for name, module in (
        ("otalign", "otalign"),
        ("torch", "torch"),
        ("numpy", "numpy"),
        ("pot", "ot"),
        ("geomloss", "geomloss"),
        ("ott-jax", "ott"),
        ("jax", "jax"),
        ("jaxlib", "jaxlib"),
    ):
        try:
            mod = importlib.import_module(module)
            versions[name] = str(getattr(mod, "__version__", "unknown"))
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            versions[name] = None
    return versions
