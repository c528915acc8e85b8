"""``aman plugin new | pack | install``: the author's side of plugins (issue 5; formats §5).

``new`` writes a plugin source tree laid out as an archive (``plugin.toml`` at its root, the
package beside it, ``ui/`` and ``tests/``); ``pack`` checks the manifest and builds
``<name>-<version>.tar.gz`` with one top-level folder; ``install`` uploads an archive to a running
server's ``POST /plugin/install``. Every refusal is an :class:`AuthoringError` whose message is
the one line the command prints.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import Any

from sdk import SdkError

from . import installer
from .installer import Manifest

__all__ = ["AuthoringError", "check_manifest", "install", "pack", "scaffold"]

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
EXCLUDED_SUFFIXES = (".pyc", ".pyo")


class AuthoringError(Exception):
    """A refusal of ``new``, ``pack`` or ``install``; ``str()`` is the message to print."""


def check_manifest(root: Path, files: list[Path]) -> Manifest:
    """Check ``root/plugin.toml`` with the install's own rules (``kernel.installer``, formats
    §5.2, ``api`` included), plus what the install checks only after extracting: the manifest
    pages' entry files exist."""
    path = root / "plugin.toml"
    if not path.is_file():
        raise AuthoringError(f"invalid plugin manifest: {path} not found")
    try:
        manifest = installer.parse_manifest(
            path.read_bytes(), frozenset(f.as_posix() for f in files)
        )
        installer.check_api(manifest)
    except SdkError as exc:
        raise AuthoringError(exc.message) from None
    for page in manifest.ui_pages:
        if not (root / page["path"]).is_file():
            raise AuthoringError(
                f"invalid plugin manifest: ui page '{page['id']}': {page['path']} does not exist"
            )
    return manifest


# --- pack -----------------------------------------------------------------------------------


def _members(root: Path) -> list[Path]:
    """The files to pack, relative to ``root``, sorted: regular files only, without hidden
    files, ``__pycache__``, compiled files and the root's ``tests/``."""
    out: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        rel_dir = here.relative_to(root)
        keep = []
        for d in sorted(dirs):
            full = here / d
            if d.startswith(".") or d == "__pycache__" or (rel_dir == Path(".") and d == "tests"):
                continue
            if full.is_symlink():
                raise AuthoringError(f"cannot pack {full}: links are not allowed in a plugin")
            keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            full = here / f
            if f.startswith(".") or f.endswith(EXCLUDED_SUFFIXES):
                continue
            mode = os.lstat(full).st_mode
            if not stat.S_ISREG(mode):
                kind = "a link" if stat.S_ISLNK(mode) else "not a regular file"
                raise AuthoringError(f"cannot pack {full}: {kind}; only regular files are allowed")
            out.append(full.relative_to(root))
    return sorted(out)


def pack(directory: Path, output: Path | None = None) -> tuple[Path, str]:
    """Build the archive of the plugin in ``directory``; return its path and SHA-256.

    The archive is reproducible: members sorted, times, owners and the gzip header time zeroed,
    modes 0644 (0755 for executables)."""
    root = directory.resolve()
    if not root.is_dir():
        raise AuthoringError(f"not a directory: {directory}")
    files = _members(root)
    manifest = check_manifest(root, files)
    name, version = manifest.name, manifest.version
    target = output or Path(f"{name}-{version}.tar.gz")
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        folders: set[Path] = set()
        for rel in files:
            for parent in reversed(rel.parents[:-1]):
                if parent not in folders:
                    folders.add(parent)
                    tar.addfile(_info(f"{name}/{parent.as_posix()}", tarfile.DIRTYPE, 0o755, 0))
            data = (root / rel).read_bytes()
            executable = os.stat(root / rel).st_mode & 0o111
            info = _info(
                f"{name}/{rel.as_posix()}",
                tarfile.REGTYPE,
                0o755 if executable else 0o644,
                len(data),
            )
            tar.addfile(info, io.BytesIO(data))
    blob = buffer.getvalue()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(blob)
    return target, hashlib.sha256(blob).hexdigest()


def _info(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# --- new ------------------------------------------------------------------------------------

_MODULE = '''"""{name}: an aman plugin.

Hooks are marked with ``@hookimpl``; the runtime calls them by name (see docs/hooks.md).
Import your own submodules relatively (``from . import routes``).
"""

from sdk import Route, hookimpl


@hookimpl
def register_routes(ctx):
    """Served at /api/v1/{name}/hello (the API token is needed unless public_routes lists it)."""
    return [Route(method="GET", path="/hello", handler=hello)]


async def hello(ctx, request):
    who = request.query.get("name", "world")
    return {{"message": f"hello, {{who}}", "plugin": ctx.name, "version": ctx.version}}
'''

_TEST = '''"""Tests of {name}, with the SDK's pytest plugin (fixtures ``aman_plugins``, ``client``)."""

from pathlib import Path

import pytest

from sdk.testing import load_plugin

ROOT = Path(__file__).resolve().parents[1]  # the folder holding plugin.toml

pytestmark = pytest.mark.asyncio


@pytest.fixture
def aman_plugins():
    return [load_plugin(ROOT)]


async def test_hello(client):
    resp = await client.get("/api/v1/{name}/hello?name=aman")
    assert resp.status_code == 200
    assert await resp.get_json() == {{"message": "hello, aman", "plugin": "{name}", "version": "0.1.0"}}
'''

_MANIFEST = """name = "{name}"
version = "0.1.0"
description = "{name}: an aman plugin"
module = "{module}"
api = "1"
requires = []
public_routes = []

[metadata]
author = ""
"""


def scaffold(name: str, parent: Path, *, reserved: frozenset[str] = frozenset()) -> Path:
    """Write a new plugin ``parent/<name>/``; return its folder."""
    if not NAME.match(name):
        raise AuthoringError(
            f"invalid plugin name '{name}': use lowercase letters, digits and '-' (at most 64)"
        )
    if name in reserved:
        raise AuthoringError(f"plugin name is reserved by a built-in plugin: {name}")
    root = parent / name
    if root.exists():
        raise AuthoringError(f"{root} already exists")
    module = name.replace("-", "_") + "_plugin"
    if module[0].isdigit():
        module = f"p{module}"
    files = {
        "plugin.toml": _MANIFEST.format(name=name, module=module),
        f"{module}/__init__.py": _MODULE.format(name=name),
        f"tests/test_{module}.py": _TEST.format(name=name),
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# --- install --------------------------------------------------------------------------------


def install(archive: Path, url: str, token: str | None, timeout: float = 120.0) -> dict[str, Any]:
    """Upload ``archive`` to ``<url>/plugin/install``; return the server's answer."""
    import httpx  # only this command needs it

    try:
        data = archive.read_bytes()
    except OSError as exc:
        raise AuthoringError(f"cannot read {archive}: {exc.strerror or exc}") from None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.post(
            url.rstrip("/") + "/plugin/install",
            files={"plugin": (archive.name, data, "application/gzip")},
            data={"sha256": hashlib.sha256(data).hexdigest()},
            headers=headers,
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise AuthoringError(f"cannot reach {url}: {exc}") from None
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text.strip() or resp.reason_phrase}
    if resp.status_code != 200:
        message = body.get("error") if isinstance(body, dict) else None
        raise AuthoringError(f"install failed ({resp.status_code}): {message or body}")
    if not isinstance(body, dict):
        raise AuthoringError(f"unexpected answer from {url}: {body!r}")
    return body
