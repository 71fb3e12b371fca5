"""Atomic writes of result files: a reader (or a rerun after Ctrl-C) sees the old file or the new
one, never a partial one.

The content goes to a temporary file in the destination's folder, is flushed to disk, then
renamed over the destination (``os.replace``, atomic on POSIX and Windows within one file
system). If writing fails or is interrupted, the temporary file is removed and the destination is
left as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write", "atomic_write_text"]

PathLike = Union[str, Path]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create or replace ``path`` with what ``write(f)`` writes to the binary file ``f``.

    The parent folder must exist. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes the file private (0600)
        os.replace(tmp, path)
    except BaseException:  # including KeyboardInterrupt: never leave the temporary file behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _mode_for(path: Path) -> int:
    """The permissions of the file being replaced, or those a new file gets under the umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Create or replace ``path`` with ``text`` (UTF-8), atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))
