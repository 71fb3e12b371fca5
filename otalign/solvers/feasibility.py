"""Cross-constraint feasibility checks of the built-in constraint types.

Each check raises ``ValueError`` naming the constraints involved, the values and what was
expected. Relative tolerance ``RTOL`` on masses absorbs float32 rounding of user weights.
Constraints added through the registry are validated by their own projector only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .projectors.block import BlockMassProjector
from .projectors.marginal import MarginalProjector
from .projectors.mass import TotalMassProjector

if TYPE_CHECKING:
    from .setup import Prepared

__all__ = ["check_feasible", "RTOL"]

RTOL = 1e-5


def _fmt(t: torch.Tensor) -> str:
    vals = t.detach().flatten().cpu().tolist()
    return repr(vals[0] if len(vals) == 1 else vals[:6] + (["..."] if len(vals) > 6 else []))


def _all_close(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether ``x`` and ``y`` agree within ``RTOL`` everywhere."""
    if x.numel() == 1 and y.numel() == 1:  # one number each (the common case): on the host
        u, v = float(x), float(y)
        return abs(u - v) <= RTOL * max(abs(u), abs(v), 1e-30)
    return bool(((x - y).abs() <= RTOL * torch.maximum(x.abs(), y.abs()).clamp(min=1e-30)).all())


