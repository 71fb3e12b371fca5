"""The benchmark's float64 reference solver: dual coordinate ascent with a stabilised kernel and
epsilon scaling. Independent of otalign's engine (nothing is imported from ``otalign.solvers``).

Problem (one cost ``C`` of shape ``(n, m)``, positive weights ``a``, ``b``)::

    min_P <C, P> + eps * Omega(P) + penalties    s.t. the kind's hard constraints

with ``Omega = KL(P || a (x) b)`` (``entropy="kl"``) or ``sum P log P - P`` (``"shannon"``). The
optimal plan is ``P_ij = exp((f_i + g_j + h - C_ij) / eps) * r_ij`` (``r = a (x) b`` or ``1``) and
the potentials are the fixed point of the exact block maximisations of the concave dual, with
``S_i = log sum_j exp((g_j + h - C_ij) / eps) r_ij`` (and ``T_j`` the same over ``i``):

* ``balanced``: ``f_i = eps (log a_i - S_i)`` (rows sum to ``a``), ``g_j`` likewise, ``h = 0``;
* ``unbalanced`` (``rho * KL(P 1 || a) + rho * KL(P^T 1 || b)``): ``f_i = tau eps (log a_i - S_i)``
  with ``tau = rho / (rho + eps)``;
* ``partial`` (``P 1 <= a``, ``P^T 1 <= b``, ``sum P = mass``): ``f_i = min(0, eps (log a_i - S_i))``
  (a multiplier of an inequality is one-signed), ``g`` likewise, then
  ``h = eps (log mass - log sum_ij exp((f_i + g_j - C_ij) / eps) r_ij)``.

Each update maximises the dual exactly in its block (the dual is concave and the sign bounds are
separable), so the sweeps converge to the optimum.

Numerics: the current potentials ``(f, g, h)`` are kept next to absorbed ones ``(F, G, H)`` and the
kernel ``K = exp((F_i + G_j + H - C_ij) / eps) r_ij``; a sweep is two matrix-vector products with
``K`` (``S_i = log (K v)_i + (h - H - F_i) / eps`` with ``v_j = exp((g_j - G_j) / eps)``). When a
scaling leaves ``[exp(-ABSORB), exp(ABSORB)]`` the potentials are absorbed (``K`` recomputed), so
nothing overflows; an entry of ``K`` that underflows is below ``1e-308`` times the current plan's
scale. Epsilon scaling: stages at ``eps_k = max(eps, range(C) / 2^k)``, each warm-started from the
previous one's potentials, run until they settle (at most :data:`STAGE_SWEEPS`); the last stage
runs at ``eps`` until the stopping rule holds.

Stopping rule (checked every ``check_every`` sweeps): ``balanced``: the L1 row-marginal error after
a sweep (the columns are exact then) is at most ``tol``; ``unbalanced`` and ``partial``: the largest
change of a potential over the last sweep, divided by ``eps`` (the relative change of the plan's
entries), is at most ``tol``. Either way the run also stops when that measure has not decreased
for :data:`STALL_CHECKS` checks in a row while below :data:`STALL_BELOW` (the float64 floor), or after ``max_sweeps``; the result
says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["DualAscentResult", "solve_dual_ascent", "KINDS", "ABSORB", "STAGE_SWEEPS", "STALL_CHECKS", "STALL_BELOW"]

KINDS = ("balanced", "unbalanced", "partial")
#: absorb when a scaling exceeds exp(ABSORB) or falls below exp(-ABSORB)
ABSORB = 50.0
#: sweeps per epsilon-scaling stage at most (a stage ends earlier once its potentials settle)
STAGE_SWEEPS = 300
#: a stopping measure below STALL_BELOW that has not decreased for this many checks in a row is at
#: its float64 floor
STALL_CHECKS = 8
STALL_BELOW = 1e-8


@dataclass
class DualAscentResult:
    """What :func:`solve_dual_ascent` returns.

    Attributes:
        plan: ``(n, m)`` float64 plan.
        f, g: ``(n,)``, ``(m,)`` potentials; h: the mass multiplier (``partial``; else 0).
        sweeps: sweeps at the target epsilon; total_sweeps: including the scaling stages.
        measure: the last value of the stopping measure (module docstring).
        stop: ``"tol"``, ``"stalled"`` (float64 floor) or ``"max_sweeps"``.
    """

    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    h: float
    sweeps: int
    total_sweeps: int
    measure: float
    stop: str


class _Kernel:
    """Absorbed potentials and their kernel (see the module docstring)."""

    def __init__(self, C: torch.Tensor, log_r: torch.Tensor, eps: float) -> None:
        self.C, self.log_r, self.eps = C, log_r, eps
        self.F = torch.zeros(C.shape[0], dtype=C.dtype, device=C.device)
        self.G = torch.zeros(C.shape[1], dtype=C.dtype, device=C.device)
        self.H = 0.0
        self.K = torch.empty_like(C)

    def absorb(self, f: torch.Tensor, g: torch.Tensor, h: float, eps: float) -> None:
        self.F, self.G, self.H, self.eps = f.clone(), g.clone(), h, eps
        torch.exp((f[:, None] + g[None, :] + h - self.C) / eps + self.log_r, out=self.K)

    def scalings(self, f: torch.Tensor, g: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        eps = self.eps
        return (f - self.F) / eps, (g - self.G) / eps, (h - self.H) / eps

    def needs_absorbing(self, f: torch.Tensor, g: torch.Tensor, h: float) -> bool:
        lu, lv, lw = self.scalings(f, g, h)
        return bool(max(lu.abs().max(), lv.abs().max()) > ABSORB) or abs(lw) > ABSORB

    def plan(self, f: torch.Tensor, g: torch.Tensor, h: float) -> torch.Tensor:
        return torch.exp((f[:, None] + g[None, :] + h - self.C) / self.eps + self.log_r)


def _row_log_sums(ker: _Kernel, g: torch.Tensor, h: float) -> torch.Tensor:
    """``S_i = log sum_j exp((g_j + h - C_ij) / eps) r_ij`` through the absorbed kernel."""
    _, lv, lw = ker.scalings(ker.F, g, h)
    return torch.log(ker.K @ torch.exp(lv)) + lw - ker.F / ker.eps


def _col_log_sums(ker: _Kernel, f: torch.Tensor, h: float) -> torch.Tensor:
    lu, _, lw = ker.scalings(f, ker.G, h)
    return torch.log(ker.K.T @ torch.exp(lu)) + lw - ker.G / ker.eps


def _update(kind: str, log_w: torch.Tensor, S: torch.Tensor, eps: float, tau: float) -> torch.Tensor:
    step = eps * (log_w - S)
    if kind == "balanced":
        return step
    if kind == "unbalanced":
        return tau * step
    return torch.clamp(step, max=0.0)  # partial: S = -inf (an empty row) gives +inf, clamped to 0


def _log_total(ker: _Kernel, f: torch.Tensor, g: torch.Tensor) -> float:
    """``log sum_ij exp((f_i + g_j - C_ij) / eps) r_ij`` (the plan's mass at ``h = 0``)."""
    lu, lv, _ = ker.scalings(f, g, ker.H)
    # sum_ij K_ij u_i v_j = sum_ij exp((f_i + g_j + H - C_ij) / eps) r_ij
    return float(torch.log(torch.exp(lu) @ (ker.K @ torch.exp(lv)))) - ker.H / ker.eps


def solve_dual_ascent(
    kind: str,
    C: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    epsilon: float,
    rho: Optional[float] = None,
    mass: Optional[float] = None,
    entropy: str = "kl",
    tol: float = 1e-13,
    max_sweeps: int = 1_000_000,
    check_every: int = 10,
    scaling: bool = True,
) -> DualAscentResult:
    """Solve one problem to float64 precision (see the module docstring).

    Args:
        kind: ``"balanced"``, ``"unbalanced"`` or ``"partial"``.
        C: ``(n, m)`` cost (converted to float64; the device is kept).
        a, b: ``(n,)``, ``(m,)`` positive weights.
        epsilon: entropic strength (> 0). rho: KL strength (unbalanced). mass: total mass (partial).
        entropy: ``"kl"`` or ``"shannon"``.
        tol: threshold of the stopping measure. max_sweeps: cap on sweeps at ``epsilon``.
        check_every: sweeps between two checks. scaling: use epsilon scaling (else start at
            ``epsilon`` from zero potentials).

    Raises:
        ValueError: an argument outside its domain (named in the message).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {KINDS}")
    if entropy not in ("kl", "shannon"):
        raise ValueError(f"entropy={entropy!r}; expected 'kl' or 'shannon'")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon={epsilon!r}; expected a finite number > 0")
    C = torch.as_tensor(C, dtype=torch.float64)
    a = torch.as_tensor(a, dtype=torch.float64, device=C.device)
    b = torch.as_tensor(b, dtype=torch.float64, device=C.device)
    if C.dim() != 2 or a.shape != C.shape[:1] or b.shape != C.shape[1:]:
        raise ValueError(f"C {tuple(C.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)}; expected (n, m), (n,), (m,)")
    if not bool(torch.isfinite(C).all()):
        raise ValueError("C has non-finite entries; expected finite costs")
    if not (bool((a > 0).all()) and bool((b > 0).all())):
        raise ValueError("a and b must be positive (drop zero-weight points first)")
    tau = 1.0
    if kind == "unbalanced":
        if rho is None or not rho > 0:
            raise ValueError(f"rho={rho!r}; expected a number > 0 for kind='unbalanced'")
        tau = 1.0 if math.isinf(rho) else rho / (rho + epsilon)
    if kind == "partial":
        cap = min(float(a.sum()), float(b.sum()))
        if mass is None or not 0 < mass <= cap:
            raise ValueError(f"mass={mass!r}; expected a number in (0, min(sum a, sum b) = {cap:g}]")
    log_a, log_b = torch.log(a), torch.log(b)
    log_r = (log_a[:, None] + log_b[None, :]) if entropy == "kl" else torch.zeros((), dtype=C.dtype, device=C.device)
    log_mass = math.log(mass) if kind == "partial" else 0.0

    spread = float(C.max() - C.min())
    stages = []
    if scaling and spread > epsilon:
        k = 0
        while spread / 2**k > epsilon:
            stages.append(spread / 2**k)
            k += 1
    stages.append(float(epsilon))

    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    h = 0.0
    ker = _Kernel(C, log_r, stages[0])
    total = 0
    sweeps = 0
    measure = math.inf
    stop = "max_sweeps"
    for index, eps in enumerate(stages):
        final = index == len(stages) - 1
        tau_k = 1.0 if kind != "unbalanced" or math.isinf(rho) else rho / (rho + eps)  # type: ignore[operator]
        ker.absorb(f, g, h, eps)
        cap = max_sweeps if final else STAGE_SWEEPS
        best, stalled = math.inf, 0
        for it in range(1, cap + 1):
            f_old, g_old, h_old = f, g, h
            f = _update(kind, log_a, _row_log_sums(ker, g, h), eps, tau_k)
            g = _update(kind, log_b, _col_log_sums(ker, f, h), eps, tau_k)
            if kind == "partial":
                h = eps * (log_mass - _log_total(ker, f, g))
            total += 1
            if final:
                sweeps += 1
            if ker.needs_absorbing(f, g, h):
                ker.absorb(f, g, h, eps)
            if it % check_every and it != cap:
                continue
            if kind == "balanced" and final:
                rows = torch.exp(_row_log_sums(ker, g, h) + f / eps)  # P 1 (columns are exact now)
                measure = float((rows - a).abs().sum())
            else:
                moved = max(float((f - f_old).abs().max()), float((g - g_old).abs().max()), abs(h - h_old))
                measure = moved / eps
            threshold = tol if final else 1e-6
            if measure <= threshold:
                stop = "tol"
                break
            if measure < best or measure > STALL_BELOW:
                best, stalled = min(best, measure), 0
            else:
                stalled += 1
                if stalled >= STALL_CHECKS:
                    stop = "stalled"
                    break
        else:
            stop = "max_sweeps"
        if not final:
            stop = "max_sweeps"
    ker.absorb(f, g, h, stages[-1])
    return DualAscentResult(
        plan=ker.plan(f, g, h), f=f, g=g, h=h, sweeps=sweeps, total_sweeps=total, measure=measure, stop=stop,
    )
