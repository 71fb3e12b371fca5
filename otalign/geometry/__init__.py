"""Geometries: how costs are held and reduced (``from otalign import geometry as G``).

>>> geom = G.PointCloud(x, y, cost="sqeuclidean", backend="online")   # no n x m matrix
>>> res = ota.solve(geom, C.unbalanced(0.5), epsilon=0.01)          # a tensor means G.Dense(cost)

``docs/geometry.md``: the backends, their memory, when each wins, how to add a geometry.
"""

from .base import DENSE_FRACTION, Geometry, PairTerms, available_memory, memory_budget
from .dense import Dense
from .pointcloud import BACKENDS, COSTS, PointCloud

__all__ = [
    "Geometry",
    "Dense",
    "PointCloud",
    "PairTerms",
    "COSTS",
    "BACKENDS",
    "memory_budget",
    "available_memory",
    "DENSE_FRACTION",
    "as_geometry",
]


def as_geometry(value) -> Geometry:
    """A geometry as given, or :class:`Dense` around a tensor cost."""
    return value if isinstance(value, Geometry) else Dense(value)
