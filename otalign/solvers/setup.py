"""Validation of the inputs of :func:`otalign.solve` and preparation of a batched problem."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..constraints.base import ConstraintSet, as_constraint_set
from . import projectors as _builtin  # noqa: F401  (registers the built-in projectors)
from .feasibility import check_feasible
from ..geometry import as_geometry
from ..geometry.base import Geometry, PairTerms
from .distributed import IDENTITY, Reducer
from .problem import Problem, safe_log
from .registry import Projector, projector_for

__all__ = ["Prepared", "prepare", "check_scalar", "MAX_ITER"]

ENTROPIES = ("kl", "shannon")


#: largest ``max_iter`` (iteration counts are int64)
MAX_ITER = 2**62


def check_scalar(
    name: str, value: Any, *, low: float, strict: bool = True, integer: bool = False,
    high: Optional[float] = None,
) -> Any:
    """The number ``value`` as a Python ``float`` (or ``int``), or ``ValueError`` naming ``name``.

    Accepts Python and NumPy numbers and one-element tensors that do not require grad; rejects
    bools, strings, None, NaN and infinities, and values outside ``(low, high]`` (``[low, high]``
    when ``strict=False``).
    """
    what = "an integer" if integer else "a finite number"
    bound = f"{'>' if strict else '>='} {low}" + ("" if high is None else f" and <= {high:g}")
    raw = value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={_short(raw)} (type {type(raw).__name__}); expected {what} {bound}")
    if integer:
        if not isinstance(value, numbers.Integral):
            raise ValueError(f"{name}={_short(raw)}; expected {what} {bound}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name}={_short(raw)}; expected {what} {bound}")
    if value < low or (strict and value == low) or (high is not None and value > high):
        raise ValueError(f"{name}={_short(raw)}; expected {name} {bound}")
    return value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class Prepared:
    """A validated problem: geometry, projectors, reference measure, support."""

    problem: Problem
    constraints: ConstraintSet
    projectors: list[Projector]
    geometry: Geometry
    log_ra: torch.Tensor  # (B, n)
    log_rb: torch.Tensor  # (B, m)
    terms: PairTerms  # forbidden pairs: a (B', n, m) mask (dense geometries) and/or labels
    batched: bool  # outputs keep a batch dimension
    out_dtype: torch.dtype
    reducer: Reducer = IDENTITY  # row sharding: cross-rank sums (identity for one process)

    @property
    def allowed(self) -> Optional[torch.Tensor]:
        """``(B', n, m)`` bool mask of the allowed pairs (None: all, or forbidden by labels)."""
        return self.terms.mask


def check_resolution(magnitude: float, epsilon: float, dtype: torch.dtype, what: str = "costs") -> None:
    """``ValueError`` when ``magnitude / epsilon`` (the size of the log-kernel's entries) is so large
    that the compute dtype cannot resolve one unit of it: the plan's entries would be wrong by
    factors of ``e`` and more (or infinite)."""
    limit = 1.0 / torch.finfo(dtype).eps
    scale = magnitude / epsilon
    if not scale <= limit:  # also catches inf and NaN
        raise ValueError(
            f"epsilon={epsilon:.3g} is too small for {what} of magnitude {magnitude:.3g} in {dtype}: the "
            f"log-kernel entries |C| / epsilon reach {scale:.3g}, beyond the {limit:.3g} that {dtype} "
            "resolves to one unit; expected |C| / epsilon <= that (increase epsilon, subtract a constant "
            "from the cost (balanced plans do not change), or solve in float64)"
        )


def _batch_size(geometry: Geometry, constraints: ConstraintSet, classes: list[type[Projector]]) -> int:
    sizes: dict[int, str] = {}
    if geometry.batch > 1:
        sizes.setdefault(geometry.batch, f"{'cost' if geometry.is_dense else 'geometry'} (batch {geometry.batch})")
    for k, (c, cls) in enumerate(zip(constraints, classes)):
        b = cls.batch_size(c)
        if b == 0:
            raise ValueError(
                f"constraints[{k}] ({type(c).__name__}) declares a batch of 0 problems; expected at least one"
            )
        if b is not None:
            sizes.setdefault(b, f"constraints[{k}] ({type(c).__name__})")
    real = {b: src for b, src in sizes.items() if b != 1}
    if len(real) > 1:
        desc = "; ".join(f"{src}: batch {b}" for b, src in real.items())
        raise ValueError(f"batch sizes disagree ({desc}); expected one batch size B (or 1) for all inputs")
    return next(iter(real), 1)


def _sharded_sizes(reducer: Reducer, n: int, m: int, B: int) -> int:
    """Row sharding: the columns and the batch must agree across ranks (``ValueError`` on every
    rank otherwise); returns the total number of rows."""
    ns, ms, bs = reducer.sizes(n), reducer.sizes(m), reducer.sizes(B)
    if len(set(ms)) > 1:
        raise ValueError(
            f"cost has {ms} columns on ranks 0..{len(ms) - 1}; expected the same (global) columns on every "
            "rank with shard='rows' (each rank passes its rows against all columns)"
        )
    if len(set(bs)) > 1:
        raise ValueError(f"the batch sizes are {bs} on ranks 0..{len(bs) - 1}; expected the same batch B on every rank")
    return sum(ns)


def prepare(cost: Any, constraints: Any, *, epsilon: Optional[float], entropy: str,
            reducer: Reducer = IDENTITY) -> Prepared:
    """Validate everything and build the projectors; raises ``ValueError`` naming the field.

    ``cost``: a :class:`~otalign.geometry.Geometry`, or a tensor (wrapped in ``Dense``).
    ``reducer``: a row-sharded solve's (:mod:`otalign.solvers.distributed`): the cost and the
    row-side tensors are this rank's rows; a ``ValueError`` met on any rank is raised on every
    rank (the ranks exchange a flag before any collective that could hang)."""
    error: Optional[ValueError] = None
    try:
        geometry = as_geometry(cost)
        dtype, device = geometry.dtype, geometry.device
        if epsilon is not None:  # None: exact solve, no entropic term
            epsilon = check_scalar("epsilon", epsilon, low=0.0)
        if entropy not in ENTROPIES:
            raise ValueError(f"entropy={entropy!r}; expected one of {ENTROPIES}")
        cset = as_constraint_set(constraints)
        classes = [projector_for(c) for c in cset]
        B = _batch_size(geometry, cset, classes)
    except ValueError as exc:
        if not reducer.sharded:
            raise
        error = exc
    reducer.agree(error)
    n, m = geometry.n, geometry.m
    rows_total = _sharded_sizes(reducer, n, m, B) if reducer.sharded else None
    if epsilon is not None:
        check_resolution(reducer.max_float(geometry.extent()[0]), epsilon, dtype)
    problem = Problem(n=n, m=m, batch=B, dtype=dtype, device=device, entropy=entropy, dense=geometry.is_dense,
                      valid_rows=geometry.valid_rows, valid_cols=geometry.valid_cols, rows_total=rows_total)
    try:
        projectors = [cls(c, problem) for c, cls in zip(cset, classes)]
        if reducer.sharded:
            _check_shardable(projectors, geometry)
    except ValueError as exc:
        if not reducer.sharded:
            raise
        error = exc
    reducer.agree(error)

    rows = torch.ones(B, n, dtype=torch.bool, device=device)
    cols = torch.ones(B, m, dtype=torch.bool, device=device)
    if geometry.valid_rows is not None:
        rows = rows & geometry.valid_rows
    if geometry.valid_cols is not None:
        cols = cols & geometry.valid_cols
    pairs: Optional[torch.Tensor] = None
    labels: list[tuple[torch.Tensor, torch.Tensor]] = []
    for proj in projectors:
        sup = proj.support()
        if sup.rows is not None:
            rows = rows & sup.rows
        if sup.cols is not None:
            cols = cols & sup.cols
        if sup.pairs is not None:
            pairs = sup.pairs if pairs is None else pairs & sup.pairs
        if sup.forbid_labels is not None:
            labels.append(sup.forbid_labels)

    ref = {0: None, 1: None}
    for proj in projectors:
        if proj.reference is not None and ref[proj.reference[0]] is None:
            ref[proj.reference[0]] = proj.reference[1]
    # a projector that already holds the log of the same weights (a marginal's log_weights)
    logs = {id(p.weights): p.log_weights for p in projectors
            if isinstance(getattr(p, "weights", None), torch.Tensor) and isinstance(getattr(p, "log_weights", None), torch.Tensor)}

    def log_reference(axis: int, live: torch.Tensor) -> torch.Tensor:
        w = ref[axis]
        if entropy == "shannon" or w is None:
            base = torch.zeros(live.shape, dtype=dtype, device=device)
            if entropy == "kl":  # no constraint on this axis: uniform reference weights
                base = safe_log(problem.vector(None, axis, "weights")).expand(live.shape).clone()
        else:
            base = (logs[id(w)] if id(w) in logs else safe_log(w)).expand(live.shape)
        return torch.where(live, base, torch.full_like(base, -math.inf))

    prepared = Prepared(
        problem=problem,
        constraints=cset,
        projectors=projectors,
        geometry=geometry,
        log_ra=log_reference(0, rows),
        log_rb=log_reference(1, cols),
        terms=PairTerms(mask=pairs, forbid_labels=labels),
        batched=geometry.batched_input or B > 1,
        out_dtype=geometry.out_dtype,
        reducer=reducer,
    )
    _check_reference_mass(prepared, entropy)
    try:
        check_feasible(prepared)
    except ValueError as exc:  # the row checks are local: every rank raises
        if not reducer.sharded:
            raise
        error = exc
    reducer.agree(error)
    return prepared


def _check_shardable(projectors: list[Projector], geometry: Geometry) -> None:
    """What a row-sharded solve cannot take: pairs forbidden by labels (``C.Forbid(mask=
    "diagonal")`` or label vectors: their reference mass needs the global labels) and ragged
    batches of point clouds."""
    for k, proj in enumerate(projectors):
        if proj.support().forbid_labels is not None or isinstance(getattr(proj.constraint, "mask", None), str):
            raise ValueError(
                f"constraints[{k}] ({type(proj.constraint).__name__}) forbids pairs by labels (or the diagonal), "
                "which shard='rows' does not support; expected a boolean mask of this rank's rows "
                "(C.Forbid(mask=local_mask), shape (n_local, m))"
            )
    if geometry.valid_rows is not None or geometry.valid_cols is not None:
        raise ValueError("the geometry is a ragged batch (padded points), which shard='rows' does not support; "
                         "expected point clouds without padding")


def _check_reference_mass(prep: Prepared, entropy: str) -> None:
    """The masses the objective adds up must be representable: each axis's weights, and for
    ``entropy="kl"`` the reference measure ``a (x) b`` (mass ``sum a * sum b``)."""
    dtype = prep.problem.dtype
    limit = torch.finfo(dtype).max / 16.0
    with torch.no_grad():  # the weights are finite: a total that overflows is inf, above the limit
        mass_a = prep.reducer.sum(torch.exp(prep.log_ra).sum(-1))
        mass_b = torch.exp(prep.log_rb).sum(-1)
        worst = torch.maximum(mass_a, mass_b)
        if entropy == "kl":
            worst = torch.maximum(worst, mass_a * mass_b)
        worst = float(worst.max())
    if worst > limit:
        raise ValueError(
            f"the weights have total masses {float(mass_a.max()):.3g} (rows) and {float(mass_b.max()):.3g} "
            f"(columns): the objective's terms (the reference measure a (x) b of entropy='kl' has mass "
            f"sum a * sum b) exceed the range of {dtype}; expected weights whose masses it can represent "
            "(normalise them and scale the result, or solve in float64)"
        )
