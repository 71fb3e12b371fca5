"""The otalign configurations that ``otalign bench`` runs: THE one place to declare them.

``OTALIGN_CONFIGS`` maps a configuration name to the extra keyword arguments passed to
:func:`otalign.solve` (on top of ``epsilon``, ``tol``, ``max_iter``, ``entropy`` and
``grad="none"``, which the benchmark sets). Adding a solver option to the benchmark is one line::

    OTALIGN_CONFIGS = {
        "default": {},
        "adaptive": {"overrelax": "adaptive"},   # any keyword arguments ota.solve accepts
        "anneal": {"anneal": 0.5},
    }

Every configuration is run on every dense-cost problem, appears in the JSON and the plots under
``otalign:<name>``, and the table reports the best otalign configuration per measure (naming it).
Select some on the command line with ``--libraries otalign:default,otalign:anneal``.

``OTALIGN_POINTCLOUD_CONFIGS`` are the configurations of the point-cloud problems (issue 11):
name -> ``{"backend": <otalign.geometry.PointCloud backend>, "solve": {extra ota.solve kwargs}}``.
They run only where ``otalign.geometry`` exists (otherwise they are skipped with the notice
"needs otalign.geometry").
"""

from __future__ import annotations

from typing import Any

__all__ = ["OTALIGN_CONFIGS", "OTALIGN_POINTCLOUD_CONFIGS"]

OTALIGN_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},  # the library's defaults (adaptive over-relaxation since issue 12)
    "plain": {"overrelax": None},  # plain sweeps (the default before issue 12)
    "log": {"method": "log"},  # log domain only
    "anneal": {"anneal": 0.5},  # epsilon scaling (with the default adaptive over-relaxation)
    "anneal-plain": {"anneal": 0.5, "overrelax": None},
}

OTALIGN_POINTCLOUD_CONFIGS: dict[str, dict[str, Any]] = {
    "online": {"backend": "online", "solve": {}},
    "keops": {"backend": "keops", "solve": {}},
}
