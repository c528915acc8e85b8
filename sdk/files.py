"""Files written whole: readers see the old content or the new, never a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, data: bytes, *, parents: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync it,
    rename it over ``path`` and fsync the directory. Missing parent directories are created
    (unless ``parents`` is false: then a missing one is a :class:`FileNotFoundError`). A
    symlink is written through (its target is replaced); an existing file keeps its mode, a new
    one gets ``0o666`` less the umask. Blocking: call it from a worker thread in async code."""
    target = Path(os.path.realpath(path))
    if parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = _default_mode()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
