"""The otalign configurations that ``otalign bench`` runs: THE one place to declare them.

Each entry maps a configuration name to the extra keyword arguments passed to
:func:`otalign.solve` (on top of ``epsilon``, ``tol``, ``max_iter``, ``entropy`` and
``grad="none"``, which the benchmark sets). Adding a solver option to the benchmark is one line::

    OTALIGN_CONFIGS = {
        "default": {},
        "adaptive": {"overrelax": "adaptive"},   # any keyword arguments ota.solve accepts
        "anneal": {"anneal": 0.5},
    }

Every configuration is run on every problem, appears in the JSON and the plots under
``otalign:<name>``, and the table reports the best otalign configuration per measure (naming it).
Select some on the command line with ``--libraries otalign:default,otalign:anneal``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OTALIGN_CONFIGS"]

OTALIGN_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},  # log domain, switching to the stabilised kernel domain when it is safe
    "log": {"method": "log"},  # log domain only
    "overrelax": {"overrelax": "adaptive"},
    "anneal": {"anneal": 0.5},
    "anneal+overrelax": {"anneal": 0.5, "overrelax": "adaptive"},
}
