"""The point-cloud front door: Sinkhorn divergences (``ota.sinkhorn_divergence``,
``ota.SinkhornDivergence``) and the input helpers for NumPy and ragged batches.

>>> S = ota.sinkhorn_divergence(x, y, epsilon=0.01)          # x (n, d), y (m, d): 0-dim
>>> S = ota.sinkhorn_divergence([x1, x2], [y1, y2], epsilon=0.01)   # ragged: (2,)
"""

from ._inputs import as_clouds, pad_weights
from .divergence import SinkhornDivergence, sinkhorn_divergence

__all__ = ["sinkhorn_divergence", "SinkhornDivergence", "as_clouds", "pad_weights"]
