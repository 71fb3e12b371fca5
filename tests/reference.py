"""Independent reference solvers used by the tests (float64 NumPy/SciPy, no otalign code).

``dual_reference`` maximises the dual of the entropic problem

    max_d  sum_k T_k(d_k) - eps * sum_ij R_ij exp((F_i + G_j + H_{r(i) c(j)} - C_ij) / eps)

with a quasi-Newton method (SciPy's L-BFGS-B, box constraints for caps and TV), where ``F``, ``G``
and ``H`` add up the row, column (and total-mass) and block duals, and ``T_k`` is the concave
conjugate term of each constraint. It shares no code or algorithm with otalign's cyclic
projections, so agreement of the two plans tests both the updates and the formulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize


@dataclass
class Con:
    """A constraint for the reference solver.

    kind: "row", "col", "mass", "block"; relation "==" or "<="; penalty None | ("KL", rho) | ("TV", rho).
    """

    kind: str
    weights: np.ndarray | float
    relation: str = "=="
    penalty: tuple | None = None
    row_groups: np.ndarray | None = None
    col_groups: np.ndarray | None = None


@dataclass
class RefResult:
    plan: np.ndarray
    duals: list = field(default_factory=list)
    grad_norm: float = math.nan


def _term(con: Con, d: np.ndarray) -> tuple[float, np.ndarray]:
    """Value and derivative of T(d) = -Phi*(-d) summed with the weights."""
    w = np.asarray(con.weights, dtype=np.float64)
    kind = None if con.penalty is None else con.penalty[0]
    rho = None if con.penalty is None else con.penalty[1]
    if kind == "KL":
        soft = rho * (1 - np.exp(-d / rho))
        dsoft = np.exp(-d / rho)
        if con.relation == "==":
            return float((w * soft).sum()), w * dsoft
        lin = d <= 0
        return float((w * np.where(lin, d, soft)).sum()), w * np.where(lin, 1.0, dsoft)
    return float((w * d).sum()), w * np.ones_like(d)


def _bounds(con: Con, size: int) -> list[tuple]:
    kind = None if con.penalty is None else con.penalty[0]
    rho = None if con.penalty is None else con.penalty[1]
    if kind == "TV":
        return [(-rho if con.relation == "==" else None, rho)] * size
    if con.relation == "<=" and kind is None:
        return [(None, 0.0)] * size
    return [(None, None)] * size


def dual_reference(C: np.ndarray, cons: list[Con], eps: float, *, entropy: str = "kl",
                   ref_a: np.ndarray | None = None, ref_b: np.ndarray | None = None,
                   forbidden: np.ndarray | None = None) -> RefResult:
    """Solve the entropic problem through its dual; returns the plan."""
    n, m = C.shape
    if entropy == "kl":
        ra = np.full(n, 1 / n) if ref_a is None else ref_a
        rb = np.full(m, 1 / m) if ref_b is None else ref_b
        R = np.outer(ra, rb)
    else:
        R = np.ones((n, m))
    if forbidden is not None:
        R = np.where(forbidden, 0.0, R)
    sizes, shapes = [], []
    for c in cons:
        if c.kind == "row":
            shapes.append((n,))
        elif c.kind == "col":
            shapes.append((m,))
        elif c.kind == "mass":
            shapes.append(())
        else:
            shapes.append(np.asarray(c.weights).shape)
        sizes.append(int(np.prod(shapes[-1])) if shapes[-1] else 1)
    offsets = np.cumsum([0] + sizes)

    def unpack(x):
        return [x[offsets[k]:offsets[k + 1]].reshape(shapes[k]) for k in range(len(cons))]

    def expand(ds):
        S = np.zeros((n, m))
        for c, d in zip(cons, ds):
            if c.kind == "row":
                S += d[:, None]
            elif c.kind == "col":
                S += d[None, :]
            elif c.kind == "mass":
                S += d
            else:
                gr, gc = c.row_groups, c.col_groups
                Hp = np.zeros((d.shape[0] + 1, d.shape[1] + 1))
                Hp[:-1, :-1] = d
                S += Hp[np.where(gr < 0, d.shape[0], gr)][:, np.where(gc < 0, d.shape[1], gc)]
        return S

    def plan(x):
        S = expand(unpack(x))
        with np.errstate(under="ignore"):
            return R * np.exp((S - C) / eps)

    def negdual(x):
        ds = unpack(x)
        P = plan(x)
        val = -eps * P.sum()
        grads = []
        for c, d in zip(cons, ds):
            t, dt = _term(c, d)
            val += t
            if c.kind == "row":
                marg = P.sum(1)
            elif c.kind == "col":
                marg = P.sum(0)
            elif c.kind == "mass":
                marg = np.array(P.sum())
            else:
                gr, gc = c.row_groups, c.col_groups
                marg = np.zeros(d.shape)
                for r in range(d.shape[0]):
                    for s in range(d.shape[1]):
                        marg[r, s] = P[np.ix_(gr == r, gc == s)].sum()
            grads.append((dt - marg).reshape(-1))
        return -val, -np.concatenate(grads)

    bounds = sum((_bounds(c, s) for c, s in zip(cons, sizes)), [])
    x0 = np.zeros(offsets[-1])
    res = minimize(negdual, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 200000, "maxfun": 400000, "ftol": 1e-30, "gtol": 1e-14, "maxcor": 50})
    _, g = negdual(res.x)
    return RefResult(plan=plan(res.x), duals=unpack(res.x), grad_norm=float(np.abs(g).max()))


def newton_unbalanced(C: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, rho_a: float, rho_b: float,
                      *, max_iter: int = 500) -> RefResult:
    """KL-relaxed OT with ``entropy="kl"`` (reference ``a (x) b``), solved by Newton's method on
    the dual, float64. The dual

        D(f, g) = rho_a <a, 1 - e^{-f/rho_a}> + rho_b <b, 1 - e^{-g/rho_b}>
                  - eps sum_ij a_i b_j (e^{(f_i + g_j - C_ij)/eps} - 1)

    is smooth and strictly concave (the penalties remove the gauge), so damped Newton steps with a
    backtracking line search converge quadratically, whatever ``rho / eps`` (its condition number,
    up to ~1e5 here, is harmless to a direct solve of the Newton system).
    """
    n, m = C.shape
    la, lb = np.log(a), np.log(b)

    def parts(f, g):
        logP = la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - C) / eps
        P = np.exp(logP)
        ea, eb = np.exp(-f / rho_a), np.exp(-g / rho_b)
        value = (rho_a * (a * (1 - ea)).sum() + rho_b * (b * (1 - eb)).sum()
                 - eps * (P.sum() - a.sum() * b.sum()))
        grad = np.concatenate([a * ea - P.sum(1), b * eb - P.sum(0)])
        return value, grad, P, ea, eb

    f, g = np.zeros(n), np.zeros(m)
    value, grad, P, ea, eb = parts(f, g)
    for _ in range(max_iter):
        H = np.zeros((n + m, n + m))
        H[:n, :n] = np.diag(-a * ea / rho_a - P.sum(1) / eps)
        H[n:, n:] = np.diag(-b * eb / rho_b - P.sum(0) / eps)
        H[:n, n:] = -P / eps
        H[n:, :n] = -P.T / eps
        step = np.linalg.solve(H, -grad)
        t = 1.0
        while True:
            nf, ng = f + t * step[:n], g + t * step[n:]
            with np.errstate(over="ignore", invalid="ignore"):
                new = parts(nf, ng)
            # Newton's steps are accepted when they shrink the gradient (the value changes below
            # its rounding near the optimum) or when they pass Armijo's test on the value
            shrinks = np.abs(new[1]).max() < np.abs(grad).max()
            armijo = new[0] >= value + 1e-4 * t * (grad @ step)
            if shrinks or armijo or t < 1e-12:
                break
            t *= 0.5
        if not (shrinks or armijo):
            break  # no step helps: the float64 floor is reached
        f, g = nf, ng
        value, grad, P, ea, eb = new
        if np.abs(grad).max() <= 1e-16 * max(1.0, a.sum(), b.sum()):
            break
    return RefResult(plan=P, duals=[f, g], grad_norm=float(np.abs(grad).max()))


def newton_tv(C: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, rho_a: float, rho_b: float,
              *, max_iter: int = 2000) -> RefResult:
    """TV-penalised marginals (``rho * ||P 1 - a||_1`` and ``rho * ||P^T 1 - b||_1``) with
    ``entropy="kl"``, through the box-constrained dual

        max_{|f| <= rho_a, |g| <= rho_b}  <a, f> + <b, g> - eps sum_ij a_i b_j (e^{(f_i + g_j - C_ij)/eps} - 1),

    solved by SciPy's trust-region interior-point method with the exact Hessian (float64), then
    polished by projected Newton steps on the variables off their bounds. ``grad_norm`` is the
    projected gradient's largest entry at the end.
    """
    from scipy.optimize import Bounds

    n, m = C.shape
    la, lb = np.log(a), np.log(b)
    lo = np.concatenate([np.full(n, -rho_a), np.full(m, -rho_b)])
    hi = -lo

    def plan(x):
        with np.errstate(over="ignore"):
            return np.exp(la[:, None] + lb[None, :] + (x[:n, None] + x[None, n:] - C) / eps)

    def negdual(x):
        P = plan(x)
        value = a @ x[:n] + b @ x[n:] - eps * (P.sum() - a.sum() * b.sum())
        return -value, -np.concatenate([a - P.sum(1), b - P.sum(0)])

    def hess(x):
        P = plan(x)
        H = np.zeros((n + m, n + m))
        H[:n, :n] = np.diag(P.sum(1) / eps)
        H[n:, n:] = np.diag(P.sum(0) / eps)
        H[:n, n:] = P / eps
        H[n:, :n] = P.T / eps
        return H

    res = minimize(negdual, np.zeros(n + m), jac=True, hess=hess, method="trust-constr",
                   bounds=Bounds(lo, hi), options={"gtol": 1e-14, "xtol": 1e-16, "maxiter": max_iter})
    x = np.clip(res.x, lo, hi)
    for _ in range(50):  # polish: Newton on the free variables, the others held at their bounds
        _, g = negdual(x)
        grad = -g
        pg = np.abs(np.clip(x + grad, lo, hi) - x).max()
        free = ~(((x <= lo + 1e-12) & (grad < 0)) | ((x >= hi - 1e-12) & (grad > 0)))
        if pg <= 1e-15 or not free.any():
            break
        H = -hess(x)[np.ix_(free, free)]
        step = np.zeros(n + m)
        step[free] = np.linalg.lstsq(H, -grad[free], rcond=None)[0]
        nx = np.clip(x + step, lo, hi)
        if np.abs(np.clip(nx - negdual(nx)[1], lo, hi) - nx).max() >= pg:
            break
        x = nx
    _, g = negdual(x)
    pgrad = float(np.abs(np.clip(x - g, lo, hi) - x).max())
    return RefResult(plan=plan(x), duals=[x[:n], x[n:]], grad_norm=pgrad)
