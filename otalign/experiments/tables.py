"""Plain-text tables of results (mean +- std cells)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

__all__ = ["format_stat", "format_table"]


def format_stat(stats: Mapping[str, Optional[float]], percent: bool) -> str:
    """``"mean +- std"`` of ``{"mean", "std", ...}`` (times 100 with 1 decimal if ``percent``,
    else 3 decimals); ``-`` for a missing mean or std."""
    if stats["mean"] is None:
        return "-"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    std = "-" if stats["std"] is None else f"{scale * stats['std']:.{digits}f}"
    return f"{scale * stats['mean']:.{digits}f} +- {std}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell (first left-aligned, others right-aligned), with a
    rule under the header."""
    widths = [max(len(str(r[k])) for r in [header, *rows]) for k in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if k == 0 else str(c).rjust(w) for k, (c, w) in enumerate(zip(row, widths))
        )

    head = line(header)
    return "\n".join([head, "-" * len(head), *map(line, rows)])
