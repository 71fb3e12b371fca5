"""Validation of the inputs of :func:`otalign.barycenter`, and their preparation as batched tensors.

Every check raises ``ValueError`` naming the argument, the offending value and what was expected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..constraints.base import ConstraintSet, as_constraint_set
from ..constraints.types import Forbid

__all__ = ["Inputs", "prepare", "check_number", "check_int", "parse_rho", "default_tol", "GRAD_MODES"]

GRAD_MODES = ("implicit", "unroll", "none")

#: default stopping tolerance (L1, mass units) by compute dtype: float64 tight; float32 above the
#: resolution of log-domain arithmetic at small epsilon (see docs/concepts.md, "Stopping")
_DEFAULT_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def default_tol(dtype: torch.dtype) -> float:
    return _DEFAULT_TOL[dtype]


def check_number(name: str, value: Any, *, low: float, strict: bool = True, allow_inf: bool = False) -> float:
    """``value`` as a float; ``ValueError`` unless it is a real number above ``low`` (NumPy scalars
    and 0-dim arrays or tensors are accepted)."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0 and not isinstance(value, bool):
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r}; expected a number {'>' if strict else '>='} {low}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf) or v < low or (strict and v == low):
        what = "a finite number" if not allow_inf else "a number (math.inf allowed)"
        raise ValueError(f"{name}={value!r}; expected {what} {'>' if strict else '>='} {low}")
    return v


