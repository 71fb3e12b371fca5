"""mkdocs hook: the gallery (docs/examples.md) lists every examples/*.py from its docstring.

The line ``<!-- gallery -->`` of docs/examples.md is replaced by one section per script: the first
line of its docstring as the title, the rest as the text, the figure docs/img/examples/<name>.png
(and <name>_*.png) where `make gallery` has drawn it, the command, and the source, folded. A script
merged later appears without editing the page.
"""

import ast
import re
from pathlib import Path

MARKER = "<!-- gallery -->"
ORDER = ["colour_transfer", "domain_adaptation", "point_cloud_flow", "barycentres", "ragged_batch"]


def _rst_to_md(text):
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _split_docstring(doc):
    """(title, text): the first line, then the rest with literal command lines left out."""
    lines = doc.strip().splitlines()
    title = lines[0].strip().rstrip(".")
    body = [line for line in lines[1:] if not line.startswith("    python ")]
    return _rst_to_md(title), _rst_to_md("\n".join(body).strip())


def gallery_markdown(root, docs_dir):
    scripts = sorted((root / "examples").glob("*.py"),
                     key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    parts = []
    for script in scripts:
        source = script.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source)) or script.stem
        title, text = _split_docstring(doc)
        parts.append(f"## {title}\n\n{text}\n")
        figures = sorted((docs_dir / "img" / "examples").glob(f"{script.stem}.png")) + \
            sorted((docs_dir / "img" / "examples").glob(f"{script.stem}_*.png"))
        for fig in figures:
            parts.append(f"![{title}]({fig.relative_to(docs_dir).as_posix()})\n")
        command = f"python examples/{script.name} --out results/examples/{script.stem}.png"
        parts.append(f"```bash\n{command}\n```\n")
        indented = "\n".join("    " + line if line else "" for line in source.splitlines())
        parts.append(f'??? example "examples/{script.name}"\n\n    ```python\n{indented}\n    ```\n')
    return "\n".join(parts) if parts else "No example scripts yet.\n"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "examples.md" or MARKER not in markdown:
        return markdown
    docs_dir = Path(config.docs_dir)
    return markdown.replace(MARKER, gallery_markdown(docs_dir.parent, docs_dir))
