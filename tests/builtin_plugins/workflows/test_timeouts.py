"""State timeouts (per-state clocks that pause and resume, the poller, the defer window) and
instances across restarts (http-api §8, formats §3)."""

from __future__ import annotations

import asyncio
from typing import Any

from sdk.testing import wait_for

from .conftest import APPROVAL

TIMED: dict[str, Any] = {
    "name": "timed",
    "states": ["a", "b", "c", "err"],
    "initial_state": "a",
    "error_state": "err",
    "transitions": [
        {"from": "a", "event": "go", "to": "b"},
        {"from": "b", "event": "back", "to": "a"},
        {"from": "b", "event": "break", "to": "err"},
    ],
    "state_timeouts": [
        {"state": "a", "timeout_ms": 60_000, "on_timeout": "c", "on_timeout_alert": True},
        {"state": "err", "timeout_ms": 10_000, "on_timeout": "$last_active"},
    ],
}
QUICK: dict[str, Any] = {
    "name": "quick",
    "states": ["wait", "late"],
    "initial_state": "wait",
    "final_states": ["late"],
    "state_timeouts": [{"state": "wait", "timeout_ms": 200, "on_timeout": "late"}],
}


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def test_clocks_pause_and_resume_with_the_remaining_time(start_flows, caplog):
    flows = await start_flows(
        files={"timed.yaml": TIMED},
        settings={"workflows.timeout_defer_ms": 0, "workflows.timeout_poll_ms": 60_000},
    )
    clock = flows.engine.clock = Clock(1_000_000)
    iid = (await flows.create("timed"))["id"]
    assert (await flows.engine.get(iid)).due_at == 1_060_000
    clock.now += 1000
    await flows.event(iid, "go")
    got = await flows.instance(iid)
    assert got["timeout_clock"] == {
        "active_state": "B", "active_started_at": 1_001_000, "remaining_ms": {"A": 59_000},
    }
    clock.now += 100_000  # B has no timeout
    await flows.engine.check()
    assert await flows.state(iid) == "B"
    await flows.event(iid, "back")
    assert (await flows.engine.get(iid)).due_at == 1_101_000 + 59_000
    got = await flows.instance(iid)
    assert got["timeout_clock"]["remaining_ms"] == {}
    clock.now += 58_999
    await flows.engine.check()
    assert await flows.state(iid) == "A"
    clock.now += 1
    await flows.engine.check()
    got = await flows.instance(iid)
    assert got["current_state"] == "C" and got["timeout_clock"]["remaining_ms"] == {}
    await wait_for(lambda: ("A", "C", "TIMEOUT", "Timeout") in flows.recorder.changes(iid))
    assert f"workflow state timed out: timed {iid} A" in caplog.text
    # on_timeout_alert raised a warning notification (through sdk.NOTIFIER), as in http-api §13
    items = await (await flows.client.get("/notifications")).get_json()
    alerts = [n for n in items if n["category"] == "workflow" and n["title"] == "Workflow state timed out"]
    assert [(n["severity"], n["message"]) for n in alerts] == [("warning", f"timed {iid} A")]


async def test_timeout_into_last_active_and_error_bookkeeping(start_flows):
    flows = await start_flows(
        files={"timed.yaml": TIMED},
        settings={"workflows.timeout_defer_ms": 0, "workflows.timeout_poll_ms": 60_000},
    )
    clock = flows.engine.clock = Clock(5_000_000)
    iid = (await flows.create("timed"))["id"]
    await flows.event(iid, "go")
    await flows.event(iid, "break")
    got = await flows.instance(iid)
    assert got["current_state"] == "ERR" and got["last_active_state"] == "B"
    assert got["has_pending_retry"] is True
    clock.now += 10_000
    await flows.engine.check()
    got = await flows.instance(iid)
    assert got["current_state"] == "B" and got["has_pending_retry"] is False


async def test_no_timeout_within_the_defer_window(start_flows):
    flows = await start_flows(
        files={"quick.yaml": QUICK},
        settings={"workflows.timeout_defer_ms": 1000, "workflows.timeout_poll_ms": 60_000},
    )
    clock = flows.engine.clock = Clock(1_000_000)
    iid = (await flows.create("quick"))["id"]
    clock.now += 500
    await flows.engine.check()
    assert await flows.state(iid) == "WAIT"
    clock.now += 500
    await flows.engine.check()
    assert await flows.state(iid) == "LATE"


async def test_the_poller_fires_timeouts(start_flows):
    flows = await start_flows(
        files={"quick.yaml": QUICK},
        settings={"workflows.timeout_defer_ms": 0, "workflows.timeout_poll_ms": 100},
    )
    iid = (await flows.create("quick"))["id"]
    await wait_for(lambda: ("WAIT", "LATE", "TIMEOUT", "Timeout") in flows.recorder.changes(iid))
    got = await flows.instance(iid)
    assert got["current_state"] == "LATE"
    assert (await flows.client.post(f"/workflow-instance/{iid}/event", json={"event": "x"})).status_code == 409


async def test_instances_survive_a_restart(start_flows, tmp_path):
    runtime = tmp_path / "rt"
    first = await start_flows(files={"approval.yaml": APPROVAL}, runtime_dir=runtime)
    iid = (await first.create(data={"k": [1, 2]}))["id"]
    await first.event(iid, "submit")
    before = await first.instance(iid)
    await first.kernel.lifecycle.shutdown()

    second = await start_flows(runtime_dir=runtime)
    assert await second.instance(iid) == before
    resp = await second.event(iid, "approve", has_permission=True)
    assert (await resp.get_json())["to_state"] == "APPROVED"
    items = (await (await second.client.get("/workflow-instances")).get_json())["items"]
    assert [i["id"] for i in items] == [iid]


async def test_timeouts_due_while_down_fire_at_start(start_flows, tmp_path):
    runtime = tmp_path / "rt"
    settings = {"workflows.timeout_defer_ms": 0, "workflows.timeout_poll_ms": 60_000}
    first = await start_flows(files={"quick.yaml": QUICK}, runtime_dir=runtime, settings=settings)
    iid = (await first.create("quick"))["id"]
    await first.kernel.lifecycle.shutdown()
    await asyncio.sleep(0.3)

    second = await start_flows(runtime_dir=runtime, settings=settings)
    await wait_for(lambda: ("WAIT", "LATE", "TIMEOUT", "Timeout") in second.recorder.changes(iid))
    assert await second.state(iid) == "LATE"
