"""Every ```python block of README.md and docs/**/*.md is a complete program (its own imports).

The blocks of one page run one after another in one fresh interpreter (cwd an empty temporary
folder, PYTHONPATH the repository root), each in its own empty namespace, so a block that leans
on a name defined by an earlier block fails. A block legitimately slower than about 20 s is
preceded by the line ``<!-- slow -->`` and runs in the slow tests (``-m slow``, run by .ci/run).
Sketches that cannot run (a training loop over a user's loader) are fenced ```text.

A failure names the page and the line of the block's fence; tracebacks point at the page's lines.
"""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLOW_MARK = "<!-- slow -->"
TIMEOUT_S = 600
PYTHON_FENCE = re.compile(r"^(`{3,}|~{3,})\s*(python|py|python3)\s*(\{.*\})?\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    code: str
    slow: bool


def doc_pages():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p.relative_to(ROOT).as_posix() for p in pages if p.is_file()]


def python_blocks(page):
    """The ```python blocks of a page, with the line of each opening fence and its slow mark."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        stripped = lines[i].strip()
        fence = re.match(r"^(`{3,}|~{3,})", stripped)
        if not fence:
            i += 1
            continue
        closing = fence.group(1)
        start, is_python = i, bool(PYTHON_FENCE.match(stripped))
        indent = len(lines[i]) - len(lines[i].lstrip())
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != closing:
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1  # the closing fence
        if is_python:
            previous = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            blocks.append(Block(page, start + 1, "\n".join(body) + "\n", previous == SLOW_MARK))
    return blocks


# Each block is compiled with its page's name and padded to its own line numbers, so a traceback
# reads "docs/page.md", line N. Every block runs, even after an earlier one failed.
RUNNER = r"""
import json, os, sys, traceback
failures = []
for block in json.loads(sys.stdin.read()):
    os.chdir(block["cwd"])
    source = "\n" * block["line"] + block["code"]
    try:
        exec(compile(source, block["page"], "exec"), {"__name__": "__main__"})
    except BaseException:
        failures.append(block["page"] + ":" + str(block["line"]))
        print("--- block at " + failures[-1] + " failed:\n" + traceback.format_exc(), file=sys.stderr)
    else:
        print("ok " + block["page"] + ":" + str(block["line"]), flush=True)
print(json.dumps(failures))
sys.exit(1 if failures else 0)
"""


def run_blocks(blocks, tmp_path):
    """Runs the blocks in one interpreter, each in its own empty folder; fails naming each broken one."""
    payload = []
    for k, block in enumerate(blocks):
        cwd = tmp_path / f"block{k}"
        cwd.mkdir()
        payload.append({"page": block.page, "line": block.line, "code": block.code, "cwd": str(cwd)})
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MPLBACKEND": "Agg"}
    try:
        proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(payload), cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        done = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"blocks timed out after {TIMEOUT_S} s; finished:\n{done}")
    if proc.returncode != 0:
        failed = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(no report)"
        pytest.fail(f"python blocks failed: {failed}\n{proc.stderr[-6000:]}", pytrace=False)


def _params():
    fast, slow = [], []
    for page in doc_pages():
        blocks = python_blocks(page)
        if any(not b.slow for b in blocks):
            fast.append(pytest.param(page, id=page))
        slow += [pytest.param(b, id=f"{b.page}:{b.line}", marks=pytest.mark.slow) for b in blocks if b.slow]
    return fast, slow


FAST_PAGES, SLOW_BLOCKS = _params()


@pytest.mark.parametrize("page", FAST_PAGES)
def test_python_blocks_of_page_run(page, tmp_path):
    run_blocks([b for b in python_blocks(page) if not b.slow], tmp_path)


@pytest.mark.parametrize("block", SLOW_BLOCKS)
def test_slow_python_block_runs(block, tmp_path):
    run_blocks([block], tmp_path)


def test_block_extraction_finds_the_known_blocks():
    """The extractor sees the README's example and the line of its fence, and honours the slow mark."""
    readme = python_blocks("README.md")
    assert readme and "otalign as ota" in readme[0].code
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[readme[0].line - 1].startswith("```python")
    assert len(FAST_PAGES) >= 5
