"""``nn.Module`` losses: :class:`GCALoss` and its presets (thin configurations of it).

=============  ==============  ===============================  ===================================
preset         target          constraints (plan)               divergence
=============  ==============  ===============================  ===================================
InfoNCE        PairedViews     none (n_iter = 0: one row step)  KL
RINCE          PairedViews     none (n_iter = 0)                Robust(q, lam)
GCAInfoNCE     PairedViews     unit marginals, n_iter sweeps    KL
GCARINCE       PairedViews     unit marginals, n_iter sweeps    Robust(q, lam)
GCAUOT         PairedViews     KL(rho)-relaxed unit marginals   r1 KL + r2 Robust(q, lam)
IOT            PairedViews     unit marginals, n_iter sweeps    KL (+ lambda_p Uniformity: IOTUni)
=============  ==============  ===============================  ===================================

Every module is called as ``loss(z_a, z_b)`` with two views ``(B, D)`` (plus ``domains=`` or
``labels=`` for the targets that need them) and returns a 0-dim tensor; nothing about the batch
size or the world size is fixed at construction. Every hyper-parameter is validated at
construction (``ValueError`` naming it, its value and what was expected; NumPy scalars accepted).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from ._checks import F32_TINY, check_bool, check_choice, check_int, check_real
from .costs import CostSpec, check_cost
from .distributed import gather, gather_no_grad, world_size
from .divergences import KL, READOUTS, Divergence, Robust, Uniformity
from .functional import LAYOUTS, ConstraintSpec, LossComponents, contrastive_loss, unit_marginals
from .sharded import check_shardable, sharded_contrastive_loss
from .targets import PairedViews, Target

__all__ = ["GCALoss", "InfoNCE", "RINCE", "GCAInfoNCE", "GCARINCE", "GCAUOT", "IOT", "IOTUni", "DEFAULT_ROBUST"]

#: Default form of the robust term of GCARINCE and GCAUOT (chosen by the measurements in
#: docs/experiments.md, "The robust term's form").
DEFAULT_ROBUST = "partition"


def _check_views(z_a: Any, z_b: Any) -> None:
    for name, z in (("z_a", z_a), ("z_b", z_b)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.is_floating_point():
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name} is {shape}; expected a float tensor of shape (B, D)")
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a has shape {tuple(z_a.shape)} but z_b has {tuple(z_b.shape)}; expected equal shapes (B, D)")
    if z_a.shape[0] < 1:
        raise ValueError("the batch is empty; expected B >= 1")


class GCALoss(nn.Module):
    """Generalised contrastive alignment: ``mean_i D(T_i || plan_i)``.

    Args:
        constraints: the constraint set of the plan: a :class:`~otalign.constraints.ConstraintSet`
            (used as is) or a factory ``f(n, *, device, dtype, domains, labels)`` returning one (for
            sizes known at call time). Default: unit marginals (:func:`unit_marginals`).
        target: a :class:`~otalign.contrastive.targets.Target` (default :class:`PairedViews`).
        divergence: a :class:`~otalign.contrastive.divergences.Divergence` (default :class:`KL`).
        epsilon: entropic strength of the plan = the temperature of the logits (> 0).
        n_iter: sweeps of the solver (0: InfoNCE's single row normalisation).
        layout: ``"joint"`` (``2B x 2B`` plan, self-pairs forbidden) or ``"cross"`` (``B x B``).
        readout: the plan the KL (and uniformity) terms read: ``"renormalised"`` (default, the
            row-renormalised plan, ``KL(I || P^(2T+1))`` for balanced marginals) or ``"raw"``
            (``P^(2T) = diag(u) K diag(v)``, after the last column step: the GCA authors' ImageNet
            read-out). With ``n_iter = 0`` both are InfoNCE's row projection.
        cost: ``"cosine"`` (default, ``-cos``), ``"cosine_distance"`` (``1 - cos``, the GCA
            authors'), ``"sqeuclidean"``, or a callable ``cost(z_a, z_b)`` returning ``(B, B)`` or
            the joint ``(2B, 2B)`` (see :mod:`otalign.contrastive.costs`).
        gather_distributed: under ``torch.distributed``, gather the views of all ranks
            (autograd-aware) and compute the loss of the global batch on every rank.
        shard_plan: with ``gather_distributed``, each rank solves only its own rows of the global
            plan (its views against the gathered batch, ``ota.solve(..., shard="rows")``): the
            same loss, and each rank's gradient w.r.t. its views is exactly its slice of the
            single-process gradient (no factor ``W``); memory and compute per rank fall as
            ``1/W``. Joint layout, paired views, unit marginals, per-anchor divergences only
            (:mod:`otalign.contrastive.sharded`, ``docs/distributed.md``).
        detach_scalings: treat the plan's scalings as constants in the backward pass (gradients
            flow only through the kernel); default False (unrolled through the iterations).
    """

    def __init__(
        self,
        constraints: ConstraintSpec = None,
        target: Optional[Target] = None,
        divergence: Optional[Divergence] = None,
        *,
        epsilon: float = 0.5,
        n_iter: int = 10,
        layout: str = "joint",
        readout: str = "renormalised",
        cost: CostSpec = "cosine",
        gather_distributed: bool = False,
        detach_scalings: bool = False,
        shard_plan: bool = False,
    ) -> None:
        super().__init__()
        epsilon = check_real("epsilon", epsilon, low=F32_TINY,
                             expected="a finite number > 0 (the temperature; at least 1.2e-38, a normal float32)")
        n_iter = check_int("n_iter", n_iter)
        layout = check_choice("layout", layout, LAYOUTS)
        readout = check_choice("readout", readout, READOUTS)
        cost = check_cost(cost)
        gather_distributed = check_bool("gather_distributed", gather_distributed)
        detach_scalings = check_bool("detach_scalings", detach_scalings)
        target = PairedViews() if target is None else target
        divergence = KL() if divergence is None else divergence
        if not isinstance(target, Target):
            raise ValueError(f"target={target!r}; expected a Target (PairedViews, DomainTarget, LabelTarget, CustomTarget)")
        if not isinstance(divergence, Divergence):
            raise ValueError(f"divergence={divergence!r}; expected a Divergence (KL, Robust, Uniformity or a weighted sum)")
        if not (constraints is None or callable(constraints) or isinstance(constraints, (list, tuple))
                or type(constraints).__module__.startswith("otalign.constraints")):
            raise ValueError(f"constraints={constraints!r}; expected None, a ConstraintSet (or constraints) or a "
                             "factory f(n, *, device, dtype, domains, labels)")
        constraints = unit_marginals() if constraints is None else constraints
        authors = [d for _, d in divergence.parts() if isinstance(d, Robust) and d.lam_scale == "authors"]
        if authors and not getattr(constraints, "unit_marginals", False):
            raise ValueError("lam_scale='authors' needs the unit-marginal constraints (the default, or "
                             f"cl.unit_marginals(rho)); got constraints={constraints!r}")
        if gather_distributed and not torch.distributed.is_available():
            raise ValueError("gather_distributed=True but torch.distributed is not available in this build")
        shard_plan = check_bool("shard_plan", shard_plan)
        if shard_plan:
            if not gather_distributed:
                raise ValueError("shard_plan=True needs gather_distributed=True (the plan's columns are the gathered batch)")
            check_shardable(constraints=constraints, target=target, divergence=divergence, layout=layout,
                            readout=readout, cost=cost)
        self.constraints = constraints
        self.target = target
        self.divergence = divergence
        self.epsilon = epsilon
        self.n_iter = n_iter
        self.layout = layout
        self.readout = readout
        self.cost = cost
        self.gather_distributed = gather_distributed
        self.detach_scalings = detach_scalings
        self.shard_plan = shard_plan

    def forward_components(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        domains: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        diagnostics: bool = True,
    ) -> LossComponents:
        """The loss with its terms, the plan's marginal error and entropy (for logging)."""
        _check_views(z_a, z_b)
        if self.shard_plan and world_size() > 1:
            return sharded_contrastive_loss(
                z_a, z_b, epsilon=self.epsilon, n_iter=self.n_iter, divergence=self.divergence,
                constraints=self.constraints, readout=self.readout, cost=self.cost,
                detach_scalings=self.detach_scalings, diagnostics=diagnostics,
            )
        if self.gather_distributed:
            z_a, z_b = gather(z_a), gather(z_b)
            domains, labels = gather_no_grad(domains), gather_no_grad(labels)
        return contrastive_loss(
            z_a, z_b, epsilon=self.epsilon, n_iter=self.n_iter, divergence=self.divergence, target=self.target,
            constraints=self.constraints, layout=self.layout, readout=self.readout, cost=self.cost,
            domains=domains, labels=labels, detach_scalings=self.detach_scalings, diagnostics=diagnostics,
        )

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        domains: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Two views ``(B, D)`` -> 0-dim loss."""
        return self.forward_components(z_a, z_b, domains=domains, labels=labels, diagnostics=False).loss

    def extra_repr(self) -> str:
        cost = self.cost if isinstance(self.cost, str) else getattr(self.cost, "__name__", repr(self.cost))
        return (f"epsilon={self.epsilon}, n_iter={self.n_iter}, target={self.target!r}, "
                f"divergence={self.divergence!r}, layout={self.layout!r}, readout={self.readout!r}, cost={cost!r}")


class InfoNCE(GCALoss):
    """SimCLR's NT-Xent: one row normalisation of the kernel toward the paired-views target.

    Equals NT-Xent at temperature = ``epsilon`` exactly.
    """

    def __init__(self, epsilon: float = 0.5, **kwargs: Any) -> None:
        super().__init__(divergence=KL(), epsilon=epsilon, n_iter=0, **kwargs)


class RINCE(GCALoss):
    """Robust InfoNCE (Chuang et al. 2022): ``-(K_it)^q / q + (lam sum_j K_ij)^q / q``.

    With a single row projection the ``"scaling"`` and ``"partition"`` forms coincide.
    ``lam_scale="authors"``: the GCA authors' scale (their ``hs_rince``: positive term ``/ N``).
    """

    def __init__(self, epsilon: float = 0.5, q: float = 0.6, lam: float = 0.01, *, lam_scale: str = "otalign",
                 **kwargs: Any) -> None:
        super().__init__(divergence=Robust(q, lam, form="scaling", lam_scale=lam_scale), epsilon=epsilon, n_iter=0,
                         **kwargs)


class GCAInfoNCE(GCALoss):
    """GCA-INCE: the InfoNCE term after ``n_iter`` balanced Sinkhorn sweeps (unit marginals)."""

    def __init__(self, epsilon: float = 0.5, n_iter: int = 10, **kwargs: Any) -> None:
        super().__init__(unit_marginals(), divergence=KL(), epsilon=epsilon, n_iter=n_iter, **kwargs)


class GCARINCE(GCALoss):
    """GCA-RINCE: the RINCE term after ``n_iter`` balanced Sinkhorn sweeps.

    ``robust``: ``"partition"`` (default, ``(lam sum_j K_ij v_j)^q / q``) or ``"scaling"``
    (``(lam / u_i)^q / q``, the poster's formula); ``lam_scale``: ``"otalign"`` or ``"authors"``
    (see :class:`~otalign.contrastive.divergences.Robust`).
    """

    def __init__(self, epsilon: float = 0.5, n_iter: int = 10, q: float = 0.6, lam: float = 0.01, *,
                 robust: str = DEFAULT_ROBUST, lam_scale: str = "otalign", **kwargs: Any) -> None:
        super().__init__(unit_marginals(), divergence=Robust(q, lam, form=robust, lam_scale=lam_scale),
                         epsilon=epsilon, n_iter=n_iter, **kwargs)


def _weight(name: str, value: Any, term: str) -> float:
    return check_real(name, value, low=0.0, expected=f"a finite number >= 0 (the weight of the {term} term)")


class GCAUOT(GCALoss):
    """GCA-UOT: ``r1 KL + r2 Robust(q, lam)`` after ``n_iter`` KL-relaxed sweeps (strength ``rho``,
    a number or a pair). ``rho -> inf`` gives ``r1 GCAInfoNCE + r2 GCARINCE``; ``rho -> 0`` gives
    ``r1 InfoNCE + r2 RINCE``.

    ``robust``: ``"partition"`` (default, ``(lam sum_j K_ij v_j)^q / q``) or ``"scaling"``
    (``(lam / u_i)^q / q`` with ``u = (1 / (K v))^(rho/(rho+eps))``, the GCA authors' code; with
    ``lam`` on otalign's scale it collapses the embeddings, see ``docs/experiments.md``);
    ``lam_scale``: ``"otalign"`` or ``"authors"`` (the robust term on the authors' scale:
    marginals ``1/N``, ``v`` started at ``1/N``). :meth:`from_authors_config` reads the
    authors' YAML.
    """

    def __init__(
        self,
        epsilon: float = 0.5,
        n_iter: int = 10,
        rho: Any = 0.2,
        lam: float = 0.01,
        q: float = 0.6,
        r1: float = 1.0,
        r2: float = 1.0,
        *,
        robust: str = DEFAULT_ROBUST,
        lam_scale: str = "otalign",
        **kwargs: Any,
    ) -> None:
        r1, r2 = _weight("r1", r1, "KL"), _weight("r2", r2, "robust")
        if rho is None:
            raise ValueError("rho=None; expected a number > 0 (math.inf: hard marginals) or a pair of them")
        divergence = KL() * r1 + Robust(q, lam, form=robust, lam_scale=lam_scale) * r2
        super().__init__(unit_marginals(rho), divergence=divergence, epsilon=epsilon, n_iter=n_iter, **kwargs)

    #: Keys of the GCA authors' configuration files (``config/simclr_*.yaml``) that do not
    #: configure the loss (training, data, logging); :meth:`from_authors_config` ignores them.
    AUTHORS_OTHER_KEYS = frozenset({
        "accelerator", "backbone", "batch_size", "dataparallel", "dataset", "dataset_dir", "epoch_num",
        "finetune_epochs", "gpus", "hydra", "image_size", "learning_rate", "len_train_loader", "load_epoch",
        "log_interval", "logistic_batch_size", "max_epochs", "momentum", "nodes", "nr", "optimizer", "pretrain",
        "pretrained_model_path", "projection_dim", "reload", "seed", "start_epoch", "strategy", "strong_DA", "task",
        "weight_decay", "workers",
    })

    @classmethod
    def from_authors_config(cls, config: Mapping[str, Any], **kwargs: Any) -> "GCAUOT":
        """The GCA-UOT loss that a configuration of the GCA authors' code describes.

        ``config`` holds the keys of their YAML files (``epsilon``, ``iterations``, ``lam``, ``q``,
        ``relax_item1``, ``relax_item2``, ``r1``, ``r2``; the class argument spellings
        ``relax_items1/2`` are accepted too; missing ones take their ``gca_uot`` class defaults:
        ``lam 0.01, q 0.6, relax 1e-4, r1 = r2 = 1``; the training keys are ignored). The loss is
        their CIFAR ``gca_uot`` (``r1 * cross-entropy + r2 * robust``, the headline method):
        ``cost="cosine_distance"``, ``robust="scaling"``, ``lam_scale="authors"``, with
        otalign's handling of self-pairs (forbidden, not given the largest cost) and unclamped
        cosines. ``kwargs`` go to the constructor (e.g. ``gather_distributed``).
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"config={config!r}; expected a mapping of the authors' configuration keys")
        aliases = {"relax_items1": "relax_item1", "relax_items2": "relax_item2"}
        loss_keys = {"epsilon", "iterations", "lam", "q", "relax_item1", "relax_item2", "r1", "r2"}
        cfg: dict[str, Any] = {}
        for key, value in config.items():
            key = aliases.get(key, key)
            if key in loss_keys:
                cfg[key] = value
            elif key not in cls.AUTHORS_OTHER_KEYS:
                raise ValueError(f"config has the key {key!r}; expected keys of the GCA authors' configuration "
                                 f"({', '.join(sorted(loss_keys))}, or their training keys)")
        if "epsilon" not in cfg:
            raise ValueError("config has no 'epsilon'; expected the temperature of the authors' configuration")
        return cls(
            epsilon=cfg["epsilon"], n_iter=cfg.get("iterations", 10),
            rho=(cfg.get("relax_item1", 1e-4), cfg.get("relax_item2", 1e-4)),
            lam=cfg.get("lam", 0.01), q=cfg.get("q", 0.6), r1=cfg.get("r1", 1.0), r2=cfg.get("r2", 1.0),
            robust="scaling", lam_scale="authors", **{"cost": "cosine_distance", **kwargs},
        )


class IOT(GCALoss):
    """Inverse optimal transport (Shi et al. 2023), the baseline of the GCA paper: the KL term to
    the paired-views target on the plan of ``n_iter`` balanced sweeps, plus ``lambda_p`` times the
    uniformity term ``KL(Q || P)`` (:class:`~otalign.contrastive.divergences.Uniformity`).

    The GCA authors' ``iot``/``iot_uni`` loop row-normalises, column-normalises and transposes:
    its ``iterations = k`` are ``k + 1`` alternating projections, i.e. ``IOT(n_iter=(k + 1) // 2,
    readout="raw")`` for odd ``k`` and ``IOT(n_iter=k // 2, readout="renormalised")`` for even
    ``k``. The defaults (``n_iter=5``, renormalised) are their default ``iterations=10``; without
    the uniformity term the loss is then :class:`GCAInfoNCE` with 5 sweeps.
    """

    def __init__(self, epsilon: float = 0.5, n_iter: int = 5, lambda_p: float = 0.0, **kwargs: Any) -> None:
        lambda_p = check_real("lambda_p", lambda_p, low=0.0,
                              expected="a finite number >= 0 (the weight of the uniformity term)")
        divergence = KL() + Uniformity() * lambda_p if lambda_p > 0 else KL()
        super().__init__(unit_marginals(), divergence=divergence, epsilon=epsilon, n_iter=n_iter, **kwargs)
        self.lambda_p = lambda_p


class IOTUni(IOT):
    """IOT-uni: :class:`IOT` with the uniformity term, ``lambda_p = 0.2`` by default (the
    authors' ``iot_uni``)."""

    def __init__(self, epsilon: float = 0.5, n_iter: int = 5, lambda_p: float = 0.2, **kwargs: Any) -> None:
        super().__init__(epsilon, n_iter, lambda_p=lambda_p, **kwargs)
