"""Costs between the two views: the presets and the contract of a caller's cost.

A cost is either a preset name or a callable ``cost(z_a, z_b)`` of the two views ``(B, D)``
(as given to the loss, not normalised) returning

* ``(B, B)``: the cross-view cost ``C_ij = c(z_a_i, z_b_j)`` (a pairwise cost). The joint layout
  then assembles ``[[c(z_a, z_a), c(z_a, z_b)], [c(z_b, z_a), c(z_b, z_b)]]`` from four calls
  (the same work as one ``(2B, 2B)`` call); the cross layout calls ``c(z_a, z_b)`` and, for the
  reverse direction, ``c(z_b, z_a)``.
* ``(2B, 2B)`` (joint layout only): the whole joint cost over ``[z_a; z_b]`` (rows and columns:
  view a, then view b). Its diagonal (self-pairs) is never used and may hold anything.

Gradients flow through the callable. Its output is cast to the loss's computation dtype and must
be finite (off the diagonal, in the joint layout); a wrong shape, device or a non-finite entry
raises ``ValueError`` naming ``cost``.

Presets (``z`` normalised to unit rows where the name says cosine):

=====================  ====================================================================
``"cosine"``           ``C = -cos(z_i, z_j)`` (default): the kernel ``exp(cos / epsilon)`` is
                       InfoNCE's (SimCLR's) and RINCE's (Chuang et al.) exponentiated logits
``"cosine_distance"``  ``C = 1 - cos(z_i, z_j)``: the GCA authors' cost. It differs from
                       ``"cosine"`` by the constant 1, which cancels in every plan and KL term
                       and multiplies the robust terms by ``exp(-q / epsilon)``
``"sqeuclidean"``      ``C = ||z_i - z_j||^2`` between the embeddings as given (not normalised;
                       for unit-norm embeddings it is ``2 * cosine_distance``)
=====================  ====================================================================
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from ._checks import check_choice

__all__ = ["COST_PRESETS", "CostSpec", "check_cost", "views_cost"]

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CostSpec = Union[str, CostFn]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def _neg_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(x @ y.T)


def _one_minus_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1.0 - x @ y.T


def _sqeuclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xx = (x * x).sum(-1)[:, None]
    yy = (y * y).sum(-1)[None, :]
    return torch.clamp(xx + yy - 2.0 * (x @ y.T), min=0.0)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


#: name -> (per-view preparation, pairwise cost of prepared views). The preset ``"cosine"``
#: is exactly ``lambda a, b: -(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T)``.
_PRESETS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], CostFn]] = {
    "cosine": (_unit, _neg_dot),
    "cosine_distance": (_unit, _one_minus_dot),
    "sqeuclidean": (_identity, _sqeuclidean),
}


def _preset_fn(name: str) -> CostFn:
    prepare, pairwise = _PRESETS[name]

    def cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pairwise(prepare(x), prepare(y))

    cost.__name__ = name
    return cost


#: The presets as callables ``cost(x, y) -> (len(x), len(y))``.
COST_PRESETS: dict[str, CostFn] = {name: _preset_fn(name) for name in _PRESETS}


def check_cost(cost: object) -> CostSpec:
    """A preset name or a callable, else ``ValueError``."""
    if callable(cost):
        return cost  # type: ignore[return-value]
    return check_choice("cost", cost, tuple(_PRESETS))


def _call(cost: CostFn, x: torch.Tensor, y: torch.Tensor, shapes: tuple[tuple[int, int], ...]) -> torch.Tensor:
    C = cost(x, y)
    if not isinstance(C, torch.Tensor) or not C.is_floating_point():
        raise ValueError(f"cost returned {type(C).__name__}; expected a float tensor of shape "
                         f"{' or '.join(str(s) for s in shapes)}")
    if tuple(C.shape) not in shapes:
        raise ValueError(f"cost returned shape {tuple(C.shape)}; expected {' or '.join(str(s) for s in shapes)} "
                         f"for views of shape {tuple(x.shape)}")
    if C.device != x.device:
        raise ValueError(f"cost returned a tensor on {C.device}; expected the views' device {x.device}")
    return C.to(x.dtype)


def _check_finite(C: torch.Tensor, joint: bool) -> None:
    finite = torch.isfinite(C)
    if joint:
        finite = finite | torch.eye(C.shape[0], dtype=torch.bool, device=C.device)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise ValueError(f"cost returned a non-finite entry at {tuple(bad)} ({float(C[tuple(bad)])}); "
                         "expected finite costs (off the diagonal in the joint layout)")


def views_cost(z_a: torch.Tensor, z_b: torch.Tensor, layout: str = "joint", cost: CostSpec = "cosine") -> torch.Tensor:
    """The cost of the plan: ``(2B, 2B)`` over ``[z_a; z_b]`` (joint) or ``(B, B)`` (cross).

    A preset is computed as a caller's pairwise callable returning ``(B, B)`` would be (the same
    four blocks in the joint layout; each view is prepared once), so passing the preset's function
    (``COST_PRESETS[name]``, or the same operations written by the caller) reproduces the loss bit
    for bit (its gradient to rounding: the normalisation's backward sums the blocks in another
    order).
    """
    B = z_a.shape[0]
    if isinstance(cost, str):
        prepare, pairwise = _PRESETS[check_choice("cost", cost, tuple(_PRESETS))]
        a, b = prepare(z_a), prepare(z_b)
        if layout == "cross":
            return pairwise(a, b)
        return torch.cat([torch.cat([pairwise(a, a), pairwise(a, b)], dim=1),
                          torch.cat([pairwise(b, a), pairwise(b, b)], dim=1)], dim=0)
    if layout == "cross":
        C = _call(cost, z_a, z_b, ((B, B),))
        _check_finite(C, joint=False)
        return C
    C = _call(cost, z_a, z_b, ((B, B), (2 * B, 2 * B)))
    if C.shape[0] == B:
        C = torch.cat([torch.cat([_call(cost, z_a, z_a, ((B, B),)), C], dim=1),
                       torch.cat([_call(cost, z_b, z_a, ((B, B),)), _call(cost, z_b, z_b, ((B, B),))], dim=1)], dim=0)
    _check_finite(C, joint=True)
    return C.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=C.device), 0.0)  # self-pairs: never used
