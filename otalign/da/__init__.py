"""Domain adaptation by optimal transport (``ota.da.Transport``).

>>> da = ota.da.Transport(epsilon=0.05).fit(xs, xt, ys, target_proportions="estimate")
>>> xs_in_target = da.transform()          # the source points, moved by the barycentric map
>>> x_moved = da.transform(x_new)          # out of sample: the entropic map from the potentials
>>> labels = da.predict()                  # target labels propagated through the plan

Label shift (the class proportions differ between the domains) is handled at ``fit`` by giving
the target class proportions (prescribed, or estimated with :func:`estimate_proportions`), in
one of two ways (``docs/maps.md``):

* ``proportions="block"`` (default): a :class:`~otalign.constraints.BlockMass` sends exactly
  ``pi_k`` of mass out of the source points of class ``k``, the target marginal is hard, and the
  source marginal is KL-relaxed (``row_rho``) towards the reweighted source weights
  ``pi_{y_i} / n_{y_i}``. The relaxed row marginal matters: a block mass alone leaves the mass of
  each source point free, and the entropic plan then sends a class's whole mass from its few
  points nearest to the target (the free-row pitfall).
* ``proportions="reweight"``: balanced OT with source weights ``pi_{y_i} / n_{y_i}`` (every
  source point of a class sends the same mass; ``row_rho -> inf`` of the above).

With relaxed rows some source points send (almost) no mass, typically those in a part of a class
that the target lacks. Their barycentric image ``(P xt)_i / (P 1)_i`` is then an average over a
vanishing row: defined, but not supported by any transported mass, and a classifier trained on the
moved points learns from it as much as from a well-supported point. ``row_mass_`` holds the mass
each source point sends and ``supported(min_share)`` the source points that send at least
``min_share`` of their reference weight: train on ``transform()[mask]`` with ``ys[mask]``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch

from .. import constraints as C
from ..geometry import PointCloud
from ..samples._inputs import check_epsilon
from ..solvers.api import solve
from ..solvers.result import OTResult

__all__ = ["Transport", "estimate_proportions", "PROPORTIONS"]

PROPORTIONS = ("block", "reweight")


def _points(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
        shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
        raise ValueError(f"{name} has shape {shape}; expected a floating-point (n, d) tensor or NumPy array")
    return value


def _labels(ys: Any, n: int) -> tuple[torch.Tensor, int]:
    t = torch.as_tensor(np.asarray(ys) if not isinstance(ys, torch.Tensor) else ys)
    if t.dim() != 1 or t.shape[0] != n or t.is_floating_point() or bool((t < 0).any()):
        raise ValueError(f"ys has shape {tuple(t.shape)} and dtype {t.dtype}; expected ({n},) integer labels >= 0")
    t = t.long()
    return t, int(t.max()) + 1


def _class_weights(ys: torch.Tensor, props: torch.Tensor) -> torch.Tensor:
    """``a_i = pi_{y_i} / n_{y_i}`` (weights with class masses ``pi``)."""
    counts = torch.bincount(ys, minlength=props.shape[0]).to(props.dtype)
    return props[ys] / counts[ys]


def _source_weights(cons: Any, n: int) -> torch.Tensor:
    """The source weights of a constraint set: those of its first row ``Marginal``, else uniform."""
    for c in (cons if isinstance(cons, (list, tuple, C.ConstraintSet)) else [cons]):
        if isinstance(c, C.Marginal) and c.axis == 0 and c.weights is not None:
            w = torch.as_tensor(c.weights).detach()
            if w.dim() == 1 and w.shape[0] == n:
                return w
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def estimate_proportions(xs: Any, ys: Any, xt: Any, *, epsilon: float, rho: float = 0.1, cost: str = "sqeuclidean",
                         max_iter: int = 5000) -> torch.Tensor:
    """Target class proportions ``(K,)`` estimated by semi-relaxed OT: the target marginal is hard,
    the source marginal KL-relaxed with a small ``rho`` (each source point may send more or less
    than its share), and ``pi_k`` is the mass the plan takes from the source points of class ``k``.
    """
    xs, xt = _points(xs, "xs"), _points(xt, "xt")
    y, K = _labels(ys, xs.shape[0])
    cons = [C.Marginal(axis=0, weights=torch.full((xs.shape[0],), 1.0 / xs.shape[0], dtype=xs.dtype),
                       penalty=C.KL(rho=rho)), C.Marginal(axis=1)]
    geom = PointCloud(xs, xt, cost=cost)
    res = solve(geom.dense()[0].detach() if geom.is_dense else geom, cons, epsilon=epsilon, max_iter=max_iter, grad="none", tol=1e-6,
                warn=False)
    rows = res.marginals[0]
    props = torch.zeros(K, dtype=rows.dtype).index_add_(0, y, rows)
    return props / props.sum()


class Transport:
    """Fit a transport plan from source points ``xs`` to target points ``xt`` and move points with it.

    Args:
        epsilon: entropic strength (> 0), cost units.
        constraints: the constraints of the fit when no label proportions are given (default
            :func:`otalign.constraints.balanced`: uniform weights on both sides).
        cost, backend: as :class:`~otalign.geometry.PointCloud`.
        tol, max_iter: of :func:`otalign.solve`.

    After ``fit``: ``result_`` (the :class:`~otalign.OTResult`), ``plan_`` ``(n, m)``,
    ``proportions_`` (the target class proportions used, or None), ``xs_``, ``xt_``, ``ys_``,
    ``reference_weights_`` ``(n,)`` (the source weights the row marginal is held or relaxed to:
    ``pi_{y_i} / n_{y_i}`` with label proportions, the source marginal of ``constraints``, uniform
    by default), ``row_mass_`` ``(n,)`` (the mass ``P 1`` each source point sends; NumPy when
    ``xt`` was NumPy).
    """

    def __init__(self, epsilon: float, constraints: Any = None, *, cost: str = "sqeuclidean", backend: str = "auto",
                 tol: float = 1e-6, max_iter: int = 5000) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.constraints, self.cost, self.backend, self.tol, self.max_iter = constraints, cost, backend, tol, max_iter
        self.result_: Optional[OTResult] = None
        self.proportions_: Optional[torch.Tensor] = None

    def fit(self, xs: Any, xt: Any, ys: Any = None, *, target_proportions: Union[None, str, Any] = None,
            proportions: str = "block", row_rho: float = 1.0, estimate_rho: float = 0.1) -> "Transport":
        """Solve the transport from ``xs`` ``(n, d)`` to ``xt`` ``(m, d)``.

        ``target_proportions``: None (use ``constraints``), a ``(K,)`` vector of target class
        proportions, or ``"estimate"`` (:func:`estimate_proportions` with ``rho=estimate_rho``);
        needs the source labels ``ys`` ``(n,)`` in ``0..K-1``. ``proportions``: ``"block"`` or
        ``"reweight"`` (module docstring); ``row_rho``: the KL strength of the relaxed source
        marginal of ``"block"``.
        """
        self._numpy = isinstance(xt, np.ndarray)  # before the conversion: NumPy in, NumPy out
        xs, xt = _points(xs, "xs"), _points(xt, "xt")
        if xs.shape[1] != xt.shape[1]:
            raise ValueError(f"xs has dimension d={xs.shape[1]} but xt has d={xt.shape[1]}; expected equal dimensions")
        self.xs_, self.xt_ = xs, xt
        self.ys_ = None if ys is None else _labels(ys, xs.shape[0])[0]
        geom = PointCloud(xs, xt, cost=self.cost, backend=self.backend)
        if geom.is_dense:  # block reductions of a dense cost are one masked pass (tile streams are per block)
            geom = geom.dense()[0].detach()
        if target_proportions is None:
            cons = self.constraints if self.constraints is not None else C.balanced()
            self.proportions_ = None
            a = _source_weights(cons, xs.shape[0])
        else:
            if self.ys_ is None:
                raise ValueError("target_proportions is given without ys; expected the source labels ys (n,)")
            if proportions not in PROPORTIONS:
                raise ValueError(f"proportions={proportions!r}; expected one of {PROPORTIONS}")
            for name, value in (("row_rho", row_rho), ("estimate_rho", estimate_rho)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"{name}={value!r}; expected a number > 0 (float('inf'): a hard marginal)")
            K = int(self.ys_.max()) + 1
            if isinstance(target_proportions, str):
                if target_proportions != "estimate":
                    raise ValueError(f"target_proportions={target_proportions!r}; expected None, 'estimate' or a (K,) vector")
                props = estimate_proportions(xs, self.ys_, xt, epsilon=self.epsilon, rho=estimate_rho, cost=self.cost)
            else:
                props = torch.as_tensor(np.asarray(target_proportions, dtype=np.float64)
                                        if not isinstance(target_proportions, torch.Tensor) else target_proportions)
                if props.shape != (K,) or not bool(torch.isfinite(props).all()) or bool((props < 0).any()) \
                        or float(props.sum()) <= 0:
                    raise ValueError(f"target_proportions has shape {tuple(props.shape)}; expected ({K},) "
                                     "non-negative finite proportions with a positive sum (one per source class)")
            props = (props / props.sum()).to(xs.dtype if xs.dtype == torch.float64 else torch.float32)
            self.proportions_ = props
            a = _class_weights(self.ys_, props)
            if proportions == "reweight":
                cons = C.balanced(a, None)
            else:
                cons = [C.Marginal(axis=0, weights=a, penalty=C.KL(rho=row_rho)), C.Marginal(axis=1),
                        C.BlockMass(row_groups=self.ys_, col_groups=torch.zeros(xt.shape[0], dtype=torch.long),
                                    mass=props[:, None])]
        self.result_ = solve(geom, cons, epsilon=self.epsilon, tol=self.tol, max_iter=self.max_iter, grad="none")
        self.reference_weights_ = a
        return self

    def _check(self) -> OTResult:
        if self.result_ is None:
            raise ValueError("this Transport is not fitted; expected fit(xs, xt, ...) first")
        return self.result_

    @property
    def plan_(self):
        return self._check().plan

    @property
    def row_mass_(self):
        """``(n,)`` the mass ``(P 1)_i`` that each source point sends (NumPy when ``xt`` was NumPy)."""
        rows = torch.as_tensor(self._check().marginals[0])
        return rows.numpy() if self._numpy else rows

    def supported(self, min_share: float = 0.1):
        """``(n,)`` boolean mask of the source points that send at least ``min_share`` times their
        reference weight: ``(P 1)_i >= min_share * reference_weights_[i]``.

        The barycentric image of a point that sends (almost) nothing is not backed by transported
        mass; dropping such points from a classifier's training set keeps it to the moved points
        the plan stands behind. With hard row marginals (balanced OT, ``proportions="reweight"``)
        every point is kept for any ``min_share <= 1`` (up to the solver's tolerance).
        ``min_share=0`` keeps every point.
        """
        if isinstance(min_share, bool) or not isinstance(min_share, (int, float)) or not 0 <= min_share <= 1:
            raise ValueError(f"min_share={min_share!r}; expected a number in [0, 1]")
        self._check()
        rows = torch.as_tensor(self.row_mass_)
        ref = self.reference_weights_.to(rows.dtype)
        keep = rows >= min_share * ref
        return keep.numpy() if self._numpy else keep

    def transform(self, x: Any = None, *, batch_size: int = 4096):
        """Move points into the target domain.

        ``x=None``: the fitted source points by the barycentric map ``(P xt) / (P 1)``; ``x``
        ``(k, d)``: out of sample by the entropic map
        ``T(x) = sum_j softmax_j(log b_j + (g_j - C(x, xt_j)) / eps) xt_j`` (``b``: the target
        reference weights, ``g``: the target potential; equal to the barycentric map on the
        fitted source points when no constraint couples rows and columns beyond the marginals
        and class-wide block masses)."""
        res = self._check()
        if x is None:
            moved = torch.as_tensor(res.barycentric_map(self.xt_))
            return moved.numpy() if self._numpy else moved
        numpy = isinstance(x, np.ndarray)
        x = _points(x, "x")
        if x.shape[1] != self.xt_.shape[1]:
            raise ValueError(f"x has dimension d={x.shape[1]}; expected d={self.xt_.shape[1]} as the fitted points")
        st = res._state
        xt = self.xt_.to(st.log_rb.dtype)
        logw = st.log_rb[0] + st.G[0] / self.epsilon
        out = []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size].to(xt.dtype)
            cost = PointCloud(chunk, xt, cost=self.cost, backend="tensorized").dense()[0]
            w = torch.softmax(logw[None, :] - cost / self.epsilon, dim=-1)
            out.append(w @ xt)
        result = torch.cat(out).to(x.dtype)
        return result.numpy() if numpy else result

    def predict(self):
        """Target labels ``(m,)`` propagated through the plan: ``argmax_k sum_{i: y_i = k} P_ij``."""
        res = self._check()
        if self.ys_ is None:
            raise ValueError("predict needs the source labels; expected fit(xs, xt, ys)")
        K = int(self.ys_.max()) + 1
        onehot = torch.nn.functional.one_hot(self.ys_, K).to(self.xt_.dtype if self.xt_.dtype == torch.float64
                                                             else torch.float32)
        scores = res.apply(onehot, transpose=True)
        labels = torch.as_tensor(scores).argmax(-1)
        return labels.numpy() if self._numpy else labels
