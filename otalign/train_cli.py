"""Argument parsing of ``otalign train`` (the CLI only parses and calls ``otalign.experiments``)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_train_parser"]

DEFAULT_SWEEP = "-0.5,-0.2,-0.1,0,0.1,0.2,0.5"


def _csv(kind):
    def parse(text: str):
        try:
            items = [kind(t) for t in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}; expected a comma-separated list of {kind.__name__}") from None
        if not items:
            raise argparse.ArgumentTypeError("expected at least one item")
        return items

    return parse


def add_train_parser(sub) -> None:
    from .experiments.losses import LOSS_NAMES, LossParams

    p = sub.add_parser(
        "train",
        help="contrastive pretraining on built-in data with a GCA loss, evaluated on frozen features",
        description="SimCLR-style pretraining of a small encoder on scikit-learn's digits (or mnist1d) "
        "with one of the GCA losses, then linear-probe / kNN accuracy, alignment and uniformity. "
        "--compare runs several losses x seeds and prints a table (mean +- std); --domain-sweep "
        "runs the domain-aware target over alpha - beta. See docs/experiments.md.",
    )
    p.add_argument("--loss", default="gca-uot", choices=LOSS_NAMES, help="loss of a single run (default gca-uot)")
    p.add_argument("--compare", type=_csv(str), metavar="LIST", help="compare these losses (e.g. infonce,gca-uot)")
    p.add_argument("--domain-sweep", action="store_true", help="train --loss with DomainTarget(alpha, beta) over --sweep")
    p.add_argument("--sweep", type=_csv(float), default=_csv(float)(DEFAULT_SWEEP), metavar="LIST",
                   help=f"alpha - beta values of the domain sweep (write --sweep=-0.5,0.5; default {DEFAULT_SWEEP})")
    p.add_argument("--seeds", type=_csv(int), metavar="LIST", help="seeds of --compare / --domain-sweep (default 0,1,2)")
    defaults = LossParams()
    g = p.add_argument_group("loss hyper-parameters")
    g.add_argument("--epsilon", type=float, default=defaults.epsilon, help="temperature = entropic strength")
    g.add_argument("--n-iter", type=int, default=defaults.n_iter, help="Sinkhorn iterations of the GCA losses")
    g.add_argument("--q", type=float, default=defaults.q, help="RINCE exponent q in (0, 1]")
    g.add_argument("--lam", type=float, default=defaults.lam, help="RINCE lambda > 0")
    g.add_argument("--rho", type=float, default=defaults.rho, help="GCA-UOT marginal relaxation (inf = balanced)")
    g.add_argument("--r1", type=float, default=defaults.r1, help="GCA-UOT weight of the KL term")
    g.add_argument("--r2", type=float, default=defaults.r2, help="GCA-UOT weight of the robust term")
    g.add_argument("--robust", default=defaults.robust, help="form of the robust term: scaling or partition")
    g.add_argument("--lam-scale", default=defaults.lam_scale, help="scale of --lam: otalign or authors")
    g.add_argument("--readout", default=defaults.readout, help="plan read by the KL term: renormalised or raw")
    g.add_argument("--lambda-p", type=float, default=defaults.lambda_p, help="IOT-uni weight of the uniformity term")
    t = p.add_argument_group("training (see TrainConfig)")
    t.add_argument("--dataset", default=None, help="digits (default) or mnist1d")
    t.add_argument("--augmentation", default=None, help="standard (default) or extreme")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None, help="seed of a single run")
    t.add_argument("--subset", type=int, default=None, help="first SUBSET training samples only")
    t.add_argument("--device", default=None)
    t.add_argument("--threads", type=int, default=None, help="torch/BLAS threads (default 1: reproducible)")
    t.add_argument("--out", default=None, metavar="DIR", help="write JSON (and PNG) results here (default results/train)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train, parser=p)


def _config(args: argparse.Namespace):
    from .experiments import TrainConfig

    changes = {
        "dataset": args.dataset, "augmentation": args.augmentation, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "subset": args.subset,
        "device": args.device, "num_threads": args.threads,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    changes["output_dir"] = str(Path(args.out or "results/train"))
    changes["progress"] = not args.no_progress
    return TrainConfig(**changes)


def _params(args: argparse.Namespace):
    from .experiments.losses import LossParams

    return LossParams(epsilon=args.epsilon, n_iter=args.n_iter, q=args.q, lam=args.lam, rho=args.rho, r1=args.r1, r2=args.r2,
                      robust=args.robust, lam_scale=args.lam_scale, readout=args.readout, lambda_p=args.lambda_p)


def _train(args: argparse.Namespace) -> int:
    from . import experiments as ex

    try:
        config = _config(args)
        params = _params(args)
        seeds = args.seeds or [0, 1, 2]
        if args.compare and args.domain_sweep:
            raise ValueError("--compare and --domain-sweep are exclusive")
        if args.compare:
            factories = {name: ex.loss_factory(name, params) for name in args.compare}
        elif args.domain_sweep:
            factories = {d: ex.domain_loss_factory(args.loss, max(d, 0.0), max(-d, 0.0), params) for d in args.sweep}
        else:
            factory = ex.loss_factory(args.loss, params)
    except ValueError as exc:
        args.parser.error(str(exc))
    out = Path(config.output_dir)
    if args.compare:
        cmp = ex.run_comparison(factories, seeds, config)
        print(cmp.table())
        if len(cmp.names) > 1:
            print("\n" + cmp.differences_table())
        print(f"\nloss hyper-parameters: {params.to_dict()}\nwrote {out / 'comparison.json'} and {out / 'comparison.png'}")
    elif args.domain_sweep:
        sweep = ex.run_domain_sweep(factories, config, seeds=seeds)
        print(sweep.table())
        print(f"\nloss: {args.loss} with DomainTarget(alpha=max(d, 0), beta=max(-d, 0)); {params.to_dict()}")
        print(f"wrote {out / 'domain_sweep.json'} and {out / 'domain_sweep.png'}")
    else:
        run = ex.run_experiment(config, factory(), args.loss)
        m = run.metrics
        print(f"{args.loss} (seed {config.seed}): linear probe {100 * m.linear_probe_acc:.2f}%, "
              f"kNN {100 * m.knn_acc:.2f}%, alignment {m.alignment:.4f}, uniformity {m.uniformity:.4f}, "
              f"final loss {run.epoch_losses[-1]:.4f}, {run.timings['total']:.1f} s")
        print(f"wrote {out / 'runs'}")
    return 0
