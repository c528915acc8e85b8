"""Installing plugin archives at run time (http-api §7, formats §5): a corpus of malicious and
broken archives, each refused with its status and message and nothing written outside the
staging area; the happy path, upgrades, uninstall and restarts."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat
import tarfile
import tomllib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdk import hookimpl
from sdk.testing import serve, wait_for

GZ = {"content-type": "application/gzip"}
CONFIRM = {"x-aman-confirm": "yes"}
TOKEN = "secret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}

MANIFEST = """name = "{name}"
version = "{version}"
description = "Says hello"
module = "hello_plugin"
api = "1"
public_routes = ["GET /ping"]

[ui]
pages = [{{ id = "hello", label = "Hello" }}]

[metadata]
author = "Jane Doe"
"""
INIT = """from sdk import Route, hookimpl

from . import routes


@hookimpl
def register_routes(ctx):
    return [
        Route(method="GET", path="/ping", handler=routes.ping),
        Route(method="GET", path="/secret", handler=routes.ping),
    ]
"""
ROUTES = """VERSION = "{version}"


async def ping(ctx):
    return {{"pong": VERSION, "plugin": ctx.name}}
"""


# --- building archives --------------------------------------------------------------------


def _info(name: str, *, kind: bytes = tarfile.REGTYPE, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, size, mode
    return info


def targz(build: Callable[[tarfile.TarFile], None], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
        build(tar)
    return buf.getvalue()


def add_file(tar: tarfile.TarFile, name: str, content: str | bytes, mode: int = 0o644) -> None:
    data = content.encode() if isinstance(content, str) else content
    tar.addfile(_info(name, size=len(data), mode=mode), io.BytesIO(data))


def plugin_files(
    name: str = "hello",
    version: str = "0.1.0",
    *,
    manifest: str | None = None,
    init: str = INIT,
    drop_manifest: bool = False,
) -> dict[str, str]:
    files = {
        "plugin.toml": manifest or MANIFEST.format(name=name, version=version),
        "hello_plugin/__init__.py": init,
        "hello_plugin/routes.py": ROUTES.format(version=version),
    }
    if drop_manifest:
        del files["plugin.toml"]
    return files


def archive(files: dict[str, str] | None = None, *, top: str | None = "hello", **kw: Any) -> bytes:
    files = files if files is not None else plugin_files(**kw)

    def build(tar: tarfile.TarFile) -> None:
        if top:
            tar.addfile(_info(top, kind=tarfile.DIRTYPE, mode=0o755))
        for path, content in files.items():
            add_file(tar, f"{top}/{path}" if top else path, content)

    return targz(build)


def with_members(*extra: Callable[[tarfile.TarFile], None], files: dict[str, str] | None = None) -> bytes:
    def build(tar: tarfile.TarFile) -> None:
        for path, content in (files or plugin_files()).items():
            add_file(tar, f"hello/{path}", content)
        for add in extra:
            add(tar)

    return targz(build)


def member(name: str, kind: bytes, **kw: Any) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = _info(name, kind=kind)
        for key, value in kw.items():
            setattr(info, key, value)
        tar.addfile(info)

    return add


def raw_gzip_tar(chunks: list[bytes]) -> bytes:
    """A gzip stream of raw tar bytes, compressed as they come (no full buffer)."""
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    return b"".join(comp.compress(c) for c in chunks) + comp.flush()


def pax_bomb(size: int) -> bytes:
    """An 'x' (pax) header declaring ``size`` bytes of zeros: tarfile reads it whole."""
    info = _info("././@PaxHeader", kind=tarfile.XHDTYPE, size=size)
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    zeros = b"\0" * (1 << 20)
    return raw_gzip_tar([header] + [zeros] * (size // len(zeros)))


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, dict[str, str]]:
    boundary = "----amanboundary1234"
    body = b""
    for field, filename, content in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            body += b"Content-Type: application/gzip\r\n"
        body += b"\r\n" + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


# --- fixtures -----------------------------------------------------------------------------


def tree(root: Path) -> list[tuple[str, int]]:
    """Every path under ``root`` with its mode (files also with their size)."""
    out = []
    for here, dirs, files in os.walk(root):
        for entry in sorted([*dirs, *files]):
            path = Path(here) / entry
            out.append((str(path.relative_to(root)), path.lstat().st_mode))
    return sorted(out)


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    return tmp_path / "runtime"


@pytest.fixture
def start(make_kernel, serve_kernel):
    async def go(**settings: Any) -> Any:
        kernel = make_kernel(settings={"http.token": TOKEN, **settings})
        client = await serve_kernel(kernel)
        client.kernel = kernel
        return client

    return go


async def install(client, data: bytes, **kw: Any) -> Any:
    headers = {**AUTH, **GZ, **kw.pop("headers", {})}
    return await client.post("/plugin/install", data=data, headers=headers, **kw)


async def plugin_info(client, name: str) -> dict[str, Any] | None:
    items = (await (await client.get("/plugins", headers=AUTH)).get_json())["items"]
    return next((p for p in items if p["name"] == name), None)


async def audits(client, action: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/audit-log?action={action}", headers=AUTH)
    return (await resp.get_json())["items"]


# --- the happy path -----------------------------------------------------------------------


async def test_install_serves_routes_lists_the_plugin_and_audits(start, runtime):
    client = await start()
    data = archive()
    resp = await install(client, data)
    body = await resp.get_json()
    assert resp.status_code == 200, body
    digest = hashlib.sha256(data).hexdigest()
    install_dir = runtime / "plugins" / "hello" / "0.1.0"
    assert body == {
        "plugin_name": "hello",
        "version": "0.1.0",
        "install_dir": str(install_dir),
        "state": "running",
        "replaced_version": None,
        "sha256": digest,
        "routes": [
            {"method": "GET", "path": "/api/v1/hello/ping", "public": True},
            {"method": "GET", "path": "/api/v1/hello/secret", "public": False},
        ],
    }
    # public_routes: /ping needs no token, /secret does
    ping = await client.get("/api/v1/hello/ping")
    assert (ping.status_code, await ping.get_json()) == (200, {"pong": "0.1.0", "plugin": "hello"})
    assert (await client.get("/api/v1/hello/secret")).status_code == 401
    assert (await client.get("/api/v1/hello/secret", headers=AUTH)).status_code == 200

    info = await plugin_info(client, "hello")
    assert info is not None
    assert {k: info[k] for k in ("source", "installed", "state", "enabled", "module", "version")} == {
        "source": "installed",
        "installed": True,
        "state": "running",
        "enabled": True,
        "module": "hello_plugin",
        "version": "0.1.0",
    }
    assert info["manifest_path"] == str(install_dir / "plugin.toml")
    assert info["install_dir"] == str(install_dir)
    assert info["sha256"] == digest and isinstance(info["installed_at_ms"], int)
    assert info["ui_pages"] == [{"id": "hello", "label": "Hello", "path": "ui/index.html"}]
    assert info["description"] == "Says hello"

    # files: plugin root contents only, our modes, no staging leftovers
    assert sorted(p for p, _ in tree(install_dir)) == [
        "hello_plugin",
        "hello_plugin/__init__.py",
        "hello_plugin/routes.py",
        "plugin.toml",
    ]
    for path, mode in tree(install_dir):
        assert stat.S_IMODE(mode) == (0o755 if stat.S_ISDIR(mode) else 0o644), path
    assert list((runtime / "plugins" / ".staging").iterdir()) == []
    assert (runtime / "plugin-data" / "hello").is_dir()

    [record] = await audits(client, "plugin.install")
    assert (record["target"], record["outcome"], record["detail"]) == (
        "plugin:hello",
        "ok",
        f"version=0.1.0 sha256={digest[:16]}",
    )


async def test_install_by_multipart_with_sha256_and_archive_at_the_root(start):
    client = await start()
    data = archive(top=None)
    digest = hashlib.sha256(data).hexdigest()
    body, headers = multipart(
        [("note", None, b"ignored"), ("sha256", None, digest.encode()), ("plugin", "x.bin", data)]
    )
    resp = await client.post("/plugin/install", data=body, headers={**AUTH, **headers})
    assert resp.status_code == 200, await resp.get_json()
    assert (await client.get("/api/v1/hello/ping")).status_code == 200


async def test_multipart_falls_back_to_the_first_tar_gz_file(start):
    client = await start()
    body, headers = multipart([("upload", "hello-0.1.0.tgz", archive())])
    resp = await client.post("/plugin/install", data=body, headers={**AUTH, **headers})
    assert resp.status_code == 200, await resp.get_json()


async def test_executable_bit_and_dot_slash_names(start, runtime):
    client = await start()

    def build(tar: tarfile.TarFile) -> None:
        for path, content in plugin_files().items():
            add_file(tar, f"./hello/{path}", content)
        add_file(tar, "./hello/bin/run.sh", "#!/bin/sh\n", mode=0o4777)

    assert (await install(client, targz(build))).status_code == 200
    mode = (runtime / "plugins/hello/0.1.0/bin/run.sh").stat().st_mode
    assert stat.S_IMODE(mode) == 0o755


# --- refusals -----------------------------------------------------------------------------

ARCHIVE = "invalid plugin archive: "
MANIFEST_ERR = "invalid plugin manifest: "
LAYOUT = MANIFEST_ERR + "plugin.toml must be at the archive root or in its single top-level folder"


def _kind_msg(name: str, kind: str) -> str:
    return f"{ARCHIVE}member '{name}' is a {kind}; only regular files and directories are allowed"


def _two_manifests() -> bytes:
    def build(tar: tarfile.TarFile) -> None:
        for top in ("a", "b"):
            for path, content in plugin_files().items():
                add_file(tar, f"{top}/{path}", content)

    return targz(build)


def _link_then_file() -> bytes:
    def build(tar: tarfile.TarFile) -> None:
        info = _info("hello/escape", kind=tarfile.SYMTYPE)
        info.linkname = "/tmp"
        tar.addfile(info)
        add_file(tar, "hello/escape/owned.txt", "x")
        for path, content in plugin_files().items():
            add_file(tar, f"hello/{path}", content)

    return targz(build)


def _many(n: int) -> bytes:
    files = plugin_files()
    files.update({f"data/{i}.txt": "x" for i in range(n)})
    return archive(files)


BROKEN_MODULE = "raise RuntimeError('boom')\n"
MISSPELT = "from sdk import hookimpl\n\n@hookimpl\ndef register_route(ctx):\n    return []\n"
NO_HOOKS = "def register_routes(ctx):\n    return []\n"
CLASH = """from sdk import Route, hookimpl


