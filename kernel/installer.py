"""Plugin archives: the pre-scan, the manifest, the extraction and the import (formats §5).

Everything here is free of kernel state; the transaction that ties it to the plugin manager (the
order of http-api §7) is :meth:`kernel.plugins.PluginManager.install`.

The archive is read twice from the uploaded bytes, both times as a stream: :func:`scan` checks
every header and counts the decompressed bytes before anything is written, :func:`extract` then
writes the plugin root into a fresh staging directory, re-checking each member against what the
scan saw. Nothing is written outside ``<plugins.dir>/.staging/`` before every check passed.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import importlib.machinery
import importlib.util
import io
import os
import re
import shutil
import stat
import sys
import tarfile
import tomllib
import unicodedata
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from attrs import frozen

from sdk import Invalid, Unrecoverable

from .hooks import hook_names

__all__ = [
    "Limits",
    "Manifest",
    "Member",
    "Scan",
    "check_api",
    "check_requires",
    "extract",
    "forget_module",
    "import_plugin",
    "parse_manifest",
    "private_module_name",
    "scan",
]

MANIFEST_MAX_BYTES = 64 * 1024
SUPPORTED_API = ("1",)
#: A version names a directory: at most this many characters.
VERSION_MAX = 64
# `\Z`, not `$`, which also matches before a final newline ("evil\n").
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}\Z")
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?\Z"
)
_ROUTE_ENTRY = re.compile(r"^(?:(GET|POST|PUT|PATCH|DELETE|HEAD) )?(/\S*)\Z")
_DRIVE = re.compile(r"^[A-Za-z]:")
_KEYS = frozenset(
    {
        "name",
        "version",
        "description",
        "module",
        "api",
        "requires",
        "public_routes",
        "ui",
        "metadata",
    }
)
_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}
_CHUNK = 64 * 1024


def bad_archive(reason: str) -> Invalid:
    return Invalid(f"invalid plugin archive: {reason}")


def bad_manifest(reason: str) -> Invalid:
    return Invalid(f"invalid plugin manifest: {reason}")


# --- the pre-scan (formats §5.3) ----------------------------------------------------------


@frozen
class Limits:
    max_members: int
    max_member_bytes: int
    max_unpacked_bytes: int


@frozen
class Member:
    name: str  # cleaned: no "./", no "." components, no trailing "/"
    kind: str  # "file" or "dir"
    size: int
    executable: bool


@frozen
class Scan:
    members: tuple[Member, ...]
    root: str  # "" (archive root) or the single top-level folder
    manifest: bytes

    def files(self) -> frozenset[str]:
        """The regular files of the plugin root, relative to it."""
        cut = len(self.root) + 1 if self.root else 0
        return frozenset(
            m.name[cut:] for m in self.members if m.kind == "file" and _under(m.name, self.root)
        )


def _under(name: str, root: str) -> bool:
    return not root or name.startswith(root + "/")


class _Overflow(Exception):
    """The decompressed stream went past ``plugins.max_unpacked_bytes``."""


class _Capped:
    """A read-only stream that counts the bytes read through it and stops past ``limit``: a
    gzip bomb is refused after at most ``limit`` bytes of output (headers included)."""

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self._raw, self._limit, self.count = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        want = self._limit + 1 - self.count
        data = self._raw.read(want if size < 0 else min(size, want))
        self.count += len(data)
        if self.count > self._limit:
            raise _Overflow()
        return data


def _shown(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _kind(ti: tarfile.TarInfo) -> str:
    sparse = ti.sparse is not None or any(k.startswith("GNU.sparse.") for k in ti.pax_headers)
    if ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not sparse:
        return "file"
    if ti.type == tarfile.DIRTYPE:
        return "dir"
    kind = "sparse file" if sparse else _KINDS.get(ti.type, f"member of type {ti.type!r}")
    raise bad_archive(
        f"member '{_shown(ti.name)}' is a {kind}; only regular files and directories are allowed"
    )


def _clean(ti: tarfile.TarInfo, kind: str) -> str:
    """The member's name without ``.`` components, or an error for an unsafe name."""
    raw = ti.name
    shown = _shown(raw)
    unsafe = bad_archive(f"unsafe member name '{shown}'")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise unsafe from None
    if any(c == "\\" or unicodedata.category(c) == "Cc" for c in raw):
        raise unsafe
    if raw.startswith("/") or _DRIVE.match(raw):
        raise unsafe
    name = raw.rstrip("/") if kind == "dir" and raw not in ("/",) else raw
    parts = name.split("/")
    if any(p in ("", "..") for p in parts):
        raise unsafe
    parts = [p for p in parts if p != "."]
    clean = "/".join(parts)
    if not clean and kind == "file":
        raise unsafe
    if len(clean.encode()) > 1024 or any(len(p.encode()) > 255 for p in parts):
        raise bad_archive(f"member name too long: '{shown}'")
    return clean