def check_feasible(prep: "Prepared") -> None:
    """Raise ``ValueError`` on an infeasible constraint set. Row sharding: totals over the rows
    are summed over the ranks (``prep.reducer``), so checks 1-3 raise on every rank alike."""
    projs = prep.projectors
    red = prep.reducer

    def total(p) -> torch.Tensor:
        """``(B',)`` total weight of a marginal (over every rank's rows for a row marginal)."""
        t = p.weights.sum(-1)
        return red.sum(t) if p.axis == 0 else t

    marg = [(k, p) for k, p in enumerate(projs) if isinstance(p, MarginalProjector)]
    eq = {ax: [(k, p) for k, p in marg if p.axis == ax and p.is_hard_equality] for ax in (0, 1)}
    caps = {ax: [(k, p) for k, p in marg if p.axis == ax and p.relation == "<="] for ax in (0, 1)}

    # 1. hard equalities must agree on the total mass
    totals = [(k, p, total(p)) for ax in (0, 1) for k, p in eq[ax]]
    for (k1, p1, t1), (k2, p2, t2) in zip(totals, totals[1:]):
        if not _all_close(t1, t2):
            raise ValueError(
                f"constraints[{k1}] (hard marginal, axis {p1.axis}) has total mass {_fmt(t1)} but "
                f"constraints[{k2}] (hard marginal, axis {p2.axis}) has {_fmt(t2)}; hard marginals "
                "need equal masses (normalise the weights, or relax them with C.unbalanced)"
            )

    # 2. total mass against marginals
    for k, p in enumerate(projs):
        if not isinstance(p, TotalMassProjector):
            continue
        for ax in (0, 1):
            for k2, p2 in eq[ax]:
                t = total(p2)
                if not _all_close(p.mass, t):
                    raise ValueError(
                        f"constraints[{k}] (TotalMass) has mass={_fmt(p.mass)} but constraints[{k2}] "
                        f"fixes the axis-{ax} marginal to total {_fmt(t)}; expected equal masses"
                    )
            for k2, p2 in caps[ax]:
                t = total(p2)
                if bool((p.mass > t * (1 + RTOL)).any()):
                    raise ValueError(
                        f"constraints[{k}] (TotalMass) has mass={_fmt(p.mass)} above the total "
                        f"{_fmt(t)} of the caps of constraints[{k2}] (axis {ax}); expected "
                        "0 < mass <= min(sum a, sum b)"
                    )

    # 3. block masses against hard marginals
    for k, p in enumerate(projs):
        if not isinstance(p, BlockMassProjector):
            continue
        fp = p.footprint
        for ax, groups, count in ((0, fp.row_groups, fp.n_row_groups), (1, fp.col_groups, fp.n_col_groups)):
            other = fp.col_groups if ax == 0 else fp.row_groups
            covers = bool(red.all((other >= 0).all()) if ax == 1 else (other >= 0).all())  # blocks span the other axis
            block_sums = p.mass.sum(-1 if ax == 0 else -2)  # (B', groups on this axis)
            onehot = torch.nn.functional.one_hot(groups.remainder(count + 1), count + 1)[..., :count]
            for k2, p2 in eq[ax] + caps[ax]:
                Bw = max(groups.shape[0], p2.weights.shape[0])  # shared groups, batched weights, or both
                w = p2.weights.expand(Bw, -1)
                group_w = torch.einsum("bi,big->bg", w, onehot.expand(Bw, -1, -1).to(w.dtype))
                group_w = red.sum(group_w) if ax == 0 else group_w
                side = "row" if ax == 0 else "column"
                if p.relation == "==":
                    too_much = bool((block_sums > group_w * (1 + RTOL) + 1e-12).any())
                    mismatch = covers and p2.is_hard_equality and not _all_close(block_sums, group_w)
                    bad, expected = too_much or mismatch, "exactly" if mismatch else "at most"
                else:  # caps: infeasible only if they cannot hold a group's required mass
                    bad = covers and p2.is_hard_equality and bool((block_sums < group_w * (1 - RTOL)).any())
                    expected = "at least"
                if bad:
                    raise ValueError(
                        f"constraints[{k}] (BlockMass, relation {p.relation!r}) puts "
                        f"{_fmt(block_sums)} in the {side} groups but constraints[{k2}] gives those "
                        f"groups weights {_fmt(group_w)}; expected block masses summing to "
                        f"{expected} the group weights"
                    )

    # 4. every row/column with positive hard weight needs an allowed entry
    live_rows = torch.isfinite(prep.log_ra)
    live_cols = torch.isfinite(prep.log_rb)
    labels = prep.terms.forbid_labels
    if prep.allowed is None and not labels and bool(red.all(live_rows.all())) and bool(live_cols.all()):
        return
    B, n, m = live_rows.shape[0], live_rows.shape[1], live_cols.shape[1]
    if prep.allowed is not None or B * n * m <= DENSE_CHECK:
        allowed = prep.allowed if prep.allowed is not None else torch.ones(1, 1, 1, dtype=torch.bool, device=live_rows.device)
        for row_labels, col_labels in labels:
            allowed = allowed & ~((row_labels[:, :, None] == col_labels[:, None, :]) & (row_labels[:, :, None] >= 0))
        reach_rows = (allowed & live_cols[:, None, :]).any(-1) & live_rows  # (B, n)
        reach_cols = ~red.all(~(allowed & live_rows[:, :, None]).any(-2)) & live_cols  # (B, m), over every rank
    else:  # a lazy geometry: count the live partners that each label excludes, constraint by constraint
        reach_rows, reach_cols = live_rows.clone(), live_cols.clone()
        for row_labels, col_labels in labels:
            reach_rows &= _partners_left(row_labels.expand(B, n), col_labels.expand(B, m), live_cols)
            reach_cols &= _partners_left(col_labels.expand(B, m), row_labels.expand(B, n), live_rows)
    for ax, reach in ((0, reach_rows), (1, reach_cols)):
        for k, p in eq[ax]:
            stuck = (p.weights > 0) & ~reach
            if bool(stuck.any()):
                b, i = (int(v) for v in stuck.nonzero()[0])
                side = "row" if ax == 0 else "column"
                raise ValueError(
                    f"constraints[{k}] requires mass {float(p.weights.expand_as(stuck)[b, i]):.4g} "
                    f"in {side} {i} (problem {b}) but every entry of that {side} is forbidden or forced to zero; "
                    "expected each row/column with positive hard weight to keep an allowed entry"
                )


#: the reachability check builds an (B, n, m) boolean mask up to this many entries
DENSE_CHECK = 2**24


def _partners_left(own: torch.Tensor, other: torch.Tensor, other_live: torch.Tensor) -> torch.Tensor:
    """``(B, n)``: whether each entry keeps a live partner on the other axis whose label differs."""
    total = other_live.sum(-1, keepdim=True)
    size = int(max(int(own.max()), int(other.max()), 0)) + 2
    counts = torch.zeros(own.shape[0], size, dtype=torch.long, device=own.device)
    counts.scatter_add_(1, (other + 1).clamp(min=0), other_live.long())
    same = torch.where(own >= 0, counts.gather(1, (own + 1).clamp(min=0)), torch.zeros_like(own))
    return total - same > 0
