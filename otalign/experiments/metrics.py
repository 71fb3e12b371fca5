"""Representation metrics on given features (no model involved).

* :func:`linear_probe_accuracy`: logistic regression on standardised features (scikit-learn).
* :func:`knn_accuracy`: majority vote of the ``k`` nearest training features by cosine distance.
* :func:`alignment` and :func:`uniformity` of L2-normalised embeddings (Wang & Isola, 2020):
  ``alignment = E ||f(x) - f(y)||^alpha`` over positive pairs and
  ``uniformity = log E exp(-t ||f(x) - f(y)||^2)`` over all pairs of distinct samples.

Features are ``(N, D)`` tensors or arrays; labels are ``(N,)`` integers.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["linear_probe_accuracy", "knn_accuracy", "alignment", "uniformity"]

Array = Union[torch.Tensor, np.ndarray]


def _numpy(name: str, x: Array, ndim: int) -> np.ndarray:
    out = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if out.ndim != ndim or out.shape[0] == 0:
        raise ValueError(
            f"{name} has shape {out.shape}; expected {'(N, D)' if ndim == 2 else '(N,)'} with N >= 1"
        )
    return out


def _split(train_features: Array, train_labels: Array, test_features: Array, test_labels: Array):
    f_tr, f_te = _numpy("train_features", train_features, 2), _numpy("test_features", test_features, 2)
    y_tr, y_te = _numpy("train_labels", train_labels, 1), _numpy("test_labels", test_labels, 1)
    if len(y_tr) != len(f_tr) or len(y_te) != len(f_te):
        raise ValueError(
            f"labels have lengths ({len(y_tr)}, {len(y_te)}); "
            f"expected one per feature row ({len(f_tr)}, {len(f_te)})"
        )
    if f_tr.shape[1] != f_te.shape[1]:
        raise ValueError(
            f"test_features has {f_te.shape[1]} columns; expected {f_tr.shape[1]} like train_features"
        )
    return f_tr, y_tr, f_te, y_te


def linear_probe_accuracy(
    train_features: Array,
    train_labels: Array,
    test_features: Array,
    test_labels: Array,
    *,
    C: float = 1.0,
    max_iter: int = 2000,
) -> float:
    """Test accuracy of a logistic regression fitted on standardised training features.

    ``StandardScaler`` (fitted on the training features) then multinomial ``LogisticRegression``
    with inverse regularisation ``C`` (L-BFGS, deterministic). Features ``(N, D)`` / ``(M, D)``,
    labels ``(N,)`` / ``(M,)``; the training labels need at least 2 classes.
    """
    f_tr, y_tr, f_te, y_te = _split(train_features, train_labels, test_features, test_labels)
    if len(np.unique(y_tr)) < 2:
        raise ValueError(f"train_labels has {len(np.unique(y_tr))} class; expected at least 2 classes")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(f_tr, y_tr)
    return float((probe.predict(f_te) == y_te).mean())


def knn_accuracy(
    train_features: Array, train_labels: Array, test_features: Array, test_labels: Array, *, k: int = 5
) -> float:
    """Test accuracy of a ``k``-nearest-neighbour vote under cosine distance (uniform weights).

    Ties between classes go to the smallest label (scikit-learn's rule). Features ``(N, D)`` /
    ``(M, D)``, labels ``(N,)`` / ``(M,)``; ``1 <= k <= N``.
    """
    f_tr, y_tr, f_te, y_te = _split(train_features, train_labels, test_features, test_labels)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(f_tr):
        raise ValueError(
            f"k={k!r}; expected an integer in [1, {len(f_tr)}] (the number of training features)"
        )
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    knn.fit(f_tr, y_tr)
    return float((knn.predict(f_te) == y_te).mean())


def alignment(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float = 2.0) -> float:
    """``mean_i ||u_i - v_i||^alpha`` with ``u, v`` the L2-normalised rows of ``z_a, z_b`` ``(N, D)``.

    Row ``i`` of both is a positive pair. Range ``[0, 2^alpha]``; lower is better aligned.
    """
    if z_a.dim() != 2 or z_a.shape != z_b.shape or z_a.shape[0] == 0:
        raise ValueError(
            f"z_a, z_b have shapes {tuple(z_a.shape)}, {tuple(z_b.shape)}; expected equal (N, D) with N >= 1"
        )
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha!r}; expected a finite number > 0")
    u, v = F.normalize(z_a.detach().double(), dim=1), F.normalize(z_b.detach().double(), dim=1)
    return float((u - v).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """``log mean_{i<j} exp(-t ||u_i - u_j||^2)`` with ``u`` the L2-normalised rows of ``z`` ``(N, D)``.

    Over all ``N (N - 1) / 2`` pairs of distinct rows; ``N >= 2``. Range ``[-4 t, 0]``; lower is
    more uniform on the sphere.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"z has shape {tuple(z.shape)}; expected (N, D) with N >= 2")
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"t={t!r}; expected a finite number > 0")
    u = F.normalize(z.detach().double(), dim=1)
    sq = torch.pdist(u).pow(2)  # (N (N - 1) / 2,)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))
