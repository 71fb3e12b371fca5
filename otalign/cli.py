"""Command line: ``otalign demo``, ``otalign train`` and ``otalign bench``.

The CLI only parses arguments and calls library functions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .cli_args import MAX_COUNT, available_cpus, integer, real

__all__ = ["main", "build_parser"]



def _demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    try:
        rows = run_demo(seed=args.seed, epsilon=args.epsilon)
    except ValueError as exc:  # the parser's checks should make this unreachable
        args.parser.error(str(exc))
    print(format_table(rows))
    return 0


def _items(text: Optional[str]) -> Optional[list[str]]:
    """Split a comma-separated option; None stays None."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise ValueError(f"{text!r} has an empty item; expected a comma-separated list")
    return items


def _bench(args: argparse.Namespace) -> int:
    import time

    from . import bench

    if args.list:
        print("problems:")
        for spec in bench.all_problems():
            print(f"  {spec.name}")
        print("library configurations (default ones marked *):")
        for lib, cls in bench.RUNNERS.items():
            defaults = set(cls.default_configs())
            names = ", ".join(f"{c}{'*' if c in defaults else ''}" for c in cls.CONFIGS)
            print(f"  {lib}: {names}")
        return 0
    try:
        settings = bench.BenchSettings.create(
            quick=args.quick,
            problems=_items(args.problems),
            libraries=_items(args.libraries),
            device=args.device,
            dtype=args.dtype,
            repeats=args.repeats,
            out=args.out,
            target=args.target,
            fixed_iters=args.iters,
            max_iter=args.max_iter,
            budget_s=args.budget,
            threads=args.threads,
        )
    except ValueError as exc:
        args.parser.error(str(exc))
    if args.check:  # float64 unless --dtype says otherwise
        results = bench.check_conventions(
            device=settings.torch_device, dtype=bench.DTYPES[args.dtype or "float64"], libraries=_items(args.libraries)
        )
        print(bench.format_checks(results))
        failed = [r for r in results if not r.ok and not r.status.startswith("skipped")]
        print(f"{len(failed)} failure(s)" if failed else "all conventions agree with the float64 reference")
        return 1 if failed else 0
    t0 = time.perf_counter()
    report = bench.run_benchmark(settings, progress=not args.no_progress)
    paths = bench.write_outputs(report)
    print(bench.format_table(report, paths["summary"]))
    print(
        f"\nwrote {paths['json']} and {len(paths['plots'])} plot(s) in {settings.out}/plots; "
        f"wall time {time.perf_counter() - t0:.1f} s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otalign", description="Entropic optimal transport with declarative constraints.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="solve built-in example problems and print a summary per problem")
    from .demo import MAX_SEED, MIN_EPSILON

    demo.add_argument("--seed", type=integer(0, MAX_SEED), default=0, help="seed of the generated point clouds (0 to 2^63 - 1)")
    demo.add_argument(
        "--epsilon",
        type=real(MIN_EPSILON, note=" (the demo's costs are float64 in [0, 1])"),
        default=0.05,
        help="entropic strength, a finite number > 0 (costs are scaled to [0, 1])",
    )
    demo.set_defaults(func=_demo, parser=demo)

    bench = sub.add_parser(
        "bench",
        help="time otalign against POT, GeomLoss and OTT-JAX (ms/iter, time to tolerance, memory)",
        description="Benchmark otalign against POT, GeomLoss and OTT-JAX on seeded problems; prints a "
        "table and writes OUT/bench.json and OUT/plots/<problem>.png. See docs/benchmarks.md.",
    )
    bench.add_argument("--quick", action="store_true", help="small problems, few sweeps and repeats (under a minute on 2 idle CPU cores)")
    bench.add_argument("--problems", metavar="LIST", help="comma-separated name patterns, e.g. 'balanced-n256*,contrastive' (see --list)")
    bench.add_argument("--libraries", metavar="LIST", help="comma-separated 'library' or 'library:config' items, e.g. 'otalign,pot:sinkhorn_log'")
    bench.add_argument("--device", default=None, help="cpu (default), cuda, cuda:<index> or auto")
    bench.add_argument("--dtype", default=None, choices=["float32", "float64"], help="dtype of every library (default float32)")
    count = integer(1, MAX_COUNT)
    positive = real(0.0, low_open=True)
    bench.add_argument("--repeats", type=count, default=None, help="timed calls per median (default 5; quick 3)")
    bench.add_argument("--out", default=None, metavar="DIR", help="output directory (default results/bench)")
    bench.add_argument("--target", type=positive, default=None, help="error target of time-to-tolerance (default 1e-4)")
    bench.add_argument("--iters", type=count, default=None, help="sweeps of the ms/iter measurement (default: the problem's, 100 or 10 for point clouds; quick 20)")
    bench.add_argument("--max-iter", type=count, default=None, help="sweep cap of time-to-tolerance runs (default: the problem's, 2000 or 200000; quick 300)")
    bench.add_argument("--budget", type=positive, default=None, metavar="SECONDS", help="time budget of each stage of one configuration on one problem (default 120; quick 2)")
    bench.add_argument("--threads", type=integer(1, available_cpus(), "a thread count"), default=None, help="CPU threads of torch and XLA during the run, at most the available cores (default: 1 on cpu, the libraries' own on cuda)")
    bench.add_argument("--check", action="store_true", help="only check every library's conventions against a float64 reference on tiny problems (float64 unless --dtype)")
    bench.add_argument("--list", action="store_true", help="list the problems and library configurations, then exit")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(func=_bench, parser=bench)

    from .train_cli import add_train_parser

    add_train_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
