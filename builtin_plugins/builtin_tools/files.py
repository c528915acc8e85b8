"""The file tools ``read``, ``list``, ``find``, ``grep``, ``write`` and ``edit`` (http-api §18.1).

Sync handlers: the ``tools`` plugin runs them in a worker thread, so plain blocking I/O is fine.
Walks are depth-first in name order (deterministic), do not descend into symlinked directories
and skip what they cannot read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from sdk import ToolContext, ToolError
from sdk.files import write_atomic

from .common import Deadline, os_errors, resolve

__all__ = ["edit", "find", "grep", "list_dir", "read", "write"]

#: grep skips files with a NUL byte in their first bytes (binary), like grep(1).
BINARY_SNIFF = 8192
#: grep cuts the text of a matching line to this many characters.
LINE_MAX = 1000
#: grep searches the first this many bytes of a line (the rest is read and dropped, so a huge
#: file without newlines costs no more memory than this).
LINE_READ_MAX = 1 << 20


def read(args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
    """``read``: ``limit`` bytes from byte ``offset``, decoded as UTF-8 (invalid bytes replaced)."""
    path = resolve(tc, args["path"])
    offset, limit = int(args["offset"]), int(args["limit"])
    with os_errors(path, "file"), open(path, "rb", opener=_nonblocking) as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(offset)
        data = f.read(limit)
    return {
        "path": str(path),
        "content": data.decode("utf-8", errors="replace"),
        "size": size,
        "truncated": offset + len(data) < size,
    }


def list_dir(args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
    """``list``: the entries of a directory (names relative to it), recursive on demand."""
    root = _directory(tc, args["path"])
    walk = _walk(root, recursive=bool(args["recursive"]), deadline=Deadline.of(tc))
    entries, truncated = _take((_entry(name, entry) for name, entry in walk), args["max_entries"])
    return {"path": str(root), "entries": entries, "truncated": truncated}


def find(args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
    """``find``: files and directories under ``path`` whose name matches the glob ``pattern``."""
    root = _directory(tc, args["path"])
    names = (
        name
        for name, _ in _walk(root, recursive=True, deadline=Deadline.of(tc))
        if _glob(args["pattern"], name)
    )
    matches, truncated = _take((_shown(args["path"], name) for name in names), args["max_results"])
    return {"matches": matches, "truncated": truncated}


def grep(args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
    """``grep``: the lines matching the regex ``pattern`` in the text files under ``path`` (a
    directory, walked recursively, files filtered by ``glob``; or one file)."""
    try:
        regex = re.compile(args["pattern"], re.IGNORECASE if args["ignore_case"] else 0)
    except re.error as exc:
        raise ToolError(f"invalid regex: {exc}") from None
    deadline = Deadline.of(tc)
    hits = (
        {"path": _shown(args["path"], name), "line": number, "text": text[:LINE_MAX]}
        for name, file in _grep_files(tc, args["path"], args["glob"], deadline)
        for number, text in _lines(file, deadline)
        if regex.search(text)
    )
    matches, truncated = _take(hits, args["max_results"])
    return {"matches": matches, "truncated": truncated}


def write(args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
    """``write``: the whole file atomically (temporary file + rename), or appended to."""
    path = resolve(tc, args["path"])
    data = args["content"].encode("utf-8")
    if path.is_dir():
        raise ToolError(f"is a directory: {path}")
    if args["create_dirs"]:
        with os_errors(path.parent, "directory"):
            path.parent.mkdir(parents=True, exist_ok=True)
    if args["append"]:
        with os_errors(path.parent, "directory"), open(path, "ab", opener=_nonblocking) as f:
            f.write(data)
    else:
        _replace(path, data)
    return {"path": str(path), "bytes_written": len(data)}


def edit(args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
    """``edit``: replace ``old_text`` by ``new_text`` (the first occurrence, or all), atomically.

    Bytes that are not UTF-8 survive the round trip unchanged (``surrogateescape``).
    """
    path = resolve(tc, args["path"])
    with os_errors(path, "file"), open(path, "rb", opener=_nonblocking) as f:
        text = f.read().decode("utf-8", errors="surrogateescape")
    old, new = args["old_text"], args["new_text"]
    count = text.count(old)
    if count == 0:
        raise ToolError(f"old_text not found in {path}")
    replacements = count if args["replace_all"] else 1
    _replace(path, text.replace(old, new, replacements).encode("utf-8", errors="surrogateescape"))
    return {"path": str(path), "replacements": replacements}


# --- helpers -------------------------------------------------------------------------------


def _nonblocking(path: str, flags: int) -> int:
    """Open without blocking: a FIFO fails at once instead of hanging the worker thread (regular
    files ignore the flag)."""
    return os.open(path, flags | os.O_NONBLOCK)


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` whole (``sdk.files.write_atomic``: a symlink is written through, an
    existing file keeps its mode)."""
    with os_errors(path.parent, "directory"):
        write_atomic(path, data, parents=False)