def check_int(name: str, value: Any, *, low: int) -> int:
    """``value`` as an int; ``ValueError`` unless it is an integer ``>= low``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}={value!r}; expected an integer >= {low}")
    return int(value)


def parse_rho(rho: Any) -> tuple[float, float]:
    """``rho`` as ``(rho_in, rho_bar)``: None means hard on both sides, a number relaxes both, a pair
    gives the strengths on the input-histogram side and on the barycentre side (``math.inf``: hard)."""
    if rho is None:
        return math.inf, math.inf
    if isinstance(rho, (str, bytes)):
        raise ValueError(f"rho={rho!r}; expected None, a number > 0 or a pair (rho_in, rho_bar)")
    if isinstance(rho, Sequence) or (isinstance(rho, np.ndarray) and rho.ndim == 1):
        if len(rho) != 2:
            raise ValueError(f"rho={rho!r}; expected None, a number > 0 or a pair (rho_in, rho_bar)")
        return (
            check_number("rho[0]", rho[0], low=0.0, allow_inf=True),
            check_number("rho[1]", rho[1], low=0.0, allow_inf=True),
        )
    r = check_number("rho", rho, low=0.0, allow_inf=True)
    return r, r


@dataclass
class Inputs:
    """Validated inputs, batched, in the compute dtype, on one device (still attached to autograd)."""

    hist: torch.Tensor  # (B, K, n)
    weights: torch.Tensor  # (Bw, K), Bw in {1, B}, summing to 1
    cost: torch.Tensor  # (Bc, n, m), Bc in {1, B}
    allowed: Optional[torch.Tensor]  # (Bm, n, m) bool, Bm in {1, B}; None: every pair allowed
    batched: bool  # results keep a leading B
    numpy: bool  # histograms came as a NumPy array: results go back as NumPy arrays
    out_dtype: torch.dtype
    grad_inputs: list[torch.Tensor]  # the caller's tensors that require grad

    @property
    def batch(self) -> int:
        return self.hist.shape[0]


def _as_tensor(name: str, value: Any, device: Optional[torch.device]) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise ValueError(f"{name} has dtype {value.dtype}; expected real numbers")
        t = torch.from_numpy(np.ascontiguousarray(value))
    else:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{name} is a {type(value).__name__}; expected a torch.Tensor or a NumPy array"
            ) from exc
        t = torch.from_numpy(arr)
    if not t.is_floating_point():
        if t.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise ValueError(f"{name} has dtype {t.dtype}; expected real numbers")
        t = t.to(torch.float64)
    return t if device is None else t.to(device)


def _check_finite_nonneg(name: str, t: torch.Tensor) -> None:
    d = t.detach()
    bad = ~torch.isfinite(d)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{list(idx)} = {d[idx].item()!r}; expected finite values >= 0")
    neg = d < 0
    if bool(neg.any()):
        idx = tuple(int(i) for i in neg.nonzero()[0])
        raise ValueError(f"{name}{list(idx)} = {d[idx].item()!r}; expected values >= 0")


def _batch(sizes: dict[str, int]) -> int:
    real = {name: b for name, b in sizes.items() if b != 1}
    if len(set(real.values())) > 1:
        desc = ", ".join(f"{name}: {b}" for name, b in real.items())
        raise ValueError(f"batch sizes disagree ({desc}); expected one batch size B (or 1) for all inputs")
    return next(iter(real.values()), 1)


def _forbidden(constraints: Any, n: int, m: int, device: torch.device) -> Optional[torch.Tensor]:
    """The union of the ``Forbid`` masks as ``(Bm, n, m)`` bool (True: forbidden); None if none."""
    if constraints is None:
        return None
    try:
        cset: ConstraintSet = as_constraint_set(constraints)
    except ValueError as exc:
        raise ValueError(f"constraints: {exc}") from exc
    masks = []
    for k, c in enumerate(cset):
        if not isinstance(c, Forbid):
            raise ValueError(
                f"constraints[{k}] is a {type(c).__name__}; barycenter accepts only Forbid constraints "
                "(forbidden pairs, applied to every plan): the marginals of the plans are the "
                "histograms and the barycentre (relax them with rho=)"
            )
        if isinstance(c.mask, str):  # "diagonal"
            mask = torch.eye(n, m, dtype=torch.bool, device=device)[None]
        else:
            mask = c.mask.to(device)
            mask = mask[None] if mask.dim() == 2 else mask
            if mask.shape[-2:] != (n, m):
                raise ValueError(
                    f"constraints[{k}] (Forbid) has a mask of shape {tuple(c.mask.shape)}; expected "
                    f"({n}, {m}) or (B, {n}, {m}) to match the cost"
                )
        masks.append(mask)
    if not masks:
        return None
    out = masks[0]
    for mask in masks[1:]:
        out = out | mask
    return out


def prepare(
    histograms: Any,
    cost: Any,
    weights: Any,
    constraints: Any,
    *,
    rho: tuple[float, float],
    tol: Optional[float],
) -> tuple[Inputs, float]:
    """Validate and batch the inputs; returns them and the tolerance (``tol`` or the dtype's default)."""
    numpy_in = isinstance(histograms, np.ndarray)
    device = histograms.device if isinstance(histograms, torch.Tensor) else None
    if device is None and isinstance(cost, torch.Tensor):
        device = cost.device
    hist = _as_tensor("histograms", histograms, device)
    device = hist.device
    C = _as_tensor("cost", cost, device)

    if hist.dim() not in (2, 3) or hist.shape[-1] == 0 or hist.shape[-2] == 0:
        raise ValueError(
            f"histograms has shape {tuple(hist.shape)}; expected (K, n) or (B, K, n) with K, n >= 1"
        )
    K, n = hist.shape[-2:]
    if C.dim() not in (2, 3) or C.shape[-1] == 0:
        raise ValueError(f"cost has shape {tuple(C.shape)}; expected (n, m) or (B, n, m) with m >= 1")
    if C.shape[-2] != n:
        raise ValueError(
            f"cost has shape {tuple(C.shape)}; expected ({n}, m) or (B, {n}, m): its rows are the "
            f"{n} bins of the histograms (shape {tuple(hist.shape)})"
        )
    m = C.shape[-1]
    _check_finite_nonneg("histograms", hist)
    if not bool(torch.isfinite(C.detach()).all()):
        bad = ~torch.isfinite(C.detach())
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"cost{list(idx)} = {C.detach()[idx].item()!r}; expected finite costs "
            "(forbid pairs with constraints=C.Forbid(mask=...) instead)"
        )

    out_dtype = torch.promote_types(hist.dtype, C.dtype)
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32

    if weights is None:
        w = torch.full((1, K), 1.0 / K, dtype=dtype, device=device)
        w_user = None
    else:
        w_user = _as_tensor("weights", weights, device)
        if w_user.dim() not in (1, 2) or w_user.shape[-1] != K:
            raise ValueError(
                f"weights has shape {tuple(w_user.shape)}; expected ({K},) or (B, {K}): one weight "
                f"per histogram (histograms has shape {tuple(hist.shape)})"
            )
        _check_finite_nonneg("weights", w_user)
        w = w_user.to(dtype)
        w = w[None] if w.dim() == 1 else w
        total = w.detach().sum(-1)
        slack = 1e-6 if dtype == torch.float64 else 1e-5
        off = (total - 1).abs() > slack
        if bool(off.any()):
            i = int(off.nonzero()[0])
            where = f"weights[{i}]" if w_user.dim() == 2 else "weights"
            raise ValueError(
                f"{where} sums to {float(total[i])!r}; expected barycentric weights >= 0 summing to 1 "
                f"(within {slack:g})"
            )
        w = w / w.sum(-1, keepdim=True)  # exact simplex; the gradient is that of w / sum(w)

    forbidden = _forbidden(constraints, n, m, device)
    sizes = {}
    if hist.dim() == 3:
        sizes["histograms"] = hist.shape[0]
    if C.dim() == 3:
        sizes["cost"] = C.shape[0]
    if w_user is not None and w_user.dim() == 2:
        sizes["weights"] = w_user.shape[0]
    if forbidden is not None and forbidden.shape[0] != 1:
        sizes["constraints (Forbid mask)"] = forbidden.shape[0]
    B = _batch(sizes)
    batched = bool(sizes)

    h = hist.to(dtype)
    h = (h[None] if h.dim() == 2 else h).expand(B, K, n)
    Cc = C.to(dtype)
    Cc = Cc[None] if Cc.dim() == 2 else Cc

    tol_value = default_tol(dtype) if tol is None else check_number("tol", tol, low=0.0, strict=False)
    mass = h.detach().sum(-1)  # (B, K)
    empty = mass <= 0
    if bool(empty.any()):
        b, k = (int(i) for i in empty.nonzero()[0])
        where = f"histograms[{b}, {k}]" if hist.dim() == 3 else f"histograms[{k}]"
        raise ValueError(f"{where} has total mass 0; expected histograms with positive mass")
    rho_in, rho_bar = rho
    if math.isinf(rho_in) and math.isinf(rho_bar):
        # equal masses are required; a difference at the rounding level of the input dtype (e.g.
        # normalised bfloat16 histograms) is removed by rescaling every histogram to the mean mass
        spread = mass.amax(-1) - mass.amin(-1)
        rounding = 4 * torch.finfo(hist.dtype).eps * float(mass.amax())
        allowed_spread = max(tol_value, rounding)
        unequal = spread > allowed_spread
        if bool(unequal.any()):
            b = int(unequal.nonzero()[0])
            where = f"histograms[{b}]" if hist.dim() == 3 else "histograms"
            masses = mass[b].tolist()
            raise ValueError(
                f"{where} have total masses {masses}; expected equal masses (within {allowed_spread:g}) "
                "for a balanced barycentre: normalise them, or relax the marginals with rho="
            )
        total = h.sum(-1, keepdim=True)
        h = h * (total.mean(-2, keepdim=True) / total)
    if forbidden is not None and math.isinf(rho_in):
        # a hard input marginal needs an allowed column in every row that carries mass
        dead_rows = (~forbidden).sum(-1) == 0  # (Bm, n)
        stuck = dead_rows[:, None, :] & (h.detach() > 0)
        if bool(stuck.any()):
            b, k, i = (int(j) for j in stuck.nonzero()[0])
            where = f"histograms[{b}, {k}, {i}]" if hist.dim() == 3 else f"histograms[{k}, {i}]"
            raise ValueError(
                f"constraints forbid every column of row {i}, but {where} = {float(h[b, k, i])!r} > 0; "
                "expected an allowed pair in every row that carries mass (or a finite rho)"
            )

    grad_inputs = [t for t in (hist, C, w_user) if isinstance(t, torch.Tensor) and t.requires_grad]
    inputs = Inputs(
        hist=h,
        weights=w,
        cost=Cc,
        allowed=None if forbidden is None else ~forbidden,
        batched=batched,
        numpy=numpy_in,
        out_dtype=out_dtype,
        grad_inputs=grad_inputs,
    )
    return inputs, tol_value
