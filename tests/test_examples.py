"""Every examples/*.py runs as a script and writes its figure.

Scripts are discovered by glob, so one added later is tested without editing this file. Each runs
as ``python examples/<name>.py --out <tmp>/<name>.png`` (cwd a temporary folder, PYTHONPATH the
repository root, Agg backend) and must exit 0 and write a PNG there. A script that takes over
about 20 s says so with a line starting ``# test: slow``; it then runs in the slow tests
(``-m slow``, run by .ci/run).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT_S = 600
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_slow(script):
    return any(line.startswith("# test: slow") for line in script.read_text(encoding="utf-8").splitlines())


def _param(script):
    marks = [pytest.mark.slow] if is_slow(script) else []
    return pytest.param(script, id=script.name, marks=marks)


@pytest.mark.parametrize("script", [_param(s) for s in SCRIPTS])
def test_example_runs_and_writes_its_figure(script, tmp_path):
    out = tmp_path / "figures" / f"{script.stem}.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script), "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    name = script.relative_to(ROOT)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert out.is_file() and out.read_bytes()[:8] == PNG_MAGIC, f"{script.name} wrote no PNG at --out"


def test_examples_are_discovered():
    assert (ROOT / "examples" / "barycentres.py") in SCRIPTS
