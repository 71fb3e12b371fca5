"""POT's runner (torch backend: inputs are torch tensors on the benchmark device).

Configurations (each solves the kinds it names; the others are skipped):

==========================  =========================================================================
``sinkhorn``                balanced: ``ot.sinkhorn(method="sinkhorn")`` (scaling domain);
                            unbalanced: ``ot.unbalanced.sinkhorn_unbalanced(method="sinkhorn",
                            reg_type="kl")``; partial: ``ot.partial.entropic_partial_wasserstein(
                            method="sinkhorn")``
``sinkhorn_log``            balanced: ``ot.sinkhorn(method="sinkhorn_log")``; partial:
                            ``entropic_partial_wasserstein(method="sinkhorn_log")`` (POT has no
                            log-domain unbalanced Sinkhorn)
``sinkhorn_stabilized``     unbalanced: ``sinkhorn_unbalanced(method="sinkhorn_stabilized")``
``batch`` / ``batch_log``   balanced: ``ot.batch.solve_batch(method="sinkhorn" / "log_sinkhorn",
                            grad="detach")`` on the whole ``(B, n, m)`` batch (a single problem is a
                            batch of one)
``lazy``                    point clouds (balanced): ``ot.bregman.empirical_sinkhorn(x, y, reg,
                            a, b, metric="sqeuclidean", isLazy=True, batchSize=LAZY_BATCH)``: the
                            log-domain Sinkhorn that recomputes blocks of ``LAZY_BATCH`` rows (or
                            columns) of the cost with NumPy on the host at every half sweep, never
                            holding ``n x m``; it returns log-scalings ``(f, g)`` with
                            ``P = exp(f_i + g_j - C_ij / reg)``, converted to the benchmark's
                            potentials ``eps (f - log a)``, ``eps (g - log b)``
==========================  =========================================================================

The per-problem functions solve a batch with a Python loop (what a POT user without
``ot.batch`` writes). POT's stopping knobs differ: ``ot.sinkhorn``: L2 norm of the column-marginal
error every 10 sweeps; ``ot.batch``: max over the batch of the L2 row-marginal error every 10
sweeps; unbalanced: relative sup-change of the scalings; partial: norm of the change of the plan
every 10 sweeps; lazy: L1 row-marginal error every 10 sweeps (an extra pass over the cost, part
of its time). Fixed-iteration runs pass a threshold of -1 (never met).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from ..problems import BenchProblem, ProblemSpec
from .base import Call, Runner, SolveOutput

__all__ = ["PotRunner"]

_SUPPORTS: dict[str, tuple[str, ...]] = {
    "sinkhorn": ("balanced", "unbalanced", "partial"),
    "sinkhorn_log": ("balanced", "partial"),
    "sinkhorn_stabilized": ("unbalanced",),
    "batch": ("balanced",),
    "batch_log": ("balanced",),
    "lazy": ("balanced",),
}

#: rows (and columns) of the cost recomputed per block by ``empirical_sinkhorn(isLazy=True)``
LAZY_BATCH = 1024

POT_KNOBS: tuple[float, ...] = (
    1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 3e-8, 1e-8, 1e-9,
)


@dataclass
class _Prepared:
    spec: ProblemSpec
    cost: torch.Tensor  # (B, n, m)
    a: torch.Tensor  # (B, n)
    b: torch.Tensor  # (B, m)
    mass: Optional[torch.Tensor]  # 0-dim tensor (partial)
    points: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (n, d), (m, d): point clouds


class PotRunner(Runner):
    """POT (Python Optimal Transport) in one of the configurations of the module docstring."""

    library: ClassVar[str] = "pot"
    label: ClassVar[str] = "POT"
    module: ClassVar[str] = "ot"
    knob: ClassVar[str] = "stopThr"
    CONFIGS: ClassVar[dict[str, dict[str, Any]]] = {
        "sinkhorn": {"method": "sinkhorn"},
        "sinkhorn_log": {"method": "sinkhorn_log"},
        "sinkhorn_stabilized": {"method": "sinkhorn_stabilized"},
        "batch": {"batch_method": "sinkhorn"},
        "batch_log": {"batch_method": "log_sinkhorn"},
        "lazy": {"lazy": True},
    }
    DEFAULT: ClassVar[tuple[str, ...]] = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized", "batch", "batch_log", "lazy")
    ONLINE_CONFIGS: ClassVar[tuple[str, ...]] = ("lazy",)

    def supports_kind(self, spec: ProblemSpec) -> Optional[str]:
        kinds = _SUPPORTS[self.config]
        if spec.kind not in kinds:
            return f"pot:{self.config} solves {'/'.join(kinds)} problems, not {spec.kind}"
        return None

    def knobs(self, spec: ProblemSpec) -> list[float]:
        return list(POT_KNOBS)

    def prepare(self, problem: BenchProblem) -> _Prepared:
        if problem.spec.lazy:
            x, y = (t[0].to(device=problem.device, dtype=problem.dtype).contiguous() for t in problem.points)
            return _Prepared(problem.spec, None, problem.a, problem.b, None, (x, y))  # type: ignore[arg-type]
        mass = None
        if problem.spec.kind == "partial":
            # POT's log-domain partial solver needs m as a tensor on the torch backend
            mass = torch.tensor(problem.spec.mass, dtype=problem.dtype, device=problem.device)
        return _Prepared(problem.spec, problem.cost, problem.a, problem.b, mass)

    # -- one problem of a batch ---------------------------------------------------------------
    def _single(self, p: _Prepared, k: int, stop: float, max_iter: int, log: bool) -> tuple[torch.Tensor, Optional[int]]:
        import ot

        spec, method = p.spec, self.options["method"]
        a, b, C = p.a[k], p.b[k], p.cost[k]
        if spec.kind == "balanced":
            out = ot.sinkhorn(a, b, C, spec.epsilon, method=method, numItermax=max_iter, stopThr=stop, log=log, warn=False)
            if log:
                plan, info = out
                return plan, int(info["niter"]) + 1
            return out, max_iter
        if spec.kind == "unbalanced":
            out = ot.unbalanced.sinkhorn_unbalanced(
                a, b, C, spec.epsilon, spec.rho, method=method, reg_type="kl",
                numItermax=max_iter, stopThr=stop, log=log,
            )
            if log:
                plan, info = out
                return plan, len(info["err"]) if method == "sinkhorn" else None
            return out, max_iter
        out = ot.partial.entropic_partial_wasserstein(
            a, b, C, spec.epsilon, m=p.mass, method=method, numItermax=max_iter, stopThr=stop, log=log,
        )
        if log:
            plan, info = out
            return plan, 10 * (len(info["err"]) - 1) + 1
        return out, max_iter

    def _lazy_call(self, p: _Prepared, stop: float, max_iter: int) -> Call:
        import ot

        assert p.points is not None
        (x, y), eps = p.points, p.spec.epsilon
        a, b = p.a[0], p.b[0]
        log_a, log_b = torch.log(a), torch.log(b)

        def call() -> SolveOutput:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f, g, info = ot.bregman.empirical_sinkhorn(
                    x, y, eps, a=a, b=b, metric="sqeuclidean", numIterMax=max_iter, stopThr=stop,
                    isLazy=True, batchSize=LAZY_BATCH, log=True,
                )
            return SolveOutput(plan=None, n_iters=int(info["niter"]) + 1, potentials=(eps * (f - log_a), eps * (g - log_b)))

        return call

    def _call(self, p: _Prepared, stop: float, max_iter: int, log: bool) -> Call:
        import ot
        import ot.batch  # noqa: F401 - not always imported by ``import ot``

        if self.options.get("lazy"):
            return self._lazy_call(p, stop, max_iter)

        if "batch_method" in self.options:
            method = self.options["batch_method"]

            def call_batch() -> SolveOutput:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = ot.batch.solve_batch(
                        p.cost, p.spec.epsilon, p.a, p.b, max_iter=max_iter, tol=stop,
                        method=method, grad="detach",
                    )
                return SolveOutput(plan=res.plan, n_iters=int(res.log["n_iter"]) + 1)

            return call_batch

        def call() -> SolveOutput:
            plans, iters = [], []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for k in range(p.spec.batch):
                    plan, it = self._single(p, k, stop, max_iter, log)
                    plans.append(plan)
                    iters.append(it)
            known = [i for i in iters if i is not None]
            return SolveOutput(plan=torch.stack(plans), n_iters=max(known) if len(known) == len(iters) else None)

        return call

    def tight(self, prepared: _Prepared) -> Call:
        return self.to_tolerance(prepared, 1e-13, 100_000)

    def fixed(self, prepared: _Prepared, n_iter: int) -> Call:
        return self._call(prepared, -1.0, n_iter, log=False)

    def to_tolerance(self, prepared: _Prepared, knob: float, max_iter: int) -> Call:
        return self._call(prepared, knob, max_iter, log=True)
