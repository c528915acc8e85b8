"""State survives a restart: ``/config/set`` is persisted to ``aman.toml`` and the audit log to
SQLite (contract D9, D10; http-api §10, §20)."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

CONFIRM = {"x-aman-confirm": "yes"}
CHANGES = {"event_bus.max_queue_size": 4096, "runtime.start_timeout_sec": 17}


def audit_actions(client) -> list[tuple[str, str, str]]:
    items = client.get("/audit-log", params={"limit": 1000}).json()["items"]
    return [(i["action"], i["outcome"], i["detail"]) for i in items]


@pytest.mark.parametrize("where", ["cwd", "flag"])
def test_config_set_and_audit_survive_restart(aman, tmp_path: Path, where: str) -> None:
    if where == "cwd":
        # Started without --config and no ./aman.toml: /config/set creates ./aman.toml.
        config_file = tmp_path / "aman.toml"
        args: tuple[str, ...] = ()
    else:
        config_file = tmp_path / "etc" / "server.toml"
        config_file.parent.mkdir()
        config_file.write_text("# operator's file\n[http]\nmax_body_bytes = 65536\n")
        args = ("--config", str(config_file))

    first = aman(*args, token="t")
    with first.client(headers={"x-aman-operator": "ops"}) as c:
        before = c.get("/config").json()
        assert before["config"]["event_bus"]["max_queue_size"] == 10000
        assert before["config"]["runtime"]["start_timeout_sec"] == 30
        assert before["path"] == (str(config_file.resolve()) if where == "flag" else None)

        r = c.post("/config/set", headers=CONFIRM, json={"changes": CHANGES})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "ok": True,
            "applied": ["event_bus.max_queue_size"],
            "restart_required": ["runtime.start_timeout_sec"],
            "overridden": [],
        }
        # Live key in effect at once; the restart key keeps its start-up value until a restart.
        now = c.get("/config").json()
        assert now["config"]["event_bus"]["max_queue_size"] == 4096
        assert now["config"]["runtime"]["start_timeout_sec"] == 30
        assert now["path"] == str(config_file.resolve())
        assert c.get("/runtime/config").json()["event_bus_max_queue_size"] == 4096

        # Persisted in the file, with what was there before kept.
        on_disk = tomllib.loads(config_file.read_text())
        assert on_disk["event_bus"]["max_queue_size"] == 4096
        assert on_disk["runtime"]["start_timeout_sec"] == 17
        if where == "flag":
            assert on_disk["http"]["max_body_bytes"] == 65536
            assert not (tmp_path / "aman.toml").exists()
        assert "token" not in config_file.read_text()  # a CLI token is never written to the file

        r = c.post("/agent/shutdown", headers=CONFIRM)
        assert r.json() == {"ok": True, "status": "stopped"}
    assert first.wait_exit() == 0

    second = aman(*args, token="t")
    with second.client() as c:
        cfg = c.get("/config").json()
        assert cfg["config"]["event_bus"]["max_queue_size"] == 4096
        assert cfg["config"]["runtime"]["start_timeout_sec"] == 17
        assert cfg["path"] == str(config_file.resolve())
        assert c.get("/runtime/config").json()["config_path"] == str(config_file.resolve())
        if where == "flag":
            assert cfg["config"]["http"]["max_body_bytes"] == 65536

        actions = audit_actions(c)
        assert actions[:2] == [
            ("agent.shutdown", "ok", ""),
            ("config.set", "ok", "event_bus.max_queue_size,runtime.start_timeout_sec"),
        ]
        record = c.get("/audit-log", params={"action": "config.set"}).json()["items"][0]
        assert record["operator"] == "ops"
        assert record["target"] == "config"
        assert "4096" not in record["detail"]  # keys only, never values
    assert second.stop() == 0


def test_a_message_waiting_for_its_agent_is_answered_after_kill_9(aman) -> None:
    """A turn waiting in its agent's queue is not lost with the process: the restart queues it
    again. One stopped before the crash stays unanswered."""
    first = aman(token="t")
    with first.client() as c:
        waiting, stopped = (c.post("/chat/session/create", json={}).json()["id"] for _ in range(2))
        assert c.post("/agent/aman/status", json={"status": "Preparing"}).status_code == 200  # holds turns back
        for sid, text in ((waiting, "still there?"), (stopped, "never mind")):
            r = c.post(f"/chat/session/{sid}/send", json={"text": text})
            assert (r.status_code, r.json()["queued"]) == (200, True), r.text
        assert c.post(f"/chat/session/{stopped}/stop").json() == {"ok": True, "stopped": True}
    first.kill()  # SIGKILL: no shutdown code runs

    second = aman(token="t")
    with second.client() as c:
        deadline = time.monotonic() + 30
        while (state := c.get(f"/chat/session/{waiting}/state").json())["message_count"] < 2:
            assert time.monotonic() < deadline, state
            time.sleep(0.02)
        assert [m["role"] for m in state["messages"]] == ["user", "assistant"]
        assert state["messages"][0]["content"] == "still there?"
        agent = c.get("/agent/aman").json()
        assert (agent["pending_turns"], agent["active_session_id"]) == (0, None)
        assert [m["role"] for m in c.get(f"/chat/session/{stopped}/state").json()["messages"]] == ["user"]
