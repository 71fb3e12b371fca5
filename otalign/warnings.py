"""Warnings issued by otalign."""

from __future__ import annotations

__all__ = ["NonConvergenceWarning"]


class NonConvergenceWarning(UserWarning):
    """A solve or an iteration did not reach its tolerance."""