def _directory(tc: ToolContext, path: str) -> Path:
    root = resolve(tc, path)
    if not root.exists():
        raise ToolError(f"directory not found: {root}")
    if not root.is_dir():
        raise ToolError(f"not a directory: {root}")
    return root


def _walk(
    root: Path, *, recursive: bool, deadline: Deadline
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """``(name relative to root, entry)``, depth-first in name order; an unreadable root is an
    error, an unreadable directory below it is skipped."""
    with os_errors(root, "directory"):
        top = _scan(root)
    yield from _below(top, "", recursive, deadline)


def _below(
    entries: list[os.DirEntry[str]], prefix: str, recursive: bool, deadline: Deadline
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    for entry in entries:
        deadline.check()
        name = f"{prefix}{entry.name}"
        yield name, entry
        if recursive and _is_dir(entry, follow_symlinks=False):
            try:
                children = _scan(entry.path)
            except OSError:
                continue
            yield from _below(children, f"{name}/", recursive, deadline)


def _scan(directory: str | Path) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as it:
        return sorted(it, key=lambda e: e.name)


def _is_dir(entry: os.DirEntry[str], *, follow_symlinks: bool = True) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow_symlinks)
    except OSError:
        return False


def _entry(name: str, entry: os.DirEntry[str]) -> dict[str, Any]:
    """A ``list`` entry; directories and entries whose size cannot be read have size 0."""
    if _is_dir(entry):
        return {"name": name, "type": "dir", "size": 0}
    try:
        size = entry.stat().st_size
    except OSError:
        size = 0
    return {"name": name, "type": "file", "size": size}


def _take(items: Iterator[Any], limit: int) -> tuple[list[Any], bool]:
    """At most ``limit`` items, and whether there were more."""
    taken: list[Any] = []
    for item in items:
        if len(taken) == limit:
            return taken, True
        taken.append(item)
    return taken, False


def _glob(pattern: str, name: str) -> bool:
    """A pattern with a ``/`` matches the path relative to the search root, any other pattern
    the base name (``*.py`` matches ``src/a.py``)."""
    return fnmatchcase(name if "/" in pattern else name.rpartition("/")[2], pattern)


def _shown(base: str, name: str) -> str:
    """A match as the caller can pass it back: ``base`` (the ``path`` argument) joined with the
    name relative to it (``src`` + ``a.py`` → ``src/a.py``; ``.`` + ``a.py`` → ``a.py``)."""
    return os.path.normpath(os.path.join(base, name)) if name else base


def _grep_files(
    tc: ToolContext, base: str, glob: str, deadline: Deadline
) -> Iterator[tuple[str, Path]]:
    """The files ``grep`` reads: ``base`` itself when it is a file, else the files under it whose
    name matches ``glob``."""
    path = resolve(tc, base)
    if path.is_file():
        yield "", path
        return
    if not path.exists():
        raise ToolError(f"path not found: {path}")
    for name, entry in _walk(path, recursive=True, deadline=deadline):
        if _glob(glob, name) and _is_file(entry):
            yield name, Path(entry.path)


def _is_file(entry: os.DirEntry[str]) -> bool:
    """A regular file itself: like ``grep -r``, the walk does not follow symlinks (one may lead
    out of the workspace, where the allowlist only checks the ``path`` argument)."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _lines(path: Path, deadline: Deadline) -> Iterator[tuple[int, str]]:
    """``(number, text)`` of each line (from 1, without its end); nothing for a binary or
    unreadable file."""
    try:
        with path.open("rb") as f:
            if b"\0" in f.read(BINARY_SNIFF):
                return
            f.seek(0)
            number = 0
            while raw := f.readline(LINE_READ_MAX):
                deadline.check()
                number += 1
                if not raw.endswith(b"\n"):  # a longer line: its rest is read and dropped
                    while (rest := f.readline(LINE_READ_MAX)) and not rest.endswith(b"\n"):
                        deadline.check()
                yield number, raw.decode("utf-8", errors="replace").rstrip("\r\n")
    except OSError:
        return
