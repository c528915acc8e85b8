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


def test_sigint_stops_the_same_way(aman) -> None:
    server = aman()
    assert server.stop(signal.SIGINT) == 0
    assert "runtime stopped" in server.stderr
    assert not server.is_listening()


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
