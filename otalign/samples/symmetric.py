"""The solves of a Sinkhorn divergence: averaged (Jacobi) dual updates, with ``f = g`` for the
symmetric debiasing terms ``OT(a, a)``.

Alternating Sinkhorn sweeps converge slowly when the two clouds (nearly) coincide: every point
pairs with itself and each pair ``(f_i, g_i)`` has its own nearly free mode ``(f_i + t, g_i - t)``.
This happens for the debiasing terms ``OT(a, a)`` always, and for ``OT(a, b)`` at the end of every
flow that moves ``x`` onto ``y``. The averaged updates (Feydy et al. 2019)

    f <- (f + tau_a T_b(g)) / 2,   g <- (g + tau_b T_a(f)) / 2,
    T_b(g)_i = -eps LSE_j(log b_j + (g_j - C_ij) / eps),   tau = rho / (rho + eps) (1 if balanced)

leave those modes alone (they do not change the marginals) and converge in tens of sweeps; with
``a = b`` and ``x = y`` they keep ``f = g`` (one reduction per sweep). The value is the dual
objective at the fixed point, differentiated with the potentials held fixed (envelope theorem):

    D = <a, phi_a(f)> + <b, phi_b(g)> - eps sum_ij P_ij + eps m(a) m(b),
    P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps),   phi(f) = f (hard) or -rho (exp(-f / rho) - 1) (KL)

(``entropy="kl"``: the reference measure ``a (x) b`` has mass ``m(a) m(b)``). The stopping error
is the L1 violation of the fixed point in mass units, ``sum_i a_i |exp((f_i - tau_a T_b(g)_i) /
eps) - 1|`` plus the same for the columns: the marginal error when balanced. It is measured every
``check_every`` sweeps and, for a warm start (``init``), also after 1, 2, 4, ... sweeps: a start
from the previous step of a gradient flow is often a few sweeps from ``tol``.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from ..geometry.base import Geometry, PairTerms
from ..warnings import NonConvergenceWarning

__all__ = ["averaged_ot"]


def _safe_log(w: torch.Tensor) -> torch.Tensor:
    pos = w > 0
    return torch.where(pos, torch.log(torch.where(pos, w, torch.ones_like(w))), torch.full_like(w, -math.inf))


def _row_lse(geom: Geometry, eps: float, log_b: torch.Tensor, g: torch.Tensor, n: int) -> torch.Tensor:
    """``LSE_j(log b_j + (g_j - C_ij) / eps)``, ``(B, n)``."""
    beta = log_b + g / eps
    alpha = torch.zeros(beta.shape[0], n, dtype=beta.dtype, device=beta.device)
    return geom.reductions.lse(geom, eps, alpha, beta, PairTerms(), -1)


def _col_lse(geom: Geometry, eps: float, log_a: torch.Tensor, f: torch.Tensor, m: int) -> torch.Tensor:
    """``LSE_i(log a_i + (f_i - C_ij) / eps)``, ``(B, m)``."""
    alpha = log_a + f / eps
    beta = torch.zeros(alpha.shape[0], m, dtype=alpha.dtype, device=alpha.device)
    return geom.reductions.lse(geom, eps, alpha, beta, PairTerms(), -2)


def _tau(rho: Optional[float], eps: float) -> float:
    return 1.0 if rho is None or math.isinf(rho) else rho / (rho + eps)


def _phi(f: torch.Tensor, rho: Optional[float]) -> torch.Tensor:
    return f if rho is None or math.isinf(rho) else -rho * torch.expm1(-f / rho)


def averaged_ot(
    geom: Geometry,
    wa: torch.Tensor,
    wb: torch.Tensor,
    *,
    epsilon: float,
    rho: tuple[Optional[float], Optional[float]],
    tol: float,
    max_iter: int,
    symmetric: bool = False,
    check_every: int = 5,
    init: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    warn: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], int, bool]:
    """``(value (B,), (f (B, n), g (B, m)), sweeps, converged)`` of ``OT(a, b)`` on ``geom``.

    ``wa`` ``(B', n)``, ``wb`` ``(B', m)``: non-negative weights (0 on padding), differentiable;
    ``symmetric=True`` (``geom`` is ``x`` vs ``x`` and ``wb`` is ``wa``) keeps ``g = f``. The value
    carries the envelope gradient w.r.t. the geometry's points and the weights."""
    eps = float(epsilon)
    ta, tb = _tau(rho[0], eps), _tau(rho[1], eps)
    B, n, m = max(wa.shape[0], wb.shape[0], geom.batch), geom.n, geom.m
    la, lb = _safe_log(wa.detach()).expand(B, n), _safe_log(wb.detach()).expand(B, m)
    live_a, live_b = torch.isfinite(la), torch.isfinite(lb)
    a, b = wa.detach().expand(B, n), wb.detach().expand(B, m)
    zero = 0.0
    sweeps, err = 0, math.inf
    with torch.no_grad():
        f = torch.zeros(B, n, dtype=la.dtype, device=la.device)
        g = torch.zeros(B, m, dtype=lb.dtype, device=lb.device)
        if init is not None and init[0] is not None and init[0].shape[-1] == n and init[1].shape[-1] == m:
            f = f + init[0].detach().to(f.dtype)
            g = g + init[1].detach().to(g.dtype)
        else:
            f = -ta * eps * _row_lse(geom, eps, lb, g, n)
            g = f if symmetric else -tb * eps * _col_lse(geom, eps, la, f, m)

        def step(f, g):
            tf = -ta * eps * _row_lse(geom, eps, lb, g, n)
            tg = tf if symmetric else -tb * eps * _col_lse(geom, eps, la, f, m)
            return tf, tg

        while sweeps < max_iter:
            tf, tg = step(f, g)
            # warm starts are often a few sweeps from tol: check at 1, 2, 4, ... before check_every
            early = init is not None and sweeps < check_every and sweeps & (sweeps - 1) == 0
            if sweeps % check_every == 0 or early:
                err_rows = (a * torch.expm1((f - tf) / eps).abs()).masked_fill(~live_a, zero).sum(-1)
                err_cols = err_rows if symmetric else \
                    (b * torch.expm1((g - tg) / eps).abs()).masked_fill(~live_b, zero).sum(-1)
                err = float((err_rows + err_cols).max())
                if err <= tol:
                    break
            f = torch.where(live_a, 0.5 * (f + tf), torch.zeros_like(f))
            g = f if symmetric else torch.where(live_b, 0.5 * (g + tg), torch.zeros_like(g))
            sweeps += 1
    converged = err <= tol
    if warn and not converged:
        warnings.warn(f"a Sinkhorn-divergence solve did not converge to tol={tol:g} in max_iter={max_iter} sweeps "
                      f"(error {err:.3g}); raise max_iter (or tol, or epsilon)", NonConvergenceWarning, stacklevel=4)
    # the dual objective with the potentials held fixed: envelope gradients w.r.t. points and weights
    wa_b, wb_b = wa.expand(B, n), wb.expand(B, m)
    log_rows = _safe_log(wa_b) + f / eps + _row_lse(geom, eps, _safe_log(wb_b), g, n)
    total = torch.exp(torch.logsumexp(log_rows.masked_fill(~live_a, -math.inf), -1))
    head = (wa_b * _phi(f, rho[0])).masked_fill(~live_a, zero).sum(-1) + \
        (wb_b * _phi(g, rho[1])).masked_fill(~live_b, zero).sum(-1)
    value = head - eps * total + eps * wa_b.sum(-1) * wb_b.sum(-1)
    return value, (f, g), sweeps, converged
