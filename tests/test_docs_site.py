"""The documentation site builds with ``mkdocs build --strict`` (no broken link, reference, nav
entry or docstring), and its hooks do what mkdocs.yml relies on: nav entries of pages not merged
yet are left out, and the gallery lists every example script."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_hook(name):
    spec = importlib.util.spec_from_file_location(f"hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    assert "otalign.solve" in (site / "api" / "otalign" / "index.html").read_text(encoding="utf-8")
    gallery = (site / "examples" / "index.html").read_text(encoding="utf-8")
    for script in (ROOT / "examples").glob("*.py"):
        assert f"examples/{script.name}" in gallery


def test_nav_leaves_out_missing_pages(tmp_path):
    hook = load_hook("optional_pages")
    (tmp_path / "here.md").write_text("# here\n")
    nav = [{"Home": "here.md"}, {"Later": "later.md"}, "later2.md",
           {"Section": [{"Gone": "gone.md"}]}, {"Mixed": [{"Here": "here.md"}, {"Gone": "gone.md"}]},
           {"Site": "https://example.org/x.md"}]
    assert hook._prune(nav, tmp_path) == [{"Home": "here.md"}, {"Mixed": [{"Here": "here.md"}]},
                                          {"Site": "https://example.org/x.md"}]


def test_gallery_lists_every_example_with_its_figure():
    hook = load_hook("gallery")
    text = hook.gallery_markdown(ROOT, ROOT / "docs")
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert f"python examples/{script.name} --out" in text
        if (ROOT / "docs" / "img" / "examples" / f"{script.stem}.png").is_file():
            assert f"(img/examples/{script.stem}.png)" in text
