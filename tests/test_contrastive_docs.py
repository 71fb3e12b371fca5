"""Every ```python block of the contrastive pages (docs/contrastive.md, docs/experiments.md) is a
complete program: each runs in an empty namespace (its own imports), in a fresh interpreter per
page."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUNNER = """
import json, sys, traceback
failures = []
for i, code in enumerate(json.loads(sys.stdin.read())):
    try:
        exec(compile(code, f"<block {i}>", "exec"), {"__name__": "__main__"})
    except BaseException:
        failures.append((i, traceback.format_exc()))
for i, tb in failures:
    print(f"--- block {i} failed:\\n{tb}", file=sys.stderr)
sys.exit(1 if failures else 0)
"""


def blocks(page):
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)


def run_blocks(page, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks(page)), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_every_python_block_of_docs_contrastive_runs(tmp_path):
    assert len(blocks("docs/contrastive.md")) >= 4
    run_blocks("docs/contrastive.md", tmp_path)


@pytest.mark.slow
def test_every_python_block_of_docs_experiments_runs(tmp_path):
    """Trains (a few small runs)."""
    assert len(blocks("docs/experiments.md")) >= 1
    run_blocks("docs/experiments.md", tmp_path)
