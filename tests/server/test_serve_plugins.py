"""A third-party plugin found through the ``aman.plugins`` entry point, disabled and enabled live
over HTTP (contract D11, D12; http-api §7)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.server

CONFIRM = {"x-aman-confirm": "yes"}

HELLO = """
import asyncio
from pathlib import Path

from sdk import Route, hookimpl


@hookimpl
def register_routes(ctx):
    return [
        Route(method="GET", path="/ping", handler=ping),
        Route(method="GET", path="/slow", handler=slow),
    ]


async def ping(ctx):
    return {"pong": ctx.name}


async def slow(ctx):
    Path("slow.started").touch()  # in the server's cwd: tells the test the handler is running
    await asyncio.sleep(0.5)
    return {"slow": "done"}
"""


@pytest.fixture
def hello(tmp_path: Path, entry_point_plugin) -> Path:
    """``hello_srv`` registered as entry point ``hello``; the directory to put on PYTHONPATH."""
    entry_point_plugin(tmp_path, "hello_srv", "hello", HELLO)
    return tmp_path


def plugin(client: httpx.Client, name: str) -> dict:
    items = client.get("/plugins").json()["items"]
    return next(p for p in items if p["name"] == name)


def test_entry_point_plugin_disable_enable_live(aman, hello: Path) -> None:
    server = aman(token="t", pythonpath=hello)
    with server.client(headers={"x-aman-operator": "bob"}) as c:
        info = plugin(c, "hello")
        assert info["source"] == "entry_point"
        assert info["version"] == "0.1.0"
        assert info["builtin"] is False and info["essential"] is False
        assert info["state"] == "running" and info["enabled"] is True and info["loaded"] is True
        assert info["routes"] == [
            {"method": "GET", "path": "/api/v1/hello/ping", "public": False},
            {"method": "GET", "path": "/api/v1/hello/slow", "public": False},
        ]

        r = c.get("/api/v1/hello/ping")
        assert r.status_code == 200
        assert r.json() == {"pong": "hello"}
        # Plugin routes need the token unless the plugin lists them as public (D12).
        with server.client(auth=False) as anon:
            r = anon.get("/api/v1/hello/ping")
            assert r.status_code == 401
            assert r.json() == {"error": "missing or invalid API token"}

        # Disable needs the confirmation header.
        r = c.post("/plugin/hello/disable")
        assert r.status_code == 409
        assert r.json() == {"error": "confirmation required"}
        assert c.get("/api/v1/hello/ping").status_code == 200

        r = c.post("/plugin/hello/disable", headers=CONFIRM)
        assert r.status_code == 200
        assert r.json() == {"ok": True, "name": "hello", "state": "disabled", "changed": True}
        r = c.get("/api/v1/hello/ping")  # gone at once, no restart
        assert r.status_code == 404
        assert r.json() == {"error": "not found"}
        info = plugin(c, "hello")
        assert info["state"] == "disabled" and info["enabled"] is False and info["loaded"] is False

        r = c.post("/plugin/hello/disable", headers=CONFIRM)  # idempotent
        assert r.json() == {"ok": True, "name": "hello", "state": "disabled", "changed": False}

        r = c.post("/plugin/hello/enable")  # no confirmation needed
        assert r.status_code == 200
        assert r.json() == {"ok": True, "name": "hello", "state": "running", "changed": True}
        r = c.get("/api/v1/hello/ping")
        assert r.status_code == 200
        assert r.json() == {"pong": "hello"}
        assert plugin(c, "hello")["state"] == "running"
        r = c.post("/plugin/hello/enable")
        assert r.json() == {"ok": True, "name": "hello", "state": "running", "changed": False}

        # Essential built-ins cannot be disabled; unknown plugins are 404.
        r = c.post("/plugin/audit/disable", headers=CONFIRM)
        assert r.status_code == 409
        assert r.json() == {"error": "plugin audit is essential and cannot be disabled"}
        assert c.get("/audit-log").status_code == 200
        r = c.post("/plugin/nope/disable", headers=CONFIRM)
        assert r.status_code == 404
        assert r.json() == {"error": "plugin not found: nope"}

        audit = c.get("/audit-log", params={"action": "plugin.*"}).json()["items"]
        assert [
            (i["action"], i["target"], i["outcome"], i["operator"]) for i in reversed(audit)
        ] == [
            ("plugin.disable", "plugin:hello", "confirm_required", "bob"),
            ("plugin.disable", "plugin:hello", "ok", "bob"),
            ("plugin.disable", "plugin:hello", "ok", "bob"),
            ("plugin.enable", "plugin:hello", "ok", "bob"),
            ("plugin.enable", "plugin:hello", "ok", "bob"),
            ("plugin.disable", "plugin:audit", "error", "bob"),
            ("plugin.disable", "plugin:nope", "error", "bob"),
        ]

        # Disabled once more, for the restart.
        assert c.post("/plugin/hello/disable", headers=CONFIRM).status_code == 200
    assert server.stop() == 0

    again = aman(token="t", pythonpath=hello)
    with again.client() as c:
        assert c.get("/api/v1/hello/ping").status_code == 404  # the disabled state survived
        info = plugin(c, "hello")
        assert info["state"] == "disabled" and info["enabled"] is False
        r = c.post("/plugin/hello/enable")
        assert r.json()["changed"] is True
        assert c.get("/api/v1/hello/ping").json() == {"pong": "hello"}
    assert again.stop() == 0

    # ... and so does the enabled state.
    third = aman(token="t", pythonpath=hello)
    with third.client() as c:
        assert c.get("/api/v1/hello/ping").status_code == 200
        assert plugin(c, "hello")["state"] == "running"
    assert third.stop(signal.SIGINT) == 0  # SIGINT stops like SIGTERM
    assert "runtime stopped" in third.stderr


def test_sigterm_lets_a_running_request_finish(aman, hello: Path) -> None:
    server = aman(pythonpath=hello)
    marker = server.cwd / "slow.started"
    result: dict[str, object] = {}

    def call() -> None:
        with server.client() as c:
            try:
                r = c.get("/api/v1/hello/slow")
                result["status"], result["body"] = r.status_code, r.json()
            except httpx.HTTPError as exc:  # pragma: no cover - reported by the assertion
                result["error"] = repr(exc)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:  # the handler is running
        time.sleep(0.01)
    assert marker.exists()
    assert server.stop(signal.SIGTERM) == 0
    worker.join(10)
    assert result == {"status": 200, "body": {"slow": "done"}}
