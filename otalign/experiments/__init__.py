"""Training and evaluation pipeline for contrastive losses (``otalign train``).

SimCLR-style pretraining of a small convolutional encoder on data that ship with the
dependencies (scikit-learn's digits; mnist1d generated locally), with any loss
``loss_fn(z_a, z_b, **kw) -> 0-dim tensor``, then evaluation on frozen features (linear probe,
kNN, alignment, uniformity; domain probe in the domain experiment).

>>> from otalign.experiments import TrainConfig, run_comparison
>>> cmp = run_comparison({"ntxent": lambda: MyNTXent(0.5)}, seeds=[0, 1], config=TrainConfig())
>>> print(cmp.table()); cmp.save("results/")

Modules: ``config`` (TrainConfig), ``data`` (data sets and splits), ``augment`` (view
augmentations), ``domains`` (style domains), ``models`` (encoder and head), ``reproducibility``
(seeding, threads), ``train`` (pretrain), ``metrics`` (probe, kNN, alignment, uniformity),
``evaluate`` (metrics of a model), ``losses`` (the contrastive losses by name), ``results`` (run records, JSON), ``run`` (one run, grids of
runs), ``compare`` (loss comparison), ``sweep`` (domain sweep), ``outputs`` (the output directory:
checks, resuming, consistency), ``files`` (atomic writes), ``plots``, ``tables``.
"""

from . import augment, outputs
from .compare import Comparison, run_comparison
from .config import TrainConfig
from .data import Dataset, load_dataset
from .domains import DOMAIN_STYLES, apply_domain_styles, assign_domains
from .evaluate import Metrics, evaluate, extract
from .losses import LOSS_NAMES, LossParams, NamedLossFactory, domain_loss_factory, loss_factory
from .metrics import alignment, knn_accuracy, linear_probe_accuracy, uniformity
from .models import SimCLRModel, build_model
from .results import RunResult
from .outputs import ResultConflict
from .run import describe_loss, run_experiment, run_grid
from .sweep import DomainSweep, run_domain_sweep
from .train import TrainResult, pretrain

__all__ = [
    "TrainConfig",
    "Dataset",
    "load_dataset",
    "augment",
    "DOMAIN_STYLES",
    "assign_domains",
    "apply_domain_styles",
    "SimCLRModel",
    "build_model",
    "TrainResult",
    "pretrain",
    "Metrics",
    "evaluate",
    "extract",
    "linear_probe_accuracy",
    "knn_accuracy",
    "alignment",
    "uniformity",
    "RunResult",
    "run_experiment",
    "run_grid",
    "describe_loss",
    "outputs",
    "ResultConflict",
    "Comparison",
    "run_comparison",
    "DomainSweep",
    "run_domain_sweep",
    "LOSS_NAMES",
    "LossParams",
    "loss_factory",
    "domain_loss_factory",
    "NamedLossFactory",
]
