"""otalign: entropic optimal transport with pluggable, declarative constraints, in PyTorch.

>>> import otalign as ota
>>> from otalign import constraints as C
>>> res = ota.solve(cost, C.balanced(a, b), epsilon=0.05)
>>> res.plan, res.f, res.g, res.value, res.converged
"""

from . import constraints, costs, da, geometry
from .barycenters import BarycenterResult, PointsBarycenter, barycenter, barycenter_points
from .samples import SinkhornDivergence, sinkhorn_divergence
from .solvers import OTResult, partial, sinkhorn, solve, unbalanced
from .warnings import NonConvergenceWarning

__version__ = "0.1.0"

__all__ = [
    "constraints",
    "costs",
    "geometry",
    "da",
    "solve",
    "sinkhorn",
    "unbalanced",
    "partial",
    "OTResult",
    "barycenter",
    "BarycenterResult",
    "barycenter_points",
    "PointsBarycenter",
    "sinkhorn_divergence",
    "SinkhornDivergence",
    "NonConvergenceWarning",
    "__version__",
]