def _members(
    data: bytes, limits: Limits
) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, Member | None]]:
    """Every member, checked by the rules of formats §5.3 that need only its header; ``None`` for
    the archive root itself (``./``). Errors are :class:`sdk.Invalid`."""
    if data[:2] != b"\x1f\x8b":
        raise bad_archive("not a gzip-compressed tar archive")
    stream = _Capped(gzip.GzipFile(fileobj=io.BytesIO(data)), limits.max_unpacked_bytes)
    count = total = 0
    with tarfile.open(  # type: ignore[call-overload]  # a minimal stream object is enough
        fileobj=stream,
        mode="r|",
        encoding="utf-8",
        errors="surrogateescape",
    ) as tar:
        for ti in tar:
            count += 1
            if count > limits.max_members:
                raise bad_archive(f"too many members (limit {limits.max_members})")
            kind = _kind(ti)
            name = _clean(ti, kind)
            size = ti.size if kind == "file" else 0
            if size > limits.max_member_bytes:
                raise _too_large(ti, limits)
            total += size
            if total > limits.max_unpacked_bytes:
                raise _Overflow()
            member = Member(name=name, kind=kind, size=size, executable=bool(ti.mode & 0o111))
            yield tar, ti, (member if name else None)


@contextlib.contextmanager
def _reading(limits: Limits) -> Iterator[None]:
    """Map what reading the stream raises to the reasons of formats §5.3 (around the consumer's
    loop: member content is read in the consumer's frame, not the generator's)."""
    try:
        yield
    except _Overflow:
        raise bad_archive(
            f"archive unpacks to more than {limits.max_unpacked_bytes} bytes"
        ) from None
    except tarfile.TarError as exc:
        raise bad_archive(f"corrupt archive: {exc}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise bad_archive(f"corrupt archive: {exc}") from None


def _too_large(ti: tarfile.TarInfo, limits: Limits) -> Invalid:
    return bad_archive(
        f"member '{_shown(ti.name)}' is too large (limit {limits.max_member_bytes} bytes)"
    )


def _read(tar: tarfile.TarFile, ti: tarfile.TarInfo, limits: Limits) -> Iterator[bytes]:
    """The content of a regular file, in chunks, checked against the limits as actually read."""
    handle = tar.extractfile(ti)
    if handle is None:  # pragma: no cover - a regular file always has one
        return
    read = 0
    while chunk := handle.read(_CHUNK):
        read += len(chunk)
        if read > limits.max_member_bytes or read > ti.size:
            raise _too_large(ti, limits)
        yield chunk


def _key(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def scan(data: bytes, limits: Limits) -> Scan:
    """Check every member of the archive; find the manifest and the plugin root (§5.1)."""
    members: list[Member] = []
    seen: dict[str, str] = {}  # folded name -> kind
    implied: set[str] = set()  # folded parent directories of members
    manifests: dict[str, bytes] = {}
    with _reading(limits):
        for tar, ti, member in _members(data, limits):
            if member is None:
                continue
            key = _key(member.name)
            if key in seen or (member.kind == "file" and key in implied):
                raise bad_archive(f"duplicate member '{_shown(ti.name)}'")
            parts = key.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if seen.get(parent) == "file":
                    raise bad_archive(f"unsafe member name '{_shown(ti.name)}'")
                implied.add(parent)
            seen[key] = member.kind
            members.append(member)
            if member.kind == "file":
                wanted = member.name == "plugin.toml" or (
                    member.name.count("/") == 1 and member.name.endswith("/plugin.toml")
                )
                content = bytearray()
                for chunk in _read(tar, ti, limits):
                    if wanted and len(content) <= MANIFEST_MAX_BYTES:
                        content += chunk
                if wanted:
                    manifests[member.name] = bytes(content)
    if "plugin.toml" in manifests:
        return Scan(members=tuple(members), root="", manifest=manifests["plugin.toml"])
    tops = {m.name.split("/", 1)[0] for m in members}
    if len(tops) == 1:
        (top,) = tops
        if f"{top}/plugin.toml" in manifests:
            return Scan(members=tuple(members), root=top, manifest=manifests[f"{top}/plugin.toml"])
    raise bad_manifest("plugin.toml must be at the archive root or in its single top-level folder")


# --- the manifest (formats §5.2) ----------------------------------------------------------


@frozen
class Manifest:
    name: str
    version: str
    description: str
    module: str
    api: Any
    requires: Any
    public_routes: tuple[str, ...]
    ui_pages: tuple[Mapping[str, str], ...]
    metadata: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "module": self.module,
            "api": self.api,
            "requires": self.requires,
            "public_routes": list(self.public_routes),
            "ui_pages": [dict(p) for p in self.ui_pages],
            "metadata": dict(self.metadata),
        }


def _string(data: Mapping[str, Any], key: str, *, required: bool, default: str = "") -> str:
    if key not in data:
        if required:
            raise bad_manifest(f"missing key '{key}'")
        return default
    value = data[key]
    if not isinstance(value, str):
        raise bad_manifest(f"'{key}' must be a string")
    return value


def _strings(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_manifest(f"'{key}' must be an array of strings")
    return value


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return (
        bool(path)
        and not path.startswith("/")
        and "\\" not in path
        and not any(unicodedata.category(c) == "Cc" for c in path)
        and all(p not in ("", ".", "..") for p in parts)
    )


def _ui_pages(data: Mapping[str, Any]) -> tuple[Mapping[str, str], ...]:
    ui = data.get("ui", {})
    if not isinstance(ui, dict):
        raise bad_manifest("'ui' must be a table")
    for key in ui:
        if key != "pages":
            raise bad_manifest(f"unknown key '{key}'")
    pages = ui.get("pages", [])
    if not isinstance(pages, list):
        raise bad_manifest("'ui.pages' must be an array")
    out: list[Mapping[str, str]] = []
    ids: set[str] = set()
    for page in pages:
        if isinstance(page, str):
            page = {"id": page}
        if not isinstance(page, dict):
            raise bad_manifest("'ui.pages' entries must be strings or tables")
        for key in page:
            if key not in ("id", "label", "path"):
                raise bad_manifest(f"unknown key '{key}'")
        page_id, label, path = page.get("id"), page.get("label"), page.get("path", "index.html")
        if not isinstance(page_id, str) or not NAME_RE.match(page_id):
            raise bad_manifest(f"invalid ui page id '{page_id}'")
        if page_id in ids:
            raise bad_manifest(f"duplicate ui page id '{page_id}'")
        ids.add(page_id)
        if label is None or label == "":
            label = page_id[0].upper() + page_id[1:]
        if not isinstance(label, str) or len(label) > 64:
            raise bad_manifest(
                f"ui page label of '{page_id}' must be a string of at most 64 characters"
            )
        if not isinstance(path, str) or not _safe_relative(path):
            raise bad_manifest(f"invalid ui page path '{path}'")
        out.append({"id": page_id, "label": label, "path": f"ui/{path}"})
    return tuple(out)


def parse_manifest(raw: bytes, files: frozenset[str] | None = None) -> Manifest:
    """Read and check ``plugin.toml`` (``files``: the plugin root's files, to find the module).
    ``api`` and ``requires`` are checked later (422, :func:`check_api`, :func:`check_requires`)."""
    if len(raw) > MANIFEST_MAX_BYTES:
        raise bad_manifest(f"plugin.toml is larger than {MANIFEST_MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_manifest("plugin.toml is not valid UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise bad_manifest(f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per level of nesting
        raise bad_manifest("invalid TOML: nested too deeply") from None
    for key in data:
        if key not in _KEYS:
            raise bad_manifest(f"unknown key '{key}'")
    name = _string(data, "name", required=True)
    if not NAME_RE.match(name):
        raise bad_manifest(
            f"invalid name '{name}' (lowercase letters, digits and '-', at most 64 characters)"
        )
    version = _string(data, "version", required=True)
    if not SEMVER_RE.match(version) or len(version) > VERSION_MAX:
        raise bad_manifest(
            f"invalid version '{version[:VERSION_MAX]}' (SemVer 2.0.0 expected,"
            f" at most {VERSION_MAX} characters)"
        )
    description = _string(data, "description", required=False)
    if len(description) > 500:
        raise bad_manifest("'description' is longer than 500 characters")
    module = _string(data, "module", required=True)
    parts = module.split(".")
    if not all(p.isidentifier() for p in parts):
        raise bad_manifest(f"invalid module name '{module}'")
    base = "/".join(parts)
    if files is not None and f"{base}.py" not in files and f"{base}/__init__.py" not in files:
        raise bad_manifest(
            f"module '{module}' not found in the archive ({base}.py or {base}/__init__.py)"
        )
    public_routes = _strings(data, "public_routes")
    for entry in public_routes:
        if not _ROUTE_ENTRY.match(entry):
            raise bad_manifest(f"invalid public_routes entry '{entry}'")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise bad_manifest("'metadata' must be a table")
    return Manifest(
        name=name,
        version=version,
        description=description,
        module=module,
        api=data.get("api"),
        requires=data.get("requires", []),
        public_routes=tuple(public_routes),
        ui_pages=_ui_pages(data),
        metadata=metadata,
    )


def check_api(manifest: Manifest) -> None:
    if not isinstance(manifest.api, str) or manifest.api not in SUPPORTED_API:
        shown = manifest.api if manifest.api is not None else ""
        raise Unrecoverable(
            f"unsupported plugin API version '{shown}' (supported: {', '.join(SUPPORTED_API)})"
        )


def check_requires(manifest: Manifest) -> None:
    """Every requirement whose markers hold must be installed in a satisfying version (422)."""
    # Imported on the first check: packaging and importlib.metadata cost ~50 ms of every
    # start-up otherwise.
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    from packaging.markers import default_environment
    from packaging.requirements import InvalidRequirement, Requirement

    requires = manifest.requires
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise Unrecoverable("invalid requirements: 'requires' must be an array of strings")
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    missing: list[dict[str, str | None]] = []
    for text in requires:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise Unrecoverable(f"invalid requirement '{text}': {exc}") from None
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        try:
            found: str | None = dist_version(req.name)
        except PackageNotFoundError:
            found = None
        if found is None or not req.specifier.contains(found, prereleases=True):
            missing.append({"requirement": text.strip(), "found": found})
    if missing:
        listed = ", ".join(
            f"{m['requirement']} ({'not installed' if m['found'] is None else 'found ' + str(m['found'])})"
            for m in missing
        )
        raise Unrecoverable(f"missing requirements: {listed}", missing=missing)


# --- writing (formats §5.3 "Writing") -----------------------------------------------------


def _mkdirs(root: Path, rel: str) -> Path:
    """Create the directories of ``rel`` under ``root`` (existing ones must be real dirs)."""
    path = root
    for part in [p for p in rel.split("/") if p]:
        path = path / part
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise bad_archive(f"unsafe member name '{rel}'") from None
    return path


def extract(data: bytes, found: Scan, dest: Path, limits: Limits) -> None:
    """Write the plugin root of the scanned archive into the empty directory ``dest``."""
    expected = iter(found.members)
    cut = len(found.root) + 1 if found.root else 0
    data_filter = getattr(tarfile, "data_filter", None)
    with _reading(limits):
        for tar, ti, member in _members(data, limits):
            if member is None:
                continue
            if member != next(expected, None):  # the same bytes read twice must give the same tree
                raise bad_archive("archive changed between scan and extraction")
            if data_filter is not None:  # a second line of defence only (formats §5.3)
                try:
                    data_filter(ti, str(dest))
                except tarfile.FilterError as exc:
                    raise bad_archive(str(exc)) from None
            if not _under(member.name, found.root):
                continue
            rel = member.name[cut:]
            if not rel:
                continue
            if member.kind == "dir":
                _mkdirs(dest, rel)
                continue
            parent, _, leaf = rel.rpartition("/")
            target = _mkdirs(dest, parent) / leaf
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(target, flags, 0o600)
            with os.fdopen(fd, "wb") as out:
                for chunk in _read(tar, ti, limits):
                    out.write(chunk)
                os.fchmod(out.fileno(), 0o755 if member.executable else 0o644)
    _verify(dest)


def _verify(dest: Path) -> None:
    """Every path resolves inside ``dest``; no links; directories get 0755."""
    top = os.path.realpath(dest)
    for here, dirs, files in os.walk(dest, followlinks=False):
        for entry in [*dirs, *files]:
            path = os.path.join(here, entry)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise bad_archive(f"extracted '{entry}' is not a regular file or directory")
            if os.path.commonpath([top, os.path.realpath(path)]) != top:
                raise bad_archive(f"extracted '{entry}' lies outside the plugin directory")
            if stat.S_ISDIR(mode):
                os.chmod(path, 0o755)
    os.chmod(dest, 0o755)


def remove_tree(path: Path) -> None:
    """Delete a directory tree (never following links); a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


# --- the module (formats §5.4) ------------------------------------------------------------


def private_module_name(name: str, sha256: str) -> str:
    return f"_aman_plugin_{name.replace('-', '_')}_{sha256}"


def import_plugin(root: Path, manifest: Manifest, sha256: str) -> ModuleType:
    """Import the manifest's module from ``root`` under a private package named after the plugin
    and the archive's SHA-256 (the plugin root is that package's path, so relative imports inside
    the plugin work and two versions never share ``sys.modules`` entries). Checks its hook
    implementations. Errors are :class:`sdk.Unrecoverable` ``plugin failed to load: …``."""
    package = private_module_name(manifest.name, sha256)
    forget_module(package)
    spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
    spec.submodule_search_locations = [str(root)]
    holder = importlib.util.module_from_spec(spec)
    sys.modules[package] = holder
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(f"{package}.{manifest.module}")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure fails the load
        forget_module(package)
        raise Unrecoverable(
            f"plugin failed to load: import of {manifest.module} failed: {type(exc).__name__}: {exc}"
        ) from None
    try:
        check_hooks(module, manifest.module)
    except Unrecoverable:
        forget_module(package)
        raise
    return module


def check_hooks(module: ModuleType, shown: str) -> None:
    known = set(hook_names())
    marked: list[str] = []
    for attr in dir(module):
        opts = getattr(getattr(module, attr, None), "aman_impl", None)
        if isinstance(opts, dict):
            marked.append(opts.get("specname") or attr)
    if not marked:
        raise Unrecoverable(
            f"plugin failed to load: module {shown} has no hook implementations"
            " (mark them with sdk.hookimpl)"
        )
    if unknown := sorted(set(marked) - known):
        raise Unrecoverable(f"plugin failed to load: unknown hook '{unknown[0]}'")


def forget_module(package: str) -> None:
    """Drop a private package and its submodules from ``sys.modules``."""
    for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
        del sys.modules[key]
