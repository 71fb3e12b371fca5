"""Entropic barycentres of histograms on a fixed support (``ota.barycenter``).

>>> res = ota.barycenter(histograms, cost, epsilon=0.01)      # histograms (K, n), cost (n, m)
>>> res.barycenter, res.plans, res.converged, res.n_iters
>>> bary = ota.barycenter_points(clouds, n_points=100, epsilon=0.01)   # free support
"""

from .fixed_support import BarycenterResult, barycenter
from .free_support import PointsBarycenter, barycenter_points

__all__ = ["barycenter", "BarycenterResult", "barycenter_points", "PointsBarycenter"]