async def ping(ctx):
    return {}


@hookimpl
def register_routes(ctx):
    return [Route(method="GET", path="/ping", handler=ping), Route(method="GET", path="/ping", handler=ping)]
"""


def one_route(method: str, path: str) -> str:
    return CLASH.replace(
        'return [Route(method="GET", path="/ping", handler=ping), Route(method="GET", path="/ping", handler=ping)]',
        f"return [Route(method={method!r}, path={path!r}, handler=ping)]",
    )


STARTUP_FAILS = INIT + "\n\n@hookimpl\ndef on_startup(ctx):\n    raise RuntimeError('nope')\n"
UNHEALTHY = INIT + "\n\n@hookimpl\ndef health_check(ctx):\n    return {'status': 'error', 'detail': 'db down'}\n"


def _manifest(prepend: str) -> str:
    return prepend + MANIFEST.format(name="hello", version="0.1.0")


CASES: list[tuple[str, Callable[[], bytes], dict[str, Any], int, str]] = [
    ("not gzip", lambda: b"PK\x03\x04 a zip file", {}, 400, ARCHIVE + "not a gzip-compressed tar archive"),
    ("gzip, not tar", lambda: raw_gzip_tar([b"hello world" * 100]), {}, 400, ARCHIVE + "corrupt archive: "),
    ("truncated gzip", lambda: archive()[:-40], {}, 400, ARCHIVE + "corrupt archive: "),
    ("path traversal", lambda: with_members(lambda t: add_file(t, "hello/../x", "x")), {}, 400, ARCHIVE + "unsafe member name 'hello/../x'"),
    ("leading dotdot", lambda: with_members(lambda t: add_file(t, "../x", "x")), {}, 400, ARCHIVE + "unsafe member name '../x'"),
    ("absolute path", lambda: with_members(lambda t: add_file(t, "/etc/x", "x")), {}, 400, ARCHIVE + "unsafe member name '/etc/x'"),
    ("drive prefix", lambda: with_members(lambda t: add_file(t, "C:x", "x")), {}, 400, ARCHIVE + "unsafe member name 'C:x'"),
    ("backslash", lambda: with_members(lambda t: add_file(t, "hello\\..\\x", "x")), {}, 400, ARCHIVE + "unsafe member name 'hello\\..\\x'"),
    ("empty component", lambda: with_members(lambda t: add_file(t, "hello//x", "x")), {}, 400, ARCHIVE + "unsafe member name 'hello//x'"),
    ("control character", lambda: with_members(lambda t: add_file(t, "hello/a\x1bb", "x")), {}, 400, ARCHIVE + "unsafe member name 'hello/a\x1bb'"),
    ("name too long", lambda: with_members(lambda t: add_file(t, "hello/" + "a" * 256, "x")), {}, 400, ARCHIVE + f"member name too long: 'hello/{'a' * 256}'"),
    ("symlink", lambda: with_members(member("hello/link", tarfile.SYMTYPE, linkname="/etc/passwd")), {}, 400, _kind_msg("hello/link", "symbolic link")),
    ("hardlink", lambda: with_members(member("hello/hard", tarfile.LNKTYPE, linkname="hello/plugin.toml")), {}, 400, _kind_msg("hello/hard", "hard link")),
    ("link then a file through it", _link_then_file, {}, 400, _kind_msg("hello/escape", "symbolic link")),
    ("char device", lambda: with_members(member("hello/tty", tarfile.CHRTYPE, devmajor=5, devminor=0)), {}, 400, _kind_msg("hello/tty", "character device")),
    ("block device", lambda: with_members(member("hello/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)), {}, 400, _kind_msg("hello/sda", "block device")),
    ("fifo", lambda: with_members(member("hello/pipe", tarfile.FIFOTYPE)), {}, 400, _kind_msg("hello/pipe", "FIFO")),
    ("contiguous file", lambda: with_members(member("hello/c", tarfile.CONTTYPE)), {}, 400, _kind_msg("hello/c", "contiguous file")),
    ("duplicate after case folding", lambda: with_members(lambda t: add_file(t, "hello/A.txt", "1"), lambda t: add_file(t, "hello/a.txt", "2")), {}, 400, ARCHIVE + "duplicate member 'hello/a.txt'"),
    ("file and directory of one name", lambda: with_members(lambda t: add_file(t, "hello/d", "1"), member("hello/d", tarfile.DIRTYPE)), {}, 400, ARCHIVE + "duplicate member 'hello/d'"),
    ("too many members", lambda: _many(10), {"plugins.max_members": 8}, 400, ARCHIVE + "too many members (limit 8)"),
    ("member too large", lambda: with_members(lambda t: add_file(t, "hello/big.bin", b"\0" * 5000)), {"plugins.max_member_bytes": 4096}, 400, ARCHIVE + "member 'hello/big.bin' is too large (limit 4096 bytes)"),
    ("gzip bomb, one member", lambda: with_members(lambda t: add_file(t, "hello/zeros", b"\0" * (20 << 20))), {}, 400, ARCHIVE + f"member 'hello/zeros' is too large (limit {16 << 20} bytes)"),
    ("gzip bomb, many members", lambda: with_members(*[lambda t, i=i: add_file(t, f"hello/z{i}", b"\0" * (600 << 10)) for i in range(4)]), {"plugins.max_member_bytes": 1 << 20, "plugins.max_unpacked_bytes": 2 << 20}, 400, ARCHIVE + f"archive unpacks to more than {2 << 20} bytes"),
    ("gzip bomb in a pax header", lambda: pax_bomb(64 << 20), {"plugins.max_member_bytes": 1 << 20, "plugins.max_unpacked_bytes": 2 << 20}, 400, ARCHIVE + f"archive unpacks to more than {2 << 20} bytes"),
    ("no manifest", lambda: archive(plugin_files(drop_manifest=True)), {}, 400, LAYOUT),
    ("two manifests", _two_manifests, {}, 400, LAYOUT),
    ("manifest below the top folder", lambda: archive({f"sub/{k}": v for k, v in plugin_files().items()}), {}, 400, LAYOUT),
    ("bad TOML", lambda: archive(plugin_files(manifest='name = "hello\n')), {}, 400, MANIFEST_ERR + "invalid TOML: "),
    ("TOML nested too deeply", lambda: archive(plugin_files(manifest=_manifest("x = " + "[" * 5000 + "]" * 5000 + "\n"))), {}, 400, MANIFEST_ERR + "invalid TOML: nested too deeply"),
    ("manifest not UTF-8", lambda: _bad_utf8(), {}, 400, MANIFEST_ERR + "plugin.toml is not valid UTF-8"),
    ("unknown key", lambda: archive(plugin_files(manifest=_manifest('colour = "red"\n'))), {}, 400, MANIFEST_ERR + "unknown key 'colour'"),
    ("unknown ui key", lambda: archive(plugin_files(manifest=MANIFEST.format(name="hello", version="0.1.0").replace("[ui]\n", "[ui]\ntheme = 1\n"))), {}, 400, MANIFEST_ERR + "unknown key 'theme'"),
    ("bad name", lambda: archive(name="Hello_World"), {}, 400, MANIFEST_ERR + "invalid name 'Hello_World'"),
    ("bad version", lambda: archive(version="1.0"), {}, 400, MANIFEST_ERR + "invalid version '1.0'"),
    ("a name with a final newline", lambda: archive(name="hello\\n"), {}, 400, MANIFEST_ERR + "invalid name 'hello\n'"),
    ("a version with a final newline", lambda: archive(version="0.1.0\\n"), {}, 400, MANIFEST_ERR + "invalid version '0.1.0\n'"),
    ("a version too long for a folder", lambda: archive(version="1.0.0-" + "a" * 300), {}, 400, MANIFEST_ERR + "invalid version '1.0.0-aaa"),
    ("module not in archive", lambda: archive(plugin_files(manifest=MANIFEST.format(name="hello", version="0.1.0").replace('"hello_plugin"', '"other"'))), {}, 400, MANIFEST_ERR + "module 'other' not found in the archive"),
    ("bad public_routes entry", lambda: archive(plugin_files(manifest=MANIFEST.format(name="hello", version="0.1.0").replace('"GET /ping"', '"FETCH ping"'))), {}, 400, MANIFEST_ERR + "invalid public_routes entry 'FETCH ping'"),
    ("built-in name", lambda: archive(name="cron"), {}, 409, "plugin name is reserved by a built-in plugin: cron"),
    ("unknown API version", lambda: archive(plugin_files(manifest=MANIFEST.format(name="hello", version="0.1.0").replace('api = "1"', 'api = "2"'))), {}, 422, "unsupported plugin API version '2' (supported: 1)"),
    ("module fails to import", lambda: archive(plugin_files(init=BROKEN_MODULE)), {}, 422, "plugin failed to load: import of hello_plugin failed: RuntimeError: boom"),
    ("misspelt hook", lambda: archive(plugin_files(init=MISSPELT)), {}, 422, "plugin failed to load: unknown hook 'register_route'"),
    ("no hookimpl", lambda: archive(plugin_files(init=NO_HOOKS)), {}, 422, "plugin failed to load: module hello_plugin has no hook implementations (mark them with sdk.hookimpl)"),
    ("a path in another plugin's space", lambda: archive(plugin_files(init=one_route("GET", "b/ping"))), {}, 422, "plugin failed to load: ValueError: plugin hello: invalid route path 'b/ping' (it starts with '/'; its segments are literals, {param} or a final {*rest})"),
    ("a werkzeug converter in a path", lambda: archive(plugin_files(init=one_route("GET", "/<path:x>"))), {}, 422, "plugin failed to load: ValueError: plugin hello: invalid route path '/<path:x>'"),
    ("a method outside the five", lambda: archive(plugin_files(init=one_route("BREW", "/pot"))), {}, 422, "plugin failed to load: ValueError: plugin hello: route method 'BREW' is not one of GET, POST, PUT, PATCH, DELETE"),
    ("route clash", lambda: archive(plugin_files(init=CLASH)), {}, 422, "plugin failed to load: ValueError: plugin hello registers GET /ping twice"),
    ("public route matches nothing", lambda: archive(plugin_files(manifest=MANIFEST.format(name="hello", version="0.1.0").replace('"GET /ping"', '"GET /pong"'))), {}, 422, "plugin failed to load: public_routes entry 'GET /pong' matches no route"),
    ("on_startup fails", lambda: archive(plugin_files(init=STARTUP_FAILS)), {}, 422, "plugin failed to load: RuntimeError: nope"),
    ("health error", lambda: archive(plugin_files(init=UNHEALTHY)), {}, 422, "plugin failed to load: health check failed: db down"),
]


def _bad_utf8() -> bytes:
    def build(tar: tarfile.TarFile) -> None:
        add_file(tar, "hello/plugin.toml", b'name = "h\xff"\n')
        add_file(tar, "hello/hello_plugin/__init__.py", INIT)

    return targz(build)


@pytest.fixture
async def with_keeper(start):
    """A runtime with a plugin ``keep`` installed and serving."""

    async def go(**settings: Any) -> Any:
        client = await start(**settings)
        keep = archive(name="keep")
        resp = await install(client, keep)
        assert resp.status_code == 200, await resp.get_json()
        return client

    return go


@pytest.mark.parametrize(
    ("data", "settings", "status", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_bad_archives_are_refused_and_leave_nothing_behind(
    with_keeper, runtime, data, settings, status, message
):
    client = await with_keeper(**settings)
    plugins = runtime / "plugins"
    before = tree(plugins)
    data_before = tree(runtime / "plugin-data")
    resp = await install(client, data())
    body = await resp.get_json()
    assert resp.status_code == status, body
    assert body["error"].startswith(message), body
    assert tree(plugins) == before  # nothing new on disk, staging emptied
    assert tree(runtime / "plugin-data") == data_before
    assert await plugin_info(client, "hello") is None or status == 409
    # the runtime keeps serving and the plugin installed before stays intact
    ping = await client.get("/api/v1/keep/ping")
    assert (ping.status_code, (await ping.get_json())["plugin"]) == (200, "keep")
    assert (await client.get("/api/v1/hello/ping")).status_code == 404
    assert (await client.get("/health")).status_code == 200
    [_, record] = await audits(client, "plugin.install")  # newest first
    assert record["outcome"] == "ok"
    newest = (await audits(client, "plugin.install"))[0]
    assert newest["outcome"] == "error" and newest["detail"] == body["error"]


async def test_missing_requirements_are_listed(start):
    client = await start()
    manifest = MANIFEST.format(name="hello", version="0.1.0").replace(
        'api = "1"',
        'api = "1"\nrequires = ["surely-not-installed-dist>=1", "pluggy>=999", '
        '"also-missing; python_version < \'3\'"]',
    )
    resp = await install(client, archive(plugin_files(manifest=manifest)))
    body = await resp.get_json()
    import pluggy

    found = pluggy.__version__
    assert resp.status_code == 422
    assert body == {
        "error": "missing requirements: surely-not-installed-dist>=1 (not installed), "
        f"pluggy>=999 (found {found})",
        "missing": [
            {"requirement": "surely-not-installed-dist>=1", "found": None},
            {"requirement": "pluggy>=999", "found": found},
        ],
    }


async def test_upload_refusals(start):
    client = await start(**{"plugins.max_archive_bytes": 2048})
    data = archive()
    resp = await install(client, data, headers={"content-type": "text/plain"})
    assert (resp.status_code, await resp.get_json()) == (
        415,
        {"error": "unsupported content type; expected multipart/form-data or application/gzip"},
    )
    body, headers = multipart([("other", None, b"x"), ("file", "notes.txt", b"x")])
    resp = await client.post("/plugin/install", data=body, headers={**AUTH, **headers})
    assert (resp.status_code, await resp.get_json()) == (
        400,
        {"error": "multipart must contain a 'plugin' file field"},
    )
    resp = await install(client, b"\x1f\x8b" + b"\0" * 4000)
    assert (resp.status_code, await resp.get_json()) == (
        413,
        {"error": "request body too large (limit 2048 bytes)"},
    )
    wrong = "0" * 64
    resp = await install(client, data, query_string={"sha256": wrong})
    assert (resp.status_code, await resp.get_json()) == (
        400,
        {"error": f"archive sha256 mismatch: expected {wrong}, got {hashlib.sha256(data).hexdigest()}"},
    )
    # the manifest was never read: the audit target is "plugin"
    assert (await audits(client, "plugin.install"))[0]["target"] == "plugin"
    assert (await client.post("/plugin/install", data=data, headers=GZ)).status_code == 401


async def test_one_plugin_operation_at_a_time(start):
    client = await start()
    lock = client.kernel.plugins._lock
    async with lock:
        resp = await install(client, archive())
    assert (resp.status_code, await resp.get_json()) == (
        409,
        {"error": "another plugin operation is in progress"},
    )


# --- upgrades -----------------------------------------------------------------------------


async def test_upgrade_switches_routes_and_deletes_the_old_version(start, runtime):
    client = await start()
    assert (await install(client, archive(version="0.1.0"))).status_code == 200
    old_dir = runtime / "plugins/hello/0.1.0"
    assert old_dir.is_dir()
    resp = await install(client, archive(version="0.2.0"))
    body = await resp.get_json()
    assert resp.status_code == 200, body
    assert (body["version"], body["replaced_version"]) == ("0.2.0", "0.1.0")
    assert (await (await client.get("/api/v1/hello/ping")).get_json())["pong"] == "0.2.0"
    assert not old_dir.exists()
    assert sorted(p.name for p in (runtime / "plugins/hello").iterdir()) == ["0.2.0"]
    info = await plugin_info(client, "hello")
    assert (info["version"], info["state"]) == ("0.2.0", "running")
    assert (await audits(client, "plugin.install"))[0]["detail"].endswith(" replaced=0.1.0")
    # a downgrade is an upgrade too
    assert (await install(client, archive(version="0.0.9"))).status_code == 200
    assert (await (await client.get("/api/v1/hello/ping")).get_json())["pong"] == "0.0.9"


async def test_same_version_is_refused(start):
    client = await start()
    assert (await install(client, archive())).status_code == 200
    resp = await install(client, archive())
    assert (resp.status_code, await resp.get_json()) == (
        409,
        {"error": "plugin hello 0.1.0 is already installed"},
    )


@pytest.mark.parametrize("broken", [STARTUP_FAILS, BROKEN_MODULE, UNHEALTHY])
async def test_a_failed_upgrade_leaves_the_old_version_running(start, runtime, broken):
    client = await start()
    assert (await install(client, archive(version="0.1.0"))).status_code == 200
    before = tree(runtime / "plugins")
    bad = archive(plugin_files(version="0.2.0", init=broken))
    resp = await install(client, bad)
    assert resp.status_code == 422, await resp.get_json()
    assert tree(runtime / "plugins") == before
    ping = await client.get("/api/v1/hello/ping")
    assert (ping.status_code, (await ping.get_json())["pong"]) == (200, "0.1.0")
    info = await plugin_info(client, "hello")
    assert (info["version"], info["state"], info["error"]) == ("0.1.0", "running", None)
    # and a good upgrade still works afterwards
    assert (await install(client, archive(version="0.2.0"))).status_code == 200


async def test_upgrade_of_a_disabled_plugin_runs_the_new_version(start):
    client = await start()
    await install(client, archive(version="0.1.0"))
    await client.post("/plugin/hello/disable", headers={**AUTH, **CONFIRM})
    assert (await client.get("/api/v1/hello/ping")).status_code == 404
    assert (await install(client, archive(version="0.2.0"))).status_code == 200
    assert (await (await client.get("/api/v1/hello/ping")).get_json())["pong"] == "0.2.0"


# --- uninstall ----------------------------------------------------------------------------


async def test_uninstall_removes_routes_files_and_registry_row(start, runtime):
    client = await start()
    await install(client, archive())
    data_dir = runtime / "plugin-data/hello"
    assert data_dir.is_dir()
    resp = await client.post("/plugin/hello/uninstall", headers=AUTH)
    assert (resp.status_code, await resp.get_json()) == (
        200,
        {"ok": True, "name": "hello", "version": "0.1.0", "purged": False},
    )
    assert (await client.get("/api/v1/hello/ping")).status_code == 404
    assert not (runtime / "plugins/hello").exists()
    assert data_dir.is_dir()  # kept without ?purge
    assert await plugin_info(client, "hello") is None
    rows = await client.kernel.store.fetchall("SELECT name FROM plugin_registry")
    assert rows == []
    [record] = await audits(client, "plugin.uninstall")
    assert (record["target"], record["detail"]) == ("plugin:hello", "0.1.0")
    resp = await client.post("/plugin/hello/uninstall", headers=AUTH)
    assert (resp.status_code, await resp.get_json()) == (404, {"error": "plugin not found: hello"})
    # installable again, and purge deletes the data directory
    assert (await install(client, archive())).status_code == 200
    resp = await client.post("/plugin/hello/uninstall?purge=true", headers=AUTH)
    assert (await resp.get_json())["purged"] is True
    assert not data_dir.exists()


class PipPlugin:
    name = "pip-plugin"

    @hookimpl
    def register_routes(self):
        return []


async def test_builtins_and_pip_plugins_cannot_be_uninstalled(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(PipPlugin()))
    resp = await client.post("/plugin/cron/uninstall")
    assert (resp.status_code, await resp.get_json()) == (
        409,
        {"error": "built-in plugin cannot be uninstalled: cron"},
    )
    resp = await client.post("/plugin/pip-plugin/uninstall")
    assert (resp.status_code, await resp.get_json()) == (
        409,
        {"error": "plugin pip-plugin was installed with pip; uninstall it with pip"},
    )
    resp = await client.post(
        "/plugin/install", data=archive(name="pip-plugin"), headers=GZ
    )
    assert resp.status_code == 409


# --- restarts -----------------------------------------------------------------------------


async def test_restart_keeps_installed_plugins_and_their_enabled_flag(make_kernel, runtime):
    kernel = make_kernel()
    gen = serve(kernel)
    client = await gen.__anext__()
    assert (await client.post("/plugin/install", data=archive(name="one"), headers=GZ)).status_code == 200
    assert (await client.post("/plugin/install", data=archive(name="two"), headers=GZ)).status_code == 200
    assert (await client.post("/plugin/two/disable", headers=CONFIRM)).status_code == 200
    await gen.aclose()

    # leftovers of an interrupted install: a staging dir and an unregistered version dir
    (runtime / "plugins/.staging/abc/x").mkdir(parents=True)
    (runtime / "plugins/one/9.9.9").mkdir()

    kernel = make_kernel()
    gen = serve(kernel)
    client = await gen.__anext__()
    try:
        one, two = await plugin_info(client, "one"), await plugin_info(client, "two")
        assert (one["state"], one["enabled"], one["source"]) == ("running", True, "installed")
        assert (two["state"], two["enabled"]) == ("disabled", False)
        assert (await client.get("/api/v1/one/ping")).status_code == 200
        assert (await client.get("/api/v1/two/ping")).status_code == 404
        assert list((runtime / "plugins/.staging").iterdir()) == []
        assert sorted(p.name for p in (runtime / "plugins/one").iterdir()) == ["0.1.0"]
        assert (await client.post("/plugin/two/enable")).status_code == 200
        assert (await client.get("/api/v1/two/ping")).status_code == 200
    finally:
        await gen.aclose()


async def test_a_damaged_installed_plugin_fails_alone_at_start_up(make_kernel, runtime):
    kernel = make_kernel()
    gen = serve(kernel)
    client = await gen.__anext__()
    await client.post("/plugin/install", data=archive(name="one"), headers=GZ)
    await client.post("/plugin/install", data=archive(name="two"), headers=GZ)
    await gen.aclose()
    (runtime / "plugins/one/0.1.0/plugin.toml").write_text("not = [toml")

    kernel = make_kernel()
    gen = serve(kernel)
    client = await gen.__anext__()
    try:
        one = await plugin_info(client, "one")
        assert one["state"] == "failed" and one["error"].startswith("invalid plugin manifest: ")
        assert one["manifest_path"].endswith("one/0.1.0/plugin.toml")
        assert (await client.get("/api/v1/two/ping")).status_code == 200
        resp = await client.get("/audit-log?action=plugin.load")
        [record] = (await resp.get_json())["items"]
        assert (record["target"], record["outcome"]) == ("plugin:one", "failed")
        resp = await client.post("/plugin/one/enable")
        assert resp.status_code == 422
        assert (await client.post("/plugin/one/uninstall")).status_code == 200
        assert not (runtime / "plugins/one").exists()
    finally:
        await gen.aclose()


@pytest.mark.parametrize(
    "bomb",
    [
        lambda: pax_bomb(64 << 20),
        lambda: with_members(*[lambda t, i=i: add_file(t, f"hello/z{i}", b"\0" * (900 << 10)) for i in range(6)]),
    ],
    ids=["pax header", "many members"],
)
def test_a_gzip_bomb_is_stopped_within_the_unpacked_limit(monkeypatch, bomb):
    """At most ``plugins.max_unpacked_bytes`` of decompressed output is ever read."""
    import gzip

    from kernel import installer

    data = bomb()
    read = 0
    original = gzip.GzipFile.read

    def counting(self, size=-1):
        nonlocal read
        out = original(self, size)
        read += len(out)
        return out

    monkeypatch.setattr(gzip.GzipFile, "read", counting)
    limits = installer.Limits(max_members=100, max_member_bytes=1 << 20, max_unpacked_bytes=2 << 20)
    with pytest.raises(Exception, match="archive unpacks to more than 2097152 bytes"):
        installer.scan(data, limits)
    assert read <= (2 << 20) + 1


CONFIGURED_INIT = INIT + '''

from sdk import ConfigKey


@hookimpl
def register_config(ctx):
    return [ConfigKey(name="hello.level", type=int, default=1, maximum=9)]
'''


async def test_an_installed_plugins_config_key_survives_a_restart_and_leaves_with_it(make_kernel, tmp_path):
    config = tmp_path / "aman.toml"
    config.write_text("# the operator's file\n")

    async def started() -> tuple[Any, Any]:
        kernel = make_kernel(config_path=config)  # the file is validated here, before phase 2
        gen = serve(kernel)
        return kernel, (gen, await gen.__anext__())

    kernel, (gen, client) = await started()
    hello = archive(plugin_files(init=CONFIGURED_INIT))
    assert (await client.post("/plugin/install", data=hello, headers=GZ)).status_code == 200
    resp = await client.post("/config/set", json={"changes": {"hello.level": 7}}, headers=CONFIRM)
    assert resp.status_code == 200, await resp.get_json()
    await gen.aclose()
    assert tomllib.loads(config.read_text()) == {"hello": {"level": 7}}

    kernel, (gen, client) = await started()  # refused with "unknown key 'hello.level'" before
    assert kernel.config.get("hello.level") == 7
    assert (await plugin_info(client, "hello"))["state"] == "running"
    assert (await client.post("/plugin/hello/uninstall", headers=CONFIRM)).status_code == 200
    assert tomllib.loads(config.read_text()) == {}  # its key went with it
    await gen.aclose()

    kernel, (gen, client) = await started()
    assert (await client.get("/health/ready")).status_code == 200
    await gen.aclose()


def slow_start_init(marks: Path) -> str:
    return INIT + f'''

import asyncio
from pathlib import Path


@hookimpl
async def on_startup(ctx):
    Path({str(marks / "starting")!r}).touch()
    while not Path({str(marks / "go")!r}).exists():
        await asyncio.sleep(0.01)
'''


async def test_a_plugin_serves_its_routes_only_once_started(start, tmp_path):
    client = await start()
    marks = tmp_path / "marks"
    marks.mkdir()
    installing = asyncio.ensure_future(install(client, archive(plugin_files(init=slow_start_init(marks)))))
    await wait_for(lambda: (marks / "starting").exists(), timeout=10)
    assert (await client.get("/api/v1/hello/ping")).status_code == 404  # its on_startup still runs
    (marks / "go").touch()
    assert (await installing).status_code == 200
    assert (await client.get("/api/v1/hello/ping")).status_code == 200



def fails_to_start_when(flag: Path) -> str:
    return INIT + f'''

from pathlib import Path


@hookimpl
def on_startup(ctx):
    with open({str(flag.parent / "starts")!r}, "a") as out:
        out.write("x")
    if Path({str(flag)!r}).exists():
        raise RuntimeError("no database")
'''


async def test_a_failed_plugin_that_is_disabled_stays_off_after_a_restart(make_kernel, tmp_path):
    flag = tmp_path / "broken"

    async def started() -> tuple[Any, Any]:
        gen = serve(make_kernel())
        return gen, await gen.__anext__()

    gen, client = await started()
    assert (await client.post("/plugin/install", data=archive(plugin_files(init=fails_to_start_when(flag))), headers=GZ)).status_code == 200
    await gen.aclose()
    flag.touch()
    gen, client = await started()
    assert (await plugin_info(client, "hello"))["state"] == "failed"
    resp = await client.post("/plugin/hello/disable", headers=CONFIRM)
    assert (await resp.get_json())["changed"] is False  # http-api §7: it was not running
    assert (await plugin_info(client, "hello"))["enabled"] is False
    await gen.aclose()
    starts = (tmp_path / "starts").read_text()

    gen, client = await started()
    info = await plugin_info(client, "hello")
    assert (info["state"], info["enabled"]) == ("disabled", False)
    assert (tmp_path / "starts").read_text() == starts  # not tried again
    await gen.aclose()
