"""Issue 3's acceptance path over real HTTP against real ``aman serve`` processes: events are
traceable, dumpable and recent; a failing subscriber's event lands in the DLQ and a retry
delivers it; a cron job fires on time and survives a restart without repeating a tick."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.server

# A subscriber that fails while the flag file exists, and records event ids otherwise.
FLAKY = '''
import os, pathlib
from sdk import EventHandler, hookimpl

OUT = pathlib.Path(os.environ["FLAKY_OUT"])
FAIL = pathlib.Path(os.environ["FLAKY_FAIL"])

@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="orders", handler=handle, event_types=("order.created",))]

async def handle(event):
    if FAIL.exists():
        raise RuntimeError("warehouse offline")
    with OUT.open("a") as out:
        out.write(event.id + "\\n")
'''
CONFIRM = {"x-aman-confirm": "yes"}


def poll(check: Callable[[], Any], deadline_sec: float = 20.0) -> Any:
    deadline = time.monotonic() + deadline_sec
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return result


@pytest.fixture(name="server")
def _server(aman, entry_point_plugin, tmp_path):
    plugins = tmp_path / "plugins-src"
    plugins.mkdir()
    entry_point_plugin(plugins, "flaky_orders", "orders", FLAKY)
    env = {"FLAKY_OUT": str(tmp_path / "handled.txt"), "FLAKY_FAIL": str(tmp_path / "fail")}
    (tmp_path / "aman.toml").write_text("[event_bus]\nretry_backoff_ms = [10]\n")
    start = lambda **kw: aman(token="t", env=env, pythonpath=plugins, **kw)  # noqa: E731
    return start, tmp_path


def handled(tmp_path: Path) -> list[str]:
    path = tmp_path / "handled.txt"
    return path.read_text().split() if path.exists() else []


def test_pushed_events_are_dumpable_traceable_and_recent(server):
    start, _ = server
    with start().client() as c:
        first = c.post("/events/push", json={"source": "shop", "event_type": "order.placed", "payload": {"n": 1}}).json()
        second = c.post(
            "/events/push",
            json={"source": "shop", "event_type": "order.paid", "payload": {"n": 2}, "trace_id": first["trace_id"]},
        ).json()
        assert c.get(f"/events/dump/{first['id']}").json()["payload"] == {"n": 1}
        trace = c.get(f"/events/trace/{first['trace_id']}").json()
        assert [e["id"] for e in trace["events"]] == [first["id"], second["id"]]
        assert trace["cycle_detected"] is False
        recent = c.get("/events/recent", params={"source": "shop", "limit": 5}).json()["events"]
        assert [e["id"] for e in recent] == [second["id"], first["id"]]


def test_a_failing_subscriber_dead_letters_and_a_retry_delivers(server):
    start, tmp_path = server
    (tmp_path / "fail").touch()
    with start().client() as c:
        pushed = c.post("/events/push", json={"source": "shop", "event_type": "order.created", "payload": {}}).json()
        entry = poll(lambda: next(iter(c.get("/dlq").json()["items"]), None))
        assert entry["id"] == pushed["id"]
        assert entry["failed_subscribers"] == ["plugin:orders"]
        assert entry["reason"] == "DeliveryFailed: plugin:orders: RuntimeError: warehouse offline"
        assert c.get("/dlq/depth").json() == {"depth": 1}

        (tmp_path / "fail").unlink()  # the warehouse is back
        retry = c.post(f"/dlq/{entry['id']}/retry", json={"reason": "infra recovered"}, headers=CONFIRM).json()
        assert (retry["ok"], retry["retry_count"], retry["subscribers"]) == (True, 1, ["plugin:orders"])
        poll(lambda: handled(tmp_path) == [pushed["id"]])
        poll(lambda: c.get("/dlq/depth").json() == {"depth": 0})
        assert c.post(f"/dlq/{entry['id']}/retry", headers=CONFIRM).status_code == 404


def test_cron_fires_and_survives_a_restart_without_repeating_a_tick(server):
    start, _ = server
    first = start()
    with first.client() as c:
        added = c.post("/cron/add", json={"id": "every-second", "expression": "*/1 * * * * *"})
        assert added.status_code == 200, added.text

        def ticks() -> list[dict[str, Any]]:
            events = c.get("/events/recent", params={"event_type": "cron_tick", "limit": 1000}).json()["events"]
            return [e for e in events if e["source"] == "every-second"]

        poll(lambda: len(ticks()) >= 2)
        before = {e["payload"]["scheduled_at"] for e in ticks()}
    assert first.stop() == 0

    second = start(runtime_dir=first.runtime_dir)
    with second.client() as c:
        jobs = c.get("/cron").json()["items"]
        assert [j["id"] for j in jobs] == ["every-second"]
        poll(lambda: len(ticks()) >= len(before) + 2)
        scheduled = [e["payload"]["scheduled_at"] for e in ticks()]
        assert len(scheduled) == len(set(scheduled))  # no scheduled time fired twice
        assert before < set(scheduled)
    assert second.stop() == 0
