"""OTT-JAX's runner: ``Sinkhorn()(LinearProblem(Geometry(cost_matrix=C, epsilon=eps), a, b, tau_a, tau_b))``.

* jit-compiled, ``jax.vmap`` over the batch for batched problems; the plan is ``out.matrix``,
  computed inside the compiled function; calls end with ``block_until_ready()``.
* ``epsilon`` is passed explicitly (absolute; OTT's default would be relative to the cost).
* Unbalanced: ``tau_a = tau_b = rho / (rho + epsilon)``. OTT's entropic term is Shannon's
  (reference measure 1, not ``a (x) b``), checked against POT's ``reg_type="entropy"``; to solve
  the benchmark's ``KL(P || a (x) b)`` problem the cost passed to OTT is
  ``C_ij - epsilon * log(a_i b_j)`` (for uniform weights a constant shift), which turns one problem
  into the other exactly (``epsilon * KL(P || a (x) b) = epsilon * sum P log P - P -
  epsilon * sum_ij P_ij log(a_i b_j) + const``). Balanced problems get ``C`` unchanged.
* Fixed sweep counts use ``min_iterations = max_iterations = K`` (OTT then runs a ``lax.scan``),
  ``inner_iterations = gcd(K, 10)``, ``threshold = -1``. Time-to-tolerance uses ``threshold`` (L1
  marginal error, checked every 10 sweeps; a traced argument, so one compilation serves the whole
  sweep), ``max_iterations`` = the cap.
* Compilation happens on the first call of each sweep count; the harness times it apart.
* ``float64`` turns on ``jax_enable_x64`` (a process-wide JAX setting; float32 inputs stay
  float32). On ``--device cuda`` OTT runs only if JAX has a GPU backend (otherwise it is skipped,
  rather than timed on the CPU next to GPU libraries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch

from ..problems import BenchProblem, ProblemSpec
from .base import Call, Runner, SolveOutput

__all__ = ["OttRunner"]


@dataclass
class _Prepared:
    spec: ProblemSpec
    cost: Any  # jax array (B, n, m), or (n, m) for a single problem
    a: Any
    b: Any
    tau: float
    jitted: dict[tuple[int, int, int], Callable[..., Any]] = field(default_factory=dict)
    called: set[tuple[int, int, int]] = field(default_factory=set)


def _jax_device(device: torch.device) -> Any:
    import jax

    if device.type == "cuda":
        return jax.devices("gpu")[device.index or 0]
    return jax.devices("cpu")[0]


class OttRunner(Runner):
    """OTT-JAX's Sinkhorn (see the module docstring); options go to ``Sinkhorn(...)``."""

    library: ClassVar[str] = "ott"
    label: ClassVar[str] = "OTT-JAX"
    module: ClassVar[str] = "ott"
    knob: ClassVar[str] = "threshold"
    backend: ClassVar[str] = "jax"
    compiles: ClassVar[bool] = True
    CONFIGS: ClassVar[dict[str, dict[str, Any]]] = {
        "sinkhorn": {},
    }
    DEFAULT: ClassVar[tuple[str, ...]] = ("sinkhorn",)

    def __init__(self, config: str, *, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__(config, device=device, dtype=dtype)
        if dtype == torch.float64:
            import jax

            jax.config.update("jax_enable_x64", True)

    @classmethod
    def unavailable(cls, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> Optional[str]:
        reason = super().unavailable(device, dtype)
        if reason is not None:
            return reason
        try:
            _jax_device(torch.device(device))
        except RuntimeError as exc:
            return f"JAX has no device for {device} ({exc}); OTT-JAX is not timed on another device"
        return None

    def supports_kind(self, spec: ProblemSpec) -> Optional[str]:
        if spec.kind == "partial":
            return "OTT-JAX has no partial transport"
        return None

    def prepare(self, problem: BenchProblem) -> _Prepared:
        import jax

        spec = problem.spec
        cost = problem.cost64
        if spec.kind == "unbalanced":
            log_ab = torch.log(problem.a64)[:, :, None] + torch.log(problem.b64)[:, None, :]
            cost = cost - spec.epsilon * log_ab
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        dev = _jax_device(self.device)

        def put(t: torch.Tensor) -> Any:
            arr = t.numpy().astype(np_dtype)
            return jax.device_put(arr if spec.batched else arr[0], dev)

        tau = 1.0 if spec.kind == "balanced" else spec.rho / (spec.rho + spec.epsilon)
        return _Prepared(spec, put(cost), put(problem.a64), put(problem.b64), tau)

    def _solver(self, p: _Prepared, key: tuple[int, int, int]) -> Callable[..., Any]:
        if key in p.jitted:
            return p.jitted[key]
        import jax
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn

        min_it, max_it, inner = key
        eps, tau, options = p.spec.epsilon, p.tau, self.options

        def solve(c: Any, a: Any, b: Any, threshold: Any) -> tuple[Any, Any]:
            geom = geometry.Geometry(cost_matrix=c, epsilon=eps)
            prob = linear_problem.LinearProblem(geom, a, b, tau_a=tau, tau_b=tau)
            solver = sinkhorn.Sinkhorn(
                threshold=threshold, min_iterations=min_it, max_iterations=max_it,
                inner_iterations=inner, **options,
            )
            out = solver(prob)
            return out.matrix, out.n_iters

        fn = jax.vmap(solve, in_axes=(0, 0, 0, None)) if p.spec.batched else solve
        p.jitted[key] = jax.jit(fn)
        return p.jitted[key]

    def _call(self, p: _Prepared, key: tuple[int, int, int], threshold: float) -> Call:
        import jax.numpy as jnp

        fn = self._solver(p, key)
        thr = jnp.asarray(threshold, dtype=p.cost.dtype)

        def call() -> SolveOutput:
            plan, n_iters = fn(p.cost, p.a, p.b, thr)
            plan.block_until_ready()
            p.called.add(key)
            return SolveOutput(plan=plan, n_iters=int(np.max(np.asarray(n_iters))))

        call.needs_warmup = key not in p.called  # type: ignore[attr-defined]
        return call

    def fixed(self, prepared: _Prepared, n_iter: int) -> Call:
        inner = math.gcd(n_iter, 10)
        return self._call(prepared, (n_iter, n_iter, inner), -1.0)

    def to_tolerance(self, prepared: _Prepared, knob: float, max_iter: int) -> Call:
        cap = 10 * math.ceil(max_iter / 10)
        return self._call(prepared, (0, cap, 10), knob)
