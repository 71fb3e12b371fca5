"""Argument parsing of ``otalign train`` (the CLI only parses and calls ``otalign.experiments``).

Every numeric option is checked by its argparse ``type=`` (:mod:`otalign.cli_args`); the checks
that involve several options, the data set's size and the output directory run next, before any
training. Any failure is argparse's usage message with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from .cli_args import MAX_COUNT, available_cpus, integer, integer_list, real, real_list

__all__ = ["add_train_parser", "DEFAULT_SWEEP", "DEFAULT_SEEDS", "DEFAULT_OUT"]

DEFAULT_SWEEP = "-0.5,-0.2,-0.1,0,0.1,0.2,0.5"
DEFAULT_SEEDS = [0, 1, 2]
DEFAULT_OUT = "results/train"
#: Seeds are split by numpy's SeedSequence; keep them in the 64-bit range of torch's generators.
MAX_SEED = 2**63 - 1
#: The model, its optimiser and the losses compute in float32: a hyper-parameter above this
#: cannot be represented (torch raises on the conversion).
FLOAT32_MAX = 3.4028234663852886e38
F32_TINY = 1.1754943508222875e-38  # the smallest normal float32
F32 = " (the model computes in float32)"
#: Adam's first step is ``lr / (1 - 0.9)``, a float32 number.
MAX_LR = 0.1 * FLOAT32_MAX

EPILOG = """\
output directory (--out, default results/train):
  runs/<loss>_seed<seed>.json    one record per run, written when the run finishes
  comparison.json, .png          --compare summary, written when all its runs are done
  domain_sweep.json, .png        --domain-sweep summary, likewise
  The directory is created and checked before any training. Rerunning a command into the
  same directory resumes it: runs already recorded there with the same settings and loss
  hyper-parameters are read back instead of trained. A directory holding runs made with
  other settings (any training option except --seed/--seeds, --out and --no-progress) or
  with other hyper-parameters for the same loss is refused, unless --overwrite, which first
  deletes its earlier results (runs/*.json and the summaries; other files stay). Files are
  written atomically; a summary is removed before new runs are recorded and rewritten when
  the command completes, so after Ctrl-C the finished runs stay recorded and rerunning the
  command completes the rest.

exit status: 0 done; 1 a run failed (e.g. its loss became NaN: finished runs stay recorded);
  2 invalid arguments or output directory; 130 interrupted.
"""


def _loss_list(names: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",")]
        unknown = [t for t in items if t not in names]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"{unknown[0][:40]!r} is not a loss; expected a comma-separated list of {', '.join(names)}"
            )
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"{text[:60]!r} repeats a loss; expected distinct losses")
        return items

    parse.__name__ = "list"
    return parse


def add_train_parser(sub: Any) -> None:
    """Add the ``train`` subcommand to the subparsers ``sub``."""
    from .experiments.config import AUGMENTATION_PRESETS, DATASETS
    from .experiments.losses import LOSS_NAMES, LossParams
    from .experiments.sweep import sweep_name

    p = sub.add_parser(
        "train",
        help="contrastive pretraining on built-in data with a GCA loss, evaluated on frozen features",
        description="SimCLR-style pretraining of a small encoder on scikit-learn's digits (or mnist1d) "
        "with one of the GCA losses, then linear-probe / kNN accuracy, alignment and uniformity. "
        "--compare runs several losses x seeds and prints a table (mean +- std); --domain-sweep "
        "runs the domain-aware target over alpha - beta. See docs/experiments.md.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--loss", default=None, choices=LOSS_NAMES, help="loss of a single run or of --domain-sweep (default gca-uot)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--compare", type=_loss_list(LOSS_NAMES), metavar="LIST", help="compare these losses (e.g. infonce,gca-uot)")
    mode.add_argument("--domain-sweep", action="store_true", help="train --loss with DomainTarget(alpha, beta) over --sweep")
    p.add_argument("--sweep", type=real_list(-1.0, 1.0, key=sweep_name, what="values of alpha - beta (to 6 digits)"),
                   default=None, metavar="LIST",
                   help=f"alpha - beta values in [-1, 1] of the domain sweep (write --sweep=-0.5,0.5; default {DEFAULT_SWEEP})")
    p.add_argument("--seeds", type=integer_list(0, MAX_SEED, "seeds"), metavar="LIST",
                   help="distinct seeds of --compare / --domain-sweep (default 0,1,2)")
    defaults = LossParams()
    g = p.add_argument_group("loss hyper-parameters")
    # the cosine costs are of magnitude 1 and the losses compute in float32, which resolves
    # |cost| / epsilon up to 8.4e6 (otalign.solve rejects smaller epsilons): 1e-6 keeps a margin
    g.add_argument("--epsilon", type=real(1e-6, FLOAT32_MAX, note=F32), default=defaults.epsilon,
                   help="temperature = entropic strength, >= 1e-6 (float32 resolves |cost| / epsilon up to 8.4e6)")
    g.add_argument("--n-iter", type=integer(0, MAX_COUNT), default=defaults.n_iter, help="Sinkhorn iterations of the GCA losses (>= 0)")
    g.add_argument("--q", type=real(F32_TINY, 1.0, note=" (a normal float32)"), default=defaults.q,
                   help="RINCE exponent q in (0, 1] (at least 1.2e-38, a normal float32)")
    g.add_argument("--lam", type=real(0.0, FLOAT32_MAX, low_open=True, note=F32), default=defaults.lam, help="RINCE lambda > 0")
    g.add_argument("--rho", type=real(0.0, FLOAT32_MAX, low_open=True, allow_inf=True, note=F32), default=defaults.rho,
                   help="GCA-UOT marginal relaxation > 0 (inf = balanced)")
    g.add_argument("--r1", type=real(0.0, FLOAT32_MAX, note=F32), default=defaults.r1, help="GCA-UOT weight of the KL term (>= 0)")
    g.add_argument("--r2", type=real(0.0, FLOAT32_MAX, note=F32), default=defaults.r2, help="GCA-UOT weight of the robust term (>= 0)")
    g.add_argument("--robust", default=defaults.robust, choices=("partition", "scaling"),
                   help="form of the robust term (default partition; see docs/contrastive.md)")
    g.add_argument("--lam-scale", default=defaults.lam_scale, choices=("otalign", "authors"), help="scale of --lam (default otalign)")
    g.add_argument("--readout", default=defaults.readout, choices=("renormalised", "raw"),
                   help="plan read by the KL term (default renormalised)")
    g.add_argument("--lambda-p", type=real(0.0, FLOAT32_MAX, note=F32), default=defaults.lambda_p,
                   help="IOT-uni weight of the uniformity term (>= 0)")
    t = p.add_argument_group("training (see TrainConfig)")
    t.add_argument("--dataset", default=None, choices=DATASETS, help="digits (default) or mnist1d")
    t.add_argument("--augmentation", default=None, choices=AUGMENTATION_PRESETS, help="standard (default) or extreme")
    t.add_argument("--epochs", type=integer(1, MAX_COUNT), default=None)
    t.add_argument("--batch-size", type=integer(2, MAX_COUNT), default=None, help="at most the training samples (--subset)")
    t.add_argument("--lr", type=real(0.0, MAX_LR, low_open=True, note=" (Adam's first step, 10 x lr, is a float32)"),
                   default=None, help="peak learning rate > 0")
    t.add_argument("--seed", type=integer(0, MAX_SEED), default=None, help="seed of a single run")
    t.add_argument("--subset", type=integer(2, MAX_COUNT), default=None, help="first SUBSET training samples only")
    t.add_argument("--device", default=None)
    t.add_argument("--threads", type=integer(1, available_cpus(), "a thread count"), default=None,
                   help="torch/BLAS threads, at most the available cores (default 1: reproducible)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="DIR", help=f"directory of the results (default {DEFAULT_OUT}); see below")
    o.add_argument("--overwrite", action="store_true", help="delete the earlier results of --out first, instead of resuming them")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train, parser=p)


def _config(args: argparse.Namespace):
    from .experiments import TrainConfig

    changes = {
        "dataset": args.dataset, "augmentation": args.augmentation, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "subset": args.subset,
        "device": args.device, "num_threads": args.threads,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    changes["output_dir"] = str(Path(args.out or DEFAULT_OUT))
    changes["progress"] = not args.no_progress
    config = TrainConfig(**changes)
    return config.replace(domains=True) if args.domain_sweep else config


def _params(args: argparse.Namespace):
    from .experiments.losses import LossParams

    return LossParams(epsilon=args.epsilon, n_iter=args.n_iter, q=args.q, lam=args.lam, rho=args.rho, r1=args.r1, r2=args.r2,
                      robust=args.robust, lam_scale=args.lam_scale, readout=args.readout, lambda_p=args.lambda_p)


def _check_combinations(args: argparse.Namespace) -> None:
    """Options that are valid alone but not together (ValueError)."""
    single = not (args.compare or args.domain_sweep)
    if args.compare and args.loss is not None:
        raise ValueError("--loss names the loss of a single run or of --domain-sweep; --compare takes its own list")
    if single and args.seeds is not None:
        raise ValueError("--seeds applies to --compare and --domain-sweep; a single run takes --seed")
    if not single and args.seed is not None:
        raise ValueError("--seed applies to a single run; --compare and --domain-sweep take --seeds")
    if args.sweep is not None and not args.domain_sweep:
        raise ValueError("--sweep applies to --domain-sweep only")
    losses = args.compare or [args.loss or "gca-uot"]
    if "gca-uot" in losses and args.r1 == 0 and args.r2 == 0:
        raise ValueError("--r1 0 and --r2 0 make GCA-UOT's loss identically zero; expected a positive weight")


def _plan(args: argparse.Namespace, params: Any) -> tuple[dict, dict[str, Any], list[int]]:
    """What the command runs: the loss factories as its runner takes them (by name, or by
    ``alpha - beta`` for the domain sweep), the same factories by run name, and the seeds
    (empty for a single run: its seed is the config's)."""
    from . import experiments as ex
    from .experiments.sweep import sweep_name

    if args.compare:
        factories = {name: ex.loss_factory(name, params) for name in args.compare}
        return factories, factories, args.seeds or DEFAULT_SEEDS
    loss = args.loss or "gca-uot"
    if args.domain_sweep:
        sweep = args.sweep if args.sweep is not None else [float(v) for v in DEFAULT_SWEEP.split(",")]
        keyed = {d: ex.domain_loss_factory(loss, max(d, 0.0), max(-d, 0.0), params) for d in sorted(sweep)}
        return keyed, {sweep_name(d): f for d, f in keyed.items()}, args.seeds or DEFAULT_SEEDS
    factories = {loss: ex.loss_factory(loss, params)}
    return factories, factories, []


def _train(args: argparse.Namespace) -> int:
    from . import experiments as ex
    from .experiments import outputs

    parser: argparse.ArgumentParser = args.parser
    try:
        _check_combinations(args)
        config = _config(args)
        params = _params(args)
        factories, named, seeds = _plan(args, params)
        seeds = seeds or [config.seed]
        data = ex.load_dataset(config)
        if config.batch_size > len(data.y_train):
            raise ValueError(
                f"--batch-size {config.batch_size} is larger than the {len(data.y_train)} training samples"
                + (f" (--subset {config.subset})" if config.subset is not None else f" of {config.dataset}")
            )
        out = outputs.prepare_output_dir(config.output_dir)
    except (ValueError, ImportError) as exc:  # ImportError: --dataset mnist1d without its package
        parser.error(str(exc))
    losses = {name: ex.describe_loss(factory) for name, factory in named.items()}
    if args.overwrite:
        removed = outputs.clear_results(out)
        if removed:
            print(f"--overwrite: removed {len(removed)} earlier result file(s) from {out}", file=sys.stderr)
        resumed = {}
    else:
        try:
            resumed = outputs.reusable_runs(out, config, losses, seeds)
        except outputs.ResultConflict as exc:
            parser.error(f"{exc}; pass --overwrite to delete the earlier results, or choose another --out")
    if resumed:
        print(f"{len(resumed)} of {len(named) * len(seeds)} run(s) already recorded in {out / outputs.RUNS_DIR} "
              "with these settings: read back, not trained again", file=sys.stderr)
    try:
        return _run(args, ex, config, params, factories, seeds, data, out)
    except (FloatingPointError, ValueError) as exc:
        # the arguments were valid: a loss that became NaN / inf, or a loss that rejects the
        # non-finite embeddings of a diverged model, is a failed run, not a usage error
        print(f"{parser.prog}: error: a run failed: {str(exc)[:300]} (the training diverged? try a smaller "
              f"--lr, another --epsilon or other loss hyper-parameters); the runs that finished are "
              f"recorded in {out / outputs.RUNS_DIR}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted; the runs that finished are recorded in {out / outputs.RUNS_DIR}; "
              "rerun the same command to complete the others", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, ex: Any, config: Any, params: Any, factories: dict, seeds: list[int],
         data: Any, out: Path) -> int:
    """Run the planned command (resuming recorded runs) and print its results."""
    from .experiments import outputs
    from .experiments.results import run_filename

    if args.compare:
        cmp = ex.run_comparison(factories, seeds, config, data, resume=True)
        print(cmp.table())
        if len(cmp.names) > 1:
            print("\n" + cmp.differences_table())
        print(f"\nloss hyper-parameters: {params.to_dict()}\nwrote {out / 'comparison.json'} and {out / 'comparison.png'}")
    elif args.domain_sweep:
        sweep = ex.run_domain_sweep(factories, config, seeds=seeds, data=data, resume=True)
        print(sweep.table())
        print(f"\nloss: {args.loss or 'gca-uot'} with DomainTarget(alpha=max(d, 0), beta=max(-d, 0)); {params.to_dict()}")
        print(f"wrote {out / 'domain_sweep.json'} and {out / 'domain_sweep.png'}")
    else:
        (name,) = factories
        (run,) = ex.run_grid(factories, seeds, config, data, resume=True)
        m = run.metrics
        print(f"{name} (seed {run.config.seed}): linear probe {100 * m.linear_probe_acc:.2f}%, "
              f"kNN {100 * m.knn_acc:.2f}%, alignment {m.alignment:.4f}, uniformity {m.uniformity:.4f}, "
              f"final loss {run.epoch_losses[-1]:.4f}, {run.timings['total']:.1f} s")
        print(f"recorded in {out / outputs.RUNS_DIR / run_filename(name, run.config.seed)}")
    return 0
