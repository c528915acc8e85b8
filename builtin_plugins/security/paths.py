"""Where a tool's path argument points (http-api §18.1: relative paths resolve against the
workspace, ``workspace / raw``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["lexical", "resolved"]


def lexical(path: Path) -> Path:
    """``path`` with ``.`` and ``..`` removed, symlinks not followed."""
    return Path(os.path.normpath(path))


def resolved(path: Path) -> Path | None:
    """``path`` absolute with symlinks followed and ``..`` resolved, or None when it cannot be
    resolved (a symlink loop, a NUL byte)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
