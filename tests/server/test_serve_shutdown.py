"""Graceful stop of a real server: SIGTERM and ``POST /agent/shutdown`` (http-api §3, D18)."""

from __future__ import annotations

import signal

import httpx
import pytest

pytestmark = pytest.mark.server


def test_sigterm_drains_and_exits_0(aman) -> None:
    server = aman()
    with server.client() as c:
        assert c.get("/health/live").status_code == 200
    assert server.stop(signal.SIGTERM) == 0
    log = server.stderr
    assert "signal received" in log
    assert "runtime stopped" in log  # the drain ran to the end (storage closed)
    assert log.index("signal received") < log.index("runtime stopped")
    assert not server.is_listening()
    with pytest.raises(httpx.TransportError), server.client() as c:
        c.get("/health/live")


def test_agent_shutdown_needs_confirmation_then_stops_the_process(aman) -> None:
    server = aman(token="t")
    with server.client(headers={"x-aman-operator": "alice"}) as c:
        for value in (None, "no", "true", "1"):
            headers = {} if value is None else {"x-aman-confirm": value}
            r = c.post("/agent/shutdown", headers=headers)
            assert r.status_code == 409, value
            assert r.json() == {"error": "confirmation required"}
        assert c.get("/health/ready").status_code == 200  # nothing was stopped
        page = c.get("/audit-log", params={"action": "agent.shutdown"}).json()
        assert [(i["operator"], i["target"], i["outcome"], i["detail"]) for i in page["items"]] == [
            ("alice", "agent", "confirm_required", "")
        ] * 4

        r = c.post("/agent/shutdown", headers={"x-aman-confirm": "YES"})
        assert r.status_code == 200
        assert r.json() == {"ok": True, "status": "stopped"}
    # The process exits by itself, with code 0, once the response was sent.
    assert server.wait_exit() == 0
    assert "runtime stopped" in server.stderr
    assert not server.is_listening()


def test_without_autostart_waits_for_agent_start(aman, tmp_path) -> None:
    """``runtime.autostart = false``: phase 0 until ``POST /agent/start``. A shutdown before the
    start (the store never opened) is still audited (D9)."""
    (tmp_path / "aman.toml").write_text("[runtime]\nautostart = false\n")
    server = aman(wait=False)
    server.wait_live()
    with server.client(headers={"x-aman-operator": "dave"}) as c:
        r = c.get("/health/ready")
        assert r.status_code == 503
        assert r.json() == {"error": "not ready", "phase": 0, "status": "new"}
        assert r.headers["retry-after"] == "1"
        assert c.get("/health/live").json() == {"status": "live", "phase": 0}
        r = c.get("/runtime/status")
        assert r.json() == {"phase": 0, "ready": False, "live": True, "status": "new"}
        r = c.get("/plugins")  # a "ready" endpoint
        assert r.status_code == 503
        assert r.json() == {"error": "runtime not ready (phase 0)"}
        assert r.headers["retry-after"] == "1"

        assert c.post("/agent/shutdown").status_code == 409
        r = c.post("/agent/shutdown", headers={"x-aman-confirm": "yes"})
        assert r.json() == {"ok": True, "status": "stopped"}
    assert server.wait_exit() == 0

    again = aman(wait=False)
    again.wait_live()
    with again.client(headers={"x-aman-operator": "carol"}) as c:
        assert c.get("/runtime/status").json()["status"] == "new"
        for _ in range(2):  # idempotent
            r = c.post("/agent/start")
            assert r.status_code == 200
            assert r.json() == {"ok": True, "phase": 5, "status": "ready"}
        assert c.get("/health/ready").json() == {"status": "ready", "phase": 5}
        assert c.get("/plugins").status_code == 200
        items = c.get("/audit-log").json()["items"]
        assert [(i["action"], i["operator"], i["outcome"]) for i in items] == [
            ("agent.start", "carol", "ok"),
            ("agent.start", "carol", "ok"),
            ("agent.shutdown", "dave", "ok"),
            ("agent.shutdown", "dave", "confirm_required"),
        ]
    assert again.stop() == 0
