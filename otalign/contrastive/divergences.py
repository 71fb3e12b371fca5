"""Divergences between the target plan and the learned plan, per anchor.

A divergence reads a :class:`PlanView` (the learned plan in the log domain) and the target ``T``
(``(N, N)``, rows summing to 1) and returns named per-anchor :class:`Term` s:

* :class:`KL`: the cross-entropy ``-sum_j T_ij log P_ij`` of the target rows to the plan the
  loss reads: the row-renormalised plan (``readout="renormalised"``, default: for balanced
  marginals ``P^(2T+1)``, one row step after ``T`` sweeps; InfoNCE's term) or the plan after the
  last column step, ``P^(2T) = diag(u) K diag(v)`` (``readout="raw"``, the GCA authors' ImageNet
  read-out). With ``T = I`` it is ``KL(I || P)`` without the mass terms, as ``F.kl_div`` computes it.
* :class:`Robust` (RINCE, Chuang et al. 2022), with ``q`` in (0, 1] and ``lam > 0``, on the plan
  with its row scaling removed, ``K diag(v)``:
  ``-(sum_j T_ij K_ij v_j)^q / q + (lam / u_i)^q / q`` (``form="scaling"``: the GCA authors'
  code and poster, ``u`` the row scaling of the last row step, ``u = (a / (K v))^(rho/(rho+eps))``
  for KL-relaxed unit marginals) or ``... + (lam sum_j K_ij v_j)^q / q`` (``form="partition"``).
  The two coincide for a single row projection (``n_iter = 0``) and in the balanced limit up to
  one half-step; for finite ``rho`` the partition enters the scaling form with the exponent
  ``q rho / (rho + eps)``.
* :class:`Uniformity` (IOT-uni, Shi et al. 2023): ``KL(Q_i || P_i)`` with ``Q`` the uniform plan
  over the candidate pairs carrying the plan's mean entry (the IOT authors' "uniformity" term).

Combine them with ``+`` and ``*``: ``KL() * r1 + Robust(q, lam) * r2``.

All terms are computed in the log domain. A robust term ``(e^{q b} - e^{q a}) / q`` is held as
``e^{q max(a, b)} * (b - a) * exprel(-q |b - a|)``, and means over anchors factor out the largest
exponent, so a loss is never ``inf - inf``: where its value exceeds the dtype's range it
saturates to ``+-inf`` with the right sign, and elsewhere float32 follows float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ._checks import F32_TINY, check_choice, check_real
from .targets import TargetPlan

__all__ = ["PlanView", "Term", "Divergence", "KL", "Robust", "Uniformity", "WeightedSum", "READOUTS",
           "ROBUST_FORMS", "LAM_SCALES"]

READOUTS = ("renormalised", "raw")
ROBUST_FORMS = ("scaling", "partition")
LAM_SCALES = ("otalign", "authors")


# ---------------------------------------------------------------- the plan a divergence reads
@dataclass
class PlanView:
    """The learned plan ``P^(2T) = diag(u) K diag(v)`` after ``n_iter = T`` sweeps, in the log domain.

    Attributes:
        logits: ``(N, N)`` ``log K_ij + log v_j`` (the plan with its row scaling removed),
            ``-inf`` on excluded pairs.
        log_u: ``(N,)`` ``log u_i``, the row scaling of the last row step (for ``n_iter = 0``: the
            row projection of the kernel, ``u = 1 / (K 1)``).
        readout: ``"renormalised"`` or ``"raw"``: which plan the KL and uniformity terms read
            (for ``n_iter = 0`` both are the row projection ``diag(u) K``).
        n_iter: sweeps run.
        taus: ``(rho1 / (rho1 + eps), rho2 / (rho2 + eps))`` when the constraint set is unit
            marginals (1 for hard ones); None for any other constraint set.
    """

    logits: torch.Tensor
    log_u: torch.Tensor
    readout: str = "renormalised"
    n_iter: int = 0
    taus: Optional[tuple[float, float]] = None

    def log_plan(self) -> torch.Tensor:
        """``(N, N)`` log of the plan the loss reads (``-inf`` on excluded pairs)."""
        if self.readout == "raw" and self.n_iter > 0:
            return self.logits + self.log_u[:, None]
        return self.logits - torch.logsumexp(self.logits, dim=-1, keepdim=True)

    def authors_offsets(self) -> tuple[float, float]:
        """``(log alpha, log beta)`` such that the GCA authors' scalings, computed with marginals
        ``a = b = 1/N`` and started from ``v = 1/N`` on the same kernel, are ``alpha v`` and
        ``beta u`` (scalars, since only the marginals' scale differs)."""
        if self.taus is None:
            raise ValueError("lam_scale='authors' needs the unit-marginal constraints of the presets "
                             "(cl.unit_marginals(rho)); this plan was computed under another constraint set")
        N = self.logits.shape[-1]
        tau1, tau2 = self.taus
        log_n = math.log(N)
        log_alpha = -log_n  # v_0 = 1/N
        if self.n_iter == 0:  # one row projection: u = (1/N) / (K v_0)
            return log_alpha, -(log_n + log_alpha)
        log_beta = 0.0
        for _ in range(self.n_iter):
            log_beta = -tau1 * (log_n + log_alpha)  # u = ((1/N) / (K alpha v))^tau1
            log_alpha = -tau2 * (log_n + log_beta)  # v = ((1/N) / (K^T beta u))^tau2
        return log_alpha, log_beta


# ---------------------------------------------------------------- overflow-safe per-anchor terms
def _log_max(dtype: torch.dtype) -> float:
    """A log-magnitude whose ``exp`` is safely finite (``exp(log(max))`` rounds up to inf)."""
    return math.log(torch.finfo(dtype).max) - 1.0


def _exp_times(log_factor: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``exp(log_factor) * s``: finite wherever the product is representable, ``+-inf`` beyond,
    never ``inf * 0``; the gradient is finite wherever the result is."""
    lim = _log_max(s.dtype)
    log_factor = log_factor.expand_as(s)
    use_log = (log_factor > lim) & (s != 0)
    lf = torch.where(use_log, log_factor, torch.zeros_like(log_factor))
    ss = torch.where(use_log, s, torch.ones_like(s))
    via_log = torch.sign(ss) * torch.exp(lf + torch.log(ss.abs()))
    direct = torch.exp(torch.clamp(log_factor, max=lim)) * s
    return torch.where(use_log, via_log, direct)


def _exprel(y: torch.Tensor) -> torch.Tensor:
    """``expm1(y) / y`` for ``y <= 0`` (1 at 0), smooth, without 0/0."""
    small = y > -1e-3
    ys = torch.where(small, torch.full_like(y, -1.0), y)
    series = 1 + y * (0.5 + y * (1 / 6 + y / 24))
    return torch.where(small, series, torch.expm1(ys) / ys)


class Term:
    """Per-anchor values ``sum_k exp(log_scale_k) * inner_k`` (each ``(N,)``; a missing
    ``log_scale`` is 0). Kept factored so that sums and means never overflow before they must."""

    def __init__(self, inner: torch.Tensor, log_scale: Optional[torch.Tensor] = None) -> None:
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = [
            (inner, torch.zeros_like(inner) if log_scale is None else log_scale)]

    @classmethod
    def _of(cls, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> "Term":
        t = cls.__new__(cls)
        t.parts = parts
        return t

    @classmethod
    def power_gap(cls, a: torch.Tensor, b: torch.Tensor, q: float) -> "Term":
        """``(e^{q b} - e^{q a}) / q`` per anchor, as ``e^{q max(a, b)} (b - a) exprel(-q |b - a|)``."""
        d = b - a
        return cls(d * _exprel(-q * d.abs()), q * torch.maximum(a, b))

    def __mul__(self, weight: float) -> "Term":
        return Term._of([(inner * weight, ls) for inner, ls in self.parts])

    __rmul__ = __mul__

    def __add__(self, other: "Term") -> "Term":
        return Term._of(self.parts + other.parts)

    def cat(self, other: "Term") -> "Term":
        """The anchors of ``self`` followed by those of ``other`` (same structure)."""
        return Term._of([(torch.cat([i1, i2]), torch.cat([l1, l2]))
                         for (i1, l1), (i2, l2) in zip(self.parts, other.parts)])

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([p[0] for p in self.parts]), torch.stack([p[1] for p in self.parts])

    def values(self) -> torch.Tensor:
        """``(N,)`` per-anchor values (``+-inf`` where beyond the dtype's range, never NaN)."""
        inner, ls = self._stacked()  # (K, N)
        M = _finite_or_zero(ls.amax(dim=0).detach())
        return _exp_times(M, (torch.exp(ls - M) * inner).sum(0))

    def mean(self) -> torch.Tensor:
        """0-dim mean over anchors (``+-inf`` where beyond the dtype's range, never NaN)."""
        inner, ls = self._stacked()
        M = _finite_or_zero(ls.amax().detach())
        return _exp_times(M - math.log(inner.shape[-1]), (torch.exp(ls - M) * inner).sum())


def _finite_or_zero(M: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(M), M, torch.zeros_like(M))


def total_mean(terms: Sequence[Term]) -> torch.Tensor:
    """Mean over anchors of the sum of ``terms`` (one overflow-safe reduction)."""
    parts = [p for t in terms for p in t.parts]
    return Term._of(parts).mean()


# ---------------------------------------------------------------- divergences
def _log_target(target: torch.Tensor) -> torch.Tensor:
    used = target > 0
    return torch.where(used, torch.log(torch.where(used, target, torch.ones_like(target))),
                       torch.full_like(target, -math.inf))


def _cross_entropy(log_plan: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    used = target > 0
    return -(target * torch.where(used, log_plan, torch.zeros_like(log_plan))).sum(-1)


def _logsumexp(x: torch.Tensor, dim: int = -1, *, may_be_empty: bool = True) -> torch.Tensor:
    """``logsumexp`` that gives ``-inf`` with a zero (not NaN) gradient on all ``-inf`` slices
    (``may_be_empty=False``: the caller knows every slice has a finite entry)."""
    if not may_be_empty:
        return torch.logsumexp(x, dim=dim)
    empty = torch.isneginf(x).all(dim=dim, keepdim=True)
    out = torch.logsumexp(torch.where(empty, torch.zeros_like(x), x), dim=dim, keepdim=True)
    return torch.where(empty, torch.full_like(out, -math.inf), out).squeeze(dim)


def _one_positive(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 1)`` index of each row's largest target entry, and ``(N,)`` whether it is the only one."""
    return target.argmax(dim=-1, keepdim=True), (target > 0).sum(-1) == 1


def _neg_log_share(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``-log(exp(x_it) / sum_j exp(x_ij)) = softplus(logsumexp_{j != t}(x_ij - x_it))`` per row
    (``t``: ``(N, 1)`` column indices). A row may have no other finite entry (a batch of one)."""
    rel = x - x.gather(-1, t)
    rel = rel.scatter(-1, t, torch.full(t.shape, -math.inf, dtype=rel.dtype, device=rel.device))
    return torch.nn.functional.softplus(_logsumexp(rel, may_be_empty=x.shape[-1] <= 2))


def _softmax_cross_entropy(logits: torch.Tensor, target: TargetPlan) -> torch.Tensor:
    """``-sum_j T_ij log softmax(logits_i)_j``. Rows with a single positive ``t`` are computed as
    ``softplus(logsumexp_{j != t}(l_ij - l_it))``, which keeps its relative accuracy when the
    positive dominates (``logsumexp(l_i) - l_it`` would round a value of 1e-9 to 0 in float32)."""
    if target.partner is not None:
        return _neg_log_share(logits, target.partner[:, None])
    T = target.matrix
    general = _cross_entropy(logits - torch.logsumexp(logits, dim=-1, keepdim=True), T)
    t, one_hot = _one_positive(T)
    return torch.where(one_hot, _neg_log_share(logits, t), general)


def _raw_cross_entropy(plan: "PlanView", target: TargetPlan) -> torch.Tensor:
    """``-sum_j T_ij log P_ij`` on ``P^(2T)``. When the last step normalised the columns exactly
    (hard unit column marginals), ``P_it = u_i K_it / sum_k u_k K_kt`` is a share of its column,
    and one-positive rows are computed from differences within that column (accurate when
    ``P_it`` is close to 1, where ``log u_i + log K_it + log v_t`` would cancel)."""
    shares = plan.n_iter > 0 and plan.taus is not None and plan.taus[1] == 1.0
    if target.partner is not None and not shares:
        return -(plan.logits.gather(-1, target.partner[:, None]).squeeze(-1) + plan.log_u)
    if target.partner is not None:
        t, one_hot = target.partner[:, None], None
    else:
        general = _cross_entropy(plan.log_plan(), target.matrix)
        if not shares:
            return general
        t, one_hot = _one_positive(target.matrix)
    M = plan.log_u[:, None] + plan.logits  # log u_k + log K_kj + log v_j; v_j is constant in column j
    cols = M.T.gather(0, t.expand(-1, M.shape[0]))  # row i: column t(i) of M
    diag = torch.arange(M.shape[0], device=M.device)[:, None]
    single = _neg_log_share(cols, diag)
    return single if one_hot is None else torch.where(one_hot, single, general)


def _log_positive(logits: torch.Tensor, target: TargetPlan) -> torch.Tensor:
    """``(N,)`` ``log sum_j T_ij exp(logits_ij)``."""
    if target.partner is not None:
        return logits.gather(-1, target.partner[:, None]).squeeze(-1)
    return _logsumexp(logits + _log_target(target.matrix))


class Divergence:
    """Base class: ``terms(plan, target) -> {name: Term}``; supports ``+`` and scalar ``*``.

    ``plan`` is a :class:`PlanView`; ``target`` a :class:`~otalign.contrastive.targets.TargetPlan`
    (``target.matrix``: the ``(N, N)`` target plan, rows summing to 1; ``target.partner``: each
    row's single positive for paired views, else None). A new divergence returns
    ``Term(values)`` for plain ``(N,)`` per-anchor values.
    """

    def terms(self, plan: PlanView, target: TargetPlan) -> dict[str, Term]:
        raise NotImplementedError

    def __call__(self, plan: PlanView, target) -> torch.Tensor:
        """``(N,)`` per-anchor values of the whole divergence (``target``: a ``TargetPlan`` or
        an ``(N, N)`` matrix)."""
        if isinstance(target, torch.Tensor):
            target = TargetPlan.of(target)
        terms = list(self.terms(plan, target).values())
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total.values()

    def parts(self) -> list[tuple[float, "Divergence"]]:
        """``[(weight, divergence)]``: the weighted summands (a plain divergence: itself, 1)."""
        return [(1.0, self)]

    def __mul__(self, weight: float) -> "WeightedSum":
        return WeightedSum([(weight, self)])

    __rmul__ = __mul__

    def __add__(self, other: "Divergence") -> "WeightedSum":
        return WeightedSum([(1.0, self)]) + other


class KL(Divergence):
    """Cross-entropy between the target rows and the plan read out (InfoNCE's term)."""

    name = "kl"

    def terms(self, plan, target):
        if plan.readout == "renormalised" or plan.n_iter == 0:  # n_iter = 0: the row projection either way
            return {self.name: Term(_softmax_cross_entropy(plan.logits, target))}
        return {self.name: Term(_raw_cross_entropy(plan, target))}

    def __repr__(self) -> str:
        return "KL()"


class Robust(Divergence):
    """The RINCE term with ``q`` in (0, 1] and ``lam > 0`` (``q -> 0`` gives KL + log lam).

    Args:
        q, lam: RINCE's exponent and weight of the negative term.
        form: ``"partition"`` (default, ``(lam sum_j K_ij v_j)^q / q``) or ``"scaling"``
            (``(lam / u_i)^q / q``, the GCA authors' form); see the module docstring. With
            ``lam`` on otalign's scale the scaling form's push on the negatives is too weak to
            prevent a collapse of the embeddings (``docs/experiments.md``).
        lam_scale: ``"otalign"`` (unit marginals, scalings started from ``v = 1``: ``lam`` weighs
            a row mass of order 1) or ``"authors"`` (the whole term evaluated on the GCA authors'
            normalisation, marginals ``1/N`` and ``v`` started at ``1/N``, so that their ``lam`` and
            ``r2`` mean the same thing; needs the presets' unit-marginal constraints). In the
            balanced case ``"authors"`` is ``N^-q`` times the ``"otalign"`` term with
            ``lam * N`` in place of ``lam``.
    """

    name = "robust"

    def __init__(self, q: float = 0.6, lam: float = 0.01, *, form: str = "partition", lam_scale: str = "otalign") -> None:
        self.q = check_real("q", q, low=F32_TINY, high=1.0,
                            expected="a number in (0, 1] (RINCE's exponent; at least 1.2e-38, a normal float32)")
        self.lam = check_real("lam", lam, low=0.0, low_open=True,
                              expected="a finite number > 0 (the weight of RINCE's negative term)")
        self.form = check_choice("robust", form, ROBUST_FORMS)
        self.lam_scale = check_choice("lam_scale", lam_scale, LAM_SCALES)

    def terms(self, plan, target):
        logits = plan.logits
        log_pos = _log_positive(logits, target)  # log sum_j T_ij K_ij v_j
        log_lam = math.log(self.lam)
        if self.form == "scaling":
            log_neg = log_lam - plan.log_u
        else:
            log_neg = log_lam + _logsumexp(logits, may_be_empty=False)
        if self.lam_scale == "authors":  # their v is alpha v, their u is beta u
            log_alpha, log_beta = plan.authors_offsets()
            log_pos = log_pos + log_alpha
            log_neg = log_neg - log_beta if self.form == "scaling" else log_neg + log_alpha
        return {self.name: Term.power_gap(log_pos, log_neg, self.q)}

    def __repr__(self) -> str:
        return f"Robust(q={self.q}, lam={self.lam}, form={self.form!r}, lam_scale={self.lam_scale!r})"


class Uniformity(Divergence):
    """``KL(Q_i || P_i)`` per anchor, ``Q`` uniform over the candidate pairs (those not excluded)
    with the mean entry of the plan read out, ``m = mean_{candidates} P`` (IOT-uni's term;
    gradients flow through ``m`` as well)."""

    name = "uniformity"

    def terms(self, plan, target):
        log_plan = plan.log_plan()
        cand = torch.isfinite(plan.logits)
        n_cand = cand.sum(-1).to(log_plan.dtype)
        log_m = torch.logsumexp(log_plan[cand], dim=0) - torch.log(n_cand.sum())
        sum_log = torch.where(cand, log_plan, torch.zeros_like(log_plan)).sum(-1)
        return {self.name: Term(torch.exp(log_m) * (n_cand * log_m - sum_log))}

    def __repr__(self) -> str:
        return "Uniformity()"


class WeightedSum(Divergence):
    """``sum_k w_k D_k``; term names are kept (``kl``, ``robust``, ...) and weighted.

    Weights are finite real numbers (float32-representable)."""

    def __init__(self, parts: list[tuple[float, Divergence]]) -> None:
        flat: list[tuple[float, Divergence]] = []
        for w, d in parts:
            w = check_real("weight", w, expected="a finite real number (the weight of a divergence)")
            if not isinstance(d, Divergence):
                raise ValueError(f"divergence={d!r}; expected a Divergence (KL, Robust, Uniformity or a weighted sum)")
            flat += [(w * w2, d2) for w2, d2 in d.parts()]
        self._parts = flat

    def parts(self) -> list[tuple[float, Divergence]]:
        return list(self._parts)

    def terms(self, plan, target):
        out: dict[str, Term] = {}
        for w, d in self._parts:
            for name, t in d.terms(plan, target).items():
                out[name] = out[name] + t * w if name in out else t * w
        return out

    def __mul__(self, weight: float) -> "WeightedSum":
        return WeightedSum([(weight, self)])

    __rmul__ = __mul__

    def __add__(self, other: Divergence) -> "WeightedSum":
        if not isinstance(other, Divergence):
            raise ValueError(f"{other!r}; expected a Divergence to add")
        return WeightedSum(self._parts + other.parts())

    def __repr__(self) -> str:
        return " + ".join(f"{w:g} * {d!r}" for w, d in self._parts)
