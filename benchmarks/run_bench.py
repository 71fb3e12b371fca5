"""Thin wrapper: ``python benchmarks/run_bench.py [options]`` is ``otalign bench [options]``.

See ``otalign bench --help`` and docs/benchmarks.md. Examples::

    python benchmarks/run_bench.py --quick
    python benchmarks/run_bench.py --problems 'balanced-n1024*,contrastive' --libraries otalign,pot
"""

from __future__ import annotations

import sys
from pathlib import Path

# the otalign of this checkout, not an installed one (this script's directory, not the checkout's
# root, is first on sys.path when it runs)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otalign.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
