"""Install a plugin archive into a real ``aman serve`` over HTTP, call its route, restart, and
uninstall it (http-api §7, §24; contract D11, D12)."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

pytestmark = pytest.mark.server

MANIFEST = """name = "hello"
version = "{version}"
description = "Says hello"
module = "hello_plugin"
api = "1"
public_routes = ["GET /ping"]
"""
INIT = """from sdk import Route, hookimpl

from .greeting import VERSION


async def ping(ctx):
    return {"pong": VERSION}


@hookimpl
def register_routes(ctx):
    return [Route(method="GET", path="/ping", handler=ping)]
"""


def hello_archive(version: str) -> bytes:
    files = {
        "hello/plugin.toml": MANIFEST.format(version=version),
        "hello/hello_plugin/__init__.py": INIT,
        "hello/hello_plugin/greeting.py": f'VERSION = "{version}"\n',
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_install_call_upgrade_restart_uninstall(aman, tmp_path):
    runtime = tmp_path / "rt"
    server = aman(token="t", runtime_dir=runtime)
    data = hello_archive("0.1.0")
    with server.client() as c:
        resp = c.post(
            "/plugin/install",
            files={"plugin": ("hello-0.1.0.tar.gz", data, "application/gzip")},
            data={"sha256": hashlib.sha256(data).hexdigest()},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["install_dir"] == str(runtime / "plugins" / "hello" / "0.1.0")
    with server.client(auth=False) as anon:  # listed in public_routes
        assert anon.get("/api/v1/hello/ping").json() == {"pong": "0.1.0"}
    with server.client() as c:
        upgrade = hello_archive("0.2.0")
        resp = c.post(
            "/plugin/install", content=upgrade, headers={"content-type": "application/gzip"}
        )
        assert resp.json()["replaced_version"] == "0.1.0", resp.text
        assert c.get("/api/v1/hello/ping").json() == {"pong": "0.2.0"}
        assert not (runtime / "plugins" / "hello" / "0.1.0").exists()
    assert server.stop() == 0

    server = aman(token="t", runtime_dir=runtime)
    with server.client() as c:
        assert c.get("/api/v1/hello/ping").json() == {"pong": "0.2.0"}
        resp = c.post("/plugin/hello/uninstall")
        assert resp.json() == {"ok": True, "name": "hello", "version": "0.2.0", "purged": False}
        assert c.get("/api/v1/hello/ping").status_code == 404
        assert c.post("/plugin/hello/uninstall").status_code == 404
        assert not (runtime / "plugins" / "hello").exists()
    assert server.stop() == 0
