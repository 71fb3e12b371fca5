"""Target plans: which pairs a contrastive loss pulls together, and how much.

A target builds, at call time, a matrix ``T`` of shape ``(N, N)`` (``N = 2B`` in the joint
layout, ``B`` in the cross layout) whose rows sum to 1 and which is zero on excluded self-pairs.
The KL term of a loss is the cross-entropy ``-sum_j T_ij log softmax_j(logits_i)``.

Views are laid out as in :mod:`otalign.contrastive.functional`: in the joint layout row ``i < B``
is view a of sample ``i`` and row ``i + B`` is view b of the same sample (its partner ``t(i)``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ._checks import check_real

__all__ = ["Target", "TargetPlan", "PairedViews", "DomainTarget", "LabelTarget", "CustomTarget", "partner_index"]


def partner_index(batch: int, layout: str, device=None) -> torch.Tensor:
    """``(N,)`` index of each row's positive: ``i + B``/``i - B`` (joint) or ``i`` (cross)."""
    idx = torch.arange(batch, device=device)
    if layout == "cross":
        return idx
    return torch.cat([idx + batch, idx])


def _per_row(values: torch.Tensor, layout: str) -> torch.Tensor:
    """Sample-level annotations ``(B,)`` to row-level ``(N,)``."""
    return values if layout == "cross" else torch.cat([values, values])


def _normalise(T: torch.Tensor) -> torch.Tensor:
    return T / T.sum(-1, keepdim=True)


def _check_annotation(name: str, value: Optional[torch.Tensor], batch: int) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name} is None; this target needs {name} of shape ({batch},) at call time")
    if not isinstance(value, torch.Tensor) or value.shape != (batch,):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} has shape {shape}; expected ({batch},) (one entry per sample)")
    return value


class TargetPlan:
    """The target of one loss evaluation, as divergences read it: the ``(N, N)`` matrix ``T``
    (built on first use) and, for a one-to-one target (paired views), ``partner``: ``(N,)`` the
    column of each row's single positive, of weight 1 (None otherwise)."""

    def __init__(self, build: Callable[[], torch.Tensor], partner: Optional[torch.Tensor] = None) -> None:
        self._build = build
        self._matrix: Optional[torch.Tensor] = None
        self.partner = partner

    @classmethod
    def of(cls, matrix: torch.Tensor) -> "TargetPlan":
        """A target plan holding a given matrix."""
        t = cls(lambda: matrix)
        t._matrix = matrix
        return t

    @property
    def matrix(self) -> torch.Tensor:
        if self._matrix is None:
            self._matrix = self._build()
        return self._matrix


class Target:
    """Base class. Subclasses implement :meth:`matrix`."""

    def matrix(
        self,
        batch: int,
        layout: str,
        *,
        domains: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> torch.Tensor:
        """``(N, N)`` target plan, rows summing to 1."""
        raise NotImplementedError

    @property
    def is_paired(self) -> bool:
        """True when ``T`` is the partner permutation (the loss can index instead of summing)."""
        return False


class PairedViews(Target):
    """1 on each row's partner (the two views of a sample), 0 elsewhere: InfoNCE's target."""

    def matrix(self, batch, layout, *, domains=None, labels=None, dtype=torch.float32, device=None):
        N = batch if layout == "cross" else 2 * batch
        T = torch.zeros(N, N, dtype=dtype, device=device)
        T[torch.arange(N, device=device), partner_index(batch, layout, device)] = 1.0
        return T

    @property
    def is_paired(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "PairedViews()"


class DomainTarget(Target):
    """Domain-aware target (the GCA paper's block-diagonal transport).

    Row ``i`` puts 1 on its partner, ``alpha`` on the other samples of its domain, ``beta`` on
    samples of other domains, 0 on itself, then is normalised to sum 1. ``alpha > beta`` pulls a
    domain together (domain information kept), ``alpha < beta`` pushes domains to mix.
    Call the loss with ``domains=`` (``(B,)`` integer ids).
    """

    def __init__(self, alpha: float, beta: float) -> None:
        self.alpha, self.beta = (check_real(name, v, low=0.0, expected="a finite number >= 0")
                                 for name, v in (("alpha", alpha), ("beta", beta)))

    def matrix(self, batch, layout, *, domains=None, labels=None, dtype=torch.float32, device=None):
        d = _per_row(_check_annotation("domains", domains, batch).to(device), layout)
        same = d[:, None] == d[None, :]
        T = torch.where(same, torch.tensor(self.alpha, dtype=dtype, device=device),
                        torch.tensor(self.beta, dtype=dtype, device=device))
        N = T.shape[0]
        rows = torch.arange(N, device=device)
        if layout != "cross":
            T[rows, rows] = 0.0
        T[rows, partner_index(batch, layout, device)] = 1.0
        return _normalise(T)

    def __repr__(self) -> str:
        return f"DomainTarget(alpha={self.alpha}, beta={self.beta})"


class LabelTarget(Target):
    """Supervised contrastive target: every other sample with the same label is a positive,
    with equal weight (the partner view included). Call the loss with ``labels=`` (``(B,)``)."""

    def matrix(self, batch, layout, *, domains=None, labels=None, dtype=torch.float32, device=None):
        y = _per_row(_check_annotation("labels", labels, batch).to(device), layout)
        T = (y[:, None] == y[None, :]).to(dtype)
        if layout != "cross":
            T.fill_diagonal_(0.0)
        return _normalise(T)

    def __repr__(self) -> str:
        return "LabelTarget()"


class CustomTarget(Target):
    """A fixed target matrix ``(N, N)`` (non-negative; rows are normalised to sum 1)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError("matrix must be a square tensor (N, N)")
        if (matrix < 0).any() or not torch.isfinite(matrix).all() or (matrix.sum(-1) <= 0).any():
            raise ValueError("matrix must be finite, non-negative, with a positive entry in every row")
        self._matrix = matrix

    def matrix(self, batch, layout, *, domains=None, labels=None, dtype=torch.float32, device=None):
        N = batch if layout == "cross" else 2 * batch
        if self._matrix.shape != (N, N):
            raise ValueError(f"target matrix has shape {tuple(self._matrix.shape)}; expected ({N}, {N}) for a batch of {batch} ({layout} layout)")
        T = self._matrix.to(device=device, dtype=dtype)
        if layout != "cross" and bool((T.diagonal() != 0).any()):
            raise ValueError("target matrix puts mass on self-pairs, which the joint layout forbids")
        return _normalise(T)
