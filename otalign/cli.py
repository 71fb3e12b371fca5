"""Command line: ``otalign demo`` (more sub-commands as the library grows).

The CLI only parses arguments and calls library functions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    print(format_table(run_demo(seed=args.seed, epsilon=args.epsilon)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otalign", description="Entropic optimal transport with declarative constraints.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="solve built-in example problems and print a summary per problem")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated point clouds")
    demo.add_argument("--epsilon", type=float, default=0.05, help="entropic strength (costs are scaled to [0, 1])")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
