"""Divergences between the target plan and the learned plan, per anchor.

Both take ``logits`` (``(N, N)``: ``log K_ij + log v_j``, i.e. the log of the plan with its row
scaling removed, ``-inf`` on excluded pairs) and the target ``T`` (rows summing to 1), and return
``(N,)`` per-anchor terms:

* :class:`KL`: ``-sum_j T_ij log( K_ij v_j / sum_k K_ik v_k )`` (cross-entropy to the target).
* :class:`Robust` (RINCE, Chuang et al. 2022): ``-(sum_j T_ij K_ij v_j)^q / q
  + (lam sum_j K_ij v_j)^q / q``; for paired views the first sum is the partner's entry.

Combine them with ``+`` and ``*``: ``KL() * r1 + Robust(q, lam) * r2``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Divergence", "KL", "Robust", "WeightedSum"]


def _masked_log_softmax_terms(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    used = target > 0
    return -(target * torch.where(used, logp, torch.zeros_like(logp))).sum(-1)


class Divergence:
    """Base class: ``terms(logits, target) -> (N,)``; supports ``+`` and scalar ``*``."""

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named ``(N,)`` per-anchor terms whose weighted sum is the loss."""
        raise NotImplementedError

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(logits, target).values())

    def __mul__(self, weight: float) -> "WeightedSum":
        return WeightedSum([(float(weight), self)])

    __rmul__ = __mul__

    def __add__(self, other: "Divergence") -> "WeightedSum":
        return WeightedSum([(1.0, self)]) + other


class KL(Divergence):
    """Cross-entropy between the target rows and the row-normalised plan (InfoNCE's term)."""

    name = "kl"

    def terms(self, logits, target):
        return {self.name: _masked_log_softmax_terms(logits, target)}

    def __repr__(self) -> str:
        return "KL()"


class Robust(Divergence):
    """The RINCE term with ``q`` in (0, 1] and ``lam > 0`` (q -> 0 gives KL + log lam)."""

    name = "robust"

    def __init__(self, q: float = 0.6, lam: float = 0.01) -> None:
        if not (isinstance(q, (int, float)) and 0 < q <= 1):
            raise ValueError(f"q={q!r}; expected 0 < q <= 1")
        if not (isinstance(lam, (int, float)) and lam > 0 and math.isfinite(lam)):
            raise ValueError(f"lam={lam!r}; expected a finite lam > 0")
        self.q, self.lam = float(q), float(lam)

    def terms(self, logits, target):
        used = target > 0
        log_pos = torch.logsumexp(torch.where(used, logits + torch.log(torch.where(used, target, torch.ones_like(target))),
                                              torch.full_like(logits, -math.inf)), dim=-1)
        log_all = torch.logsumexp(logits, dim=-1)
        q = self.q
        value = -torch.exp(q * log_pos) / q + torch.exp(q * (math.log(self.lam) + log_all)) / q
        return {self.name: value}

    def __repr__(self) -> str:
        return f"Robust(q={self.q}, lam={self.lam})"


class WeightedSum(Divergence):
    """``sum_k w_k D_k``; term names are kept (``kl``, ``robust``) and weighted."""

    def __init__(self, parts: list[tuple[float, Divergence]]) -> None:
        flat: list[tuple[float, Divergence]] = []
        for w, d in parts:
            if isinstance(d, WeightedSum):
                flat += [(w * w2, d2) for w2, d2 in d.parts]
            else:
                flat.append((w, d))
        self.parts = flat

    def terms(self, logits, target):
        out: dict[str, torch.Tensor] = {}
        for w, d in self.parts:
            for name, t in d.terms(logits, target).items():
                out[name] = out[name] + w * t if name in out else w * t
        return out

    def __mul__(self, weight: float) -> "WeightedSum":
        return WeightedSum([(w * float(weight), d) for w, d in self.parts])

    __rmul__ = __mul__

    def __add__(self, other: Divergence) -> "WeightedSum":
        return WeightedSum(self.parts + (other.parts if isinstance(other, WeightedSum) else [(1.0, other)]))

    def __repr__(self) -> str:
        return " + ".join(f"{w:g} * {d!r}" for w, d in self.parts)
