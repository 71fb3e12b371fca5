"""Contrastive losses by name, as factories for the pipeline (what ``otalign train --loss`` uses).

=======================  ========================================================================
name                     loss (``otalign.contrastive``)
=======================  ========================================================================
``infonce``              ``InfoNCE(epsilon)``
``rince``                ``RINCE(epsilon, q, lam, lam_scale)``
``gca-infonce``          ``GCAInfoNCE(epsilon, n_iter, readout)``
``gca-rince``            ``GCARINCE(epsilon, n_iter, q, lam, robust, lam_scale)``
``gca-uot``              ``GCAUOT(epsilon, n_iter, rho, lam, q, r1, r2, robust, lam_scale, readout)``
``gca-uot-scaling``      ``gca-uot`` with ``robust="scaling"`` (whatever ``robust`` says)
``gca-uot-partition``    ``gca-uot`` with ``robust="partition"``
``iot``                  ``IOT(epsilon, n_iter, readout)``
``iot-uni``              ``IOTUni(epsilon, n_iter, lambda_p, readout)``
=======================  ========================================================================

Any loss of the contrastive layer can be used from Python directly: the pipeline takes factories.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

from torch import nn

from .. import contrastive as cl

__all__ = ["LOSS_NAMES", "LOSS_PARAMETERS", "LossParams", "NamedLossFactory", "loss_factory", "domain_loss_factory"]

LOSS_NAMES = ("infonce", "rince", "gca-infonce", "gca-rince", "gca-uot", "gca-uot-scaling", "gca-uot-partition",
              "iot", "iot-uni")
_UOT = ("epsilon", "n_iter", "rho", "lam", "q", "r1", "r2", "lam_scale", "readout")
#: The fields of :class:`LossParams` each named loss uses.
LOSS_PARAMETERS = {
    "infonce": ("epsilon",),
    "rince": ("epsilon", "q", "lam", "lam_scale"),
    "gca-infonce": ("epsilon", "n_iter", "readout"),
    "gca-rince": ("epsilon", "n_iter", "q", "lam", "robust", "lam_scale"),
    "gca-uot": _UOT + ("robust",),
    "gca-uot-scaling": _UOT,
    "gca-uot-partition": _UOT,
    "iot": ("epsilon", "n_iter", "readout"),
    "iot-uni": ("epsilon", "n_iter", "lambda_p", "readout"),
}


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters of the named losses (each loss reads the ones it has).

    Defaults follow the GCA authors' code: epsilon 0.5, 10 iterations, q 0.6, lam 0.01, rho 0.2,
    r1 = r2 = 1, IOT-uni's lambda_p 0.2; ``robust`` is :data:`otalign.contrastive.DEFAULT_ROBUST`,
    ``lam`` on otalign's scale, ``readout`` the row-renormalised plan.
    """

    epsilon: float = 0.5
    n_iter: int = 10
    q: float = 0.6
    lam: float = 0.01
    rho: float = 0.2
    r1: float = 1.0
    r2: float = 1.0
    robust: str = cl.DEFAULT_ROBUST
    lam_scale: str = "otalign"
    readout: str = "renormalised"
    lambda_p: float = 0.2

    def replace(self, **changes: Any) -> "LossParams":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(name: str, p: LossParams, target: Optional[cl.Target]) -> nn.Module:
    kw: dict[str, Any] = {} if target is None else {"target": target}
    if name == "infonce":
        return cl.InfoNCE(p.epsilon, **kw)
    if name == "rince":
        return cl.RINCE(p.epsilon, q=p.q, lam=p.lam, lam_scale=p.lam_scale, **kw)
    if name == "gca-infonce":
        return cl.GCAInfoNCE(p.epsilon, p.n_iter, readout=p.readout, **kw)
    if name == "gca-rince":
        return cl.GCARINCE(p.epsilon, p.n_iter, q=p.q, lam=p.lam, robust=p.robust, lam_scale=p.lam_scale, **kw)
    if name == "iot":
        return cl.IOT(p.epsilon, p.n_iter, readout=p.readout, **kw)
    if name == "iot-uni":
        return cl.IOTUni(p.epsilon, p.n_iter, lambda_p=p.lambda_p, readout=p.readout, **kw)
    robust = {"gca-uot-scaling": "scaling", "gca-uot-partition": "partition"}.get(name, p.robust)
    return cl.GCAUOT(p.epsilon, p.n_iter, rho=p.rho, lam=p.lam, q=p.q, r1=p.r1, r2=p.r2, robust=robust,
                     lam_scale=p.lam_scale, readout=p.readout, **kw)


def _json_number(value: float) -> Any:
    """A hyper-parameter as a strict-JSON value (``rho = inf`` is the string ``"inf"``)."""
    return value if not isinstance(value, float) or math.isfinite(value) else str(value)


@dataclass(frozen=True)
class NamedLossFactory:
    """A zero-argument callable building a fresh named loss; :meth:`describe` says which one
    (recorded in each run's record, and compared when runs are resumed)."""

    name: str
    params: LossParams
    target: Optional[tuple[float, float]] = None  # (alpha, beta) of a DomainTarget

    def __call__(self) -> nn.Module:
        target = None if self.target is None else cl.DomainTarget(*self.target)
        return _build(self.name, self.params, target)

    def describe(self) -> dict[str, Any]:
        """``{"loss": name, <the hyper-parameters it uses>...}``, plus ``"target"`` for a
        domain-aware loss; JSON values only."""
        out: dict[str, Any] = {"loss": self.name}
        out.update({k: _json_number(getattr(self.params, k)) for k in LOSS_PARAMETERS[self.name]})
        if self.target is not None:
            out["target"] = {"type": "DomainTarget", "alpha": self.target[0], "beta": self.target[1]}
        return out


def loss_factory(name: str, params: Optional[LossParams] = None) -> NamedLossFactory:
    """A zero-argument callable building a fresh loss ``name`` (validated now, not at run time)."""
    if name not in LOSS_NAMES:
        raise ValueError(f"loss={name!r}; expected one of {', '.join(LOSS_NAMES)}")
    factory = NamedLossFactory(name, params or LossParams())
    factory()  # raise on bad hyper-parameters before any training starts
    return factory


def domain_loss_factory(name: str, alpha: float, beta: float, params: Optional[LossParams] = None) -> NamedLossFactory:
    """Loss ``name`` with the domain-aware target ``DomainTarget(alpha, beta)``."""
    if name not in LOSS_NAMES:
        raise ValueError(f"loss={name!r}; expected one of {', '.join(LOSS_NAMES)}")
    factory = NamedLossFactory(name, params or LossParams(), (alpha, beta))
    factory()
    return factory
