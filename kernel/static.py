"""Page files: the ``ui/`` folder of a third-party plugin, served at ``/api/v1/<plugin>/ui/...``.

http-api §22: public, regular files only, content type from the extension, no directory listing,
``..`` and links refused (404), ``Cache-Control: no-cache``. The router mounts one such route per
loaded third-party plugin that has a ``ui/`` folder, next to the plugin's own routes, so the page
files appear and disappear with the plugin (http-api §24). A plugin that registers ``GET
/ui/{*...}`` itself keeps its own route.

The plugin's root is its install directory for an installed plugin; otherwise the nearest
directory holding ``plugin.toml`` at or above its module's folder (a source tree laid out as an
archive, as ``aman plugin new`` makes it), else the module's folder (a package installed with pip
ships ``ui/`` inside the package).
"""

from __future__ import annotations

import mimetypes
import os
import stat
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

from sdk import NotFound, Response, Route

if TYPE_CHECKING:
    from .plugins import Plugin

__all__ = ["UI_PATH", "content_type", "plugin_root", "ui_route"]

UI_PATH = "/ui/{*path}"
_LEVELS = 3  # how far above the module's folder plugin.toml is looked for
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".wasm": "application/wasm",
}


def content_type(name: str) -> str:
    """The content type of a file name, from its extension (a fixed table first, so that the
    answer does not depend on the host's ``mime.types``)."""
    suffix = Path(name).suffix.lower()
    if suffix in _TYPES:
        return _TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def plugin_root(plugin: Plugin) -> Path | None:
    """The directory a plugin's ``ui/`` folder lives in, or ``None`` when it has no files."""
    installed = getattr(plugin, "installed", None)  # the installer's record, when installed
    install_dir = getattr(installed, "install_dir", None)
    if install_dir:
        return Path(install_dir)
    obj = plugin.obj
    module = obj if isinstance(obj, types.ModuleType) else sys.modules.get(type(obj).__module__)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    start = Path(file).resolve().parent
    for folder in [start, *start.parents][:_LEVELS]:
        if (folder / "plugin.toml").is_file():
            return folder
    return start


def ui_route(plugin: Plugin) -> Route | None:
    """The page-file route of ``plugin``, or ``None`` when it has no ``ui/`` folder."""
    root = plugin_root(plugin)
    if root is None:
        return None
    folder = root / "ui"
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):  # a link to a folder is not served
            return None
    except OSError:
        return None

    async def page_file(path: str) -> Response:
        return Response(
            body=read_file(folder, path),
            content_type=content_type(path),
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return Route(method="GET", path=UI_PATH, handler=page_file, availability="always")


def read_file(folder: Path, path: str) -> bytes:
    """The bytes of ``folder/path``: a regular file reached without links or ``..``; anything
    else (a folder, a link, a missing file) is ``NotFound``."""
    missing = NotFound("not found")
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise missing
    current = folder
    try:
        for part in parts:
            current = current / part
            mode = os.lstat(current).st_mode
            if stat.S_ISLNK(mode):
                raise missing
        if not stat.S_ISREG(mode):
            raise missing
        fd = os.open(current, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise missing from None
    with os.fdopen(fd, "rb") as f:
        return f.read()
