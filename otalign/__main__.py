"""``python -m otalign ...``: the command line of :mod:`otalign.cli` (same as the ``otalign`` script)."""

import sys

from .cli import main

sys.exit(main())
