"""mkdocs hook: drop the nav entries whose page does not exist yet.

Some pages (docs/divergence.md, docs/maps.md) arrive from other branches; mkdocs.yml lists them
already, and this hook removes an entry (and a section left empty) while its file is missing, so
`mkdocs build --strict` passes before and after the merge. A listed page that exists is built and
checked as usual.
"""

import logging
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.optional_pages")


def _prune(items, docs_dir):
    kept = []
    for item in items:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                value = _prune(value, docs_dir)
                if value:
                    kept.append({title: value})
                continue
        else:
            title, value = None, item
        if isinstance(value, str) and value.endswith(".md") and "://" not in value \
                and not (docs_dir / value).is_file():
            log.info("nav: %s (%s) is not there yet; left out", value, title)
            continue
        kept.append(item)
    return kept


def on_config(config):
    if config.nav:
        config.nav = _prune(config.nav, Path(config.docs_dir))
    return config
