"""Entropic barycentres of histograms on a fixed support (``ota.barycenter``).

>>> res = ota.barycenter(histograms, cost, epsilon=0.01)      # histograms (K, n), cost (n, m)
>>> res.barycenter, res.plans, res.converged, res.n_iters
"""

from .fixed_support import BarycenterResult, barycenter

__all__ = ["barycenter", "BarycenterResult"]
