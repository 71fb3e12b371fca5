"""Thin wrapper: ``python benchmarks/run_bench.py [options]`` is ``otalign bench [options]``.

See ``otalign bench --help`` and docs/benchmarks.md. Examples::

    python benchmarks/run_bench.py --quick
    python benchmarks/run_bench.py --problems 'balanced-n1024*,contrastive' --libraries otalign,pot
"""

from __future__ import annotations

import sys

from otalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
