"""Timer sources ``[sources.timer.<name>]`` (formats §1.4; http-api §6, §7)."""

from __future__ import annotations

import asyncio
import itertools
import re
import tomllib
from typing import Any

import pytest

from sdk.testing import Recorder, wait_for

CONFIRM = {"x-aman-confirm": "yes"}


@pytest.fixture(name="start")
async def _start(make_kernel, serve_kernel, tmp_path):
    """``client, kernel, recorder, path = await start(toml, **settings)``."""

    async def start(toml: str, **settings: Any):
        path = tmp_path / "aman.toml"
        path.write_text(toml)
        recorder = Recorder("timer_tick", "heartbeat", "fill")
        kernel = make_kernel(recorder, config_path=path, settings=settings)
        client = await serve_kernel(kernel)
        return client, kernel, recorder, path

    return start


FAST = "[sources.timer.fast]\ninterval_ms = 100\n"


async def test_a_timer_ticks_at_about_its_interval(start):
    began = asyncio.get_running_loop().time()
    client, kernel, recorder, _ = await start(FAST)
    await wait_for(lambda: len(recorder.from_source("timer:fast")) >= 5)
    elapsed = asyncio.get_running_loop().time() - began
    ticks = recorder.from_source("timer:fast")[:5]
    assert elapsed >= 0.45  # never faster than the interval
    assert [e.payload["tick"] for e in ticks] == [1, 2, 3, 4, 5]
    assert {(e.event_type, e.delivery, e.priority, e.trust_level) for e in ticks} == {
        ("timer_tick", "at_most_once", "normal", "trusted")
    }
    scheduled = [e.payload["scheduled_at_ms"] for e in ticks]
    gaps = [b - a for a, b in itertools.pairwise(scheduled)]
    assert all(gap > 0 and gap % 100 == 0 for gap in gaps), gaps  # a stalled loop skips ticks
    assert set(ticks[0].payload) == {"tick", "scheduled_at_ms"}

    body = await (await client.get("/event-sources")).get_json()
    (info,) = [s for s in body["items"] if s["id"] == "timer:fast"]
    assert {k: info[k] for k in ("kind", "plugin", "mode", "trust_level", "state", "config")} == {
        "kind": "timer",
        "plugin": "timers",
        "mode": "pull",
        "trust_level": "trusted",
        "state": "running",
        "config": {"interval_ms": 100, "event_type": "timer_tick", "payload": {}},
    }
    assert info["events_emitted"] >= 5


async def test_heartbeat_type_and_payload_merge(start):
    toml = (
        '[sources.timer.beat]\ninterval_ms = 100\nevent_type = "heartbeat"\n'
        'payload = { who = "ops", tick = "mine" }\n'
        "[sources.timer.off]\ninterval_ms = 100\nenabled = false\n"
    )
    client, kernel, recorder, _ = await start(toml)
    await wait_for(lambda: len(recorder.from_source("timer:beat")) >= 2)
    first = recorder.from_source("timer:beat")[0]
    assert first.event_type == "heartbeat"
    assert first.payload == {
        "who": "ops",
        "tick": 1,
        "scheduled_at_ms": first.payload["scheduled_at_ms"],
    }
    assert [s.id for s in kernel.sources.list() if s.plugin == "timers"] == ["timer:beat"]


async def test_pause_stops_the_ticks_and_resume_restarts_them(start):
    client, kernel, recorder, _ = await start(FAST)
    await wait_for(lambda: len(recorder.from_source("timer:fast")) >= 2)
    info = await kernel.sources.pause("timer:fast")
    assert (info.state, info.paused_by) == ("paused", ["operator"])
    await asyncio.sleep(0.5)
    assert kernel.sources.get("timer:fast").events_emitted == info.events_emitted
    await kernel.sources.resume("timer:fast")
    await wait_for(lambda: len(recorder.from_source("timer:fast")) >= info.events_emitted + 2)
    ticks = [e.payload["tick"] for e in recorder.from_source("timer:fast")]
    assert ticks == list(range(1, len(ticks) + 1))  # the count goes on


async def test_backpressure_pauses_the_timer_and_lifts(start):
    client, kernel, recorder, _ = await start(FAST, **{"event_bus.max_queue_size": 16})
    stash = kernel.plugins.records["timers"].ctx.stash
    await wait_for(lambda: len(recorder.from_source("timer:fast")) >= 1)
    recorder.gate.clear()  # the subscriber holds every event from now on
    filled = 0
    while kernel.bus.level not in ("L3", "L4A", "L4B", "Critical"):
        assert filled < 32
        await kernel.bus.publish("fill", {"i": filled}, source="test", delivery="at_least_once")
        filled += 1
    await kernel.sources.apply_backpressure()
    info = kernel.sources.get("timer:fast")
    assert (info.state, info.paused_by) == ("paused", ["backpressure"])
    from builtin_plugins.timers import TIMERS

    timer = stash[TIMERS].sources["timer:fast"]
    assert timer.running is False and timer._task is None
    recorder.gate.set()
    await wait_for(lambda: len([e for e in recorder.seen if e.event_type == "fill"]) == filled)
    await wait_for(lambda: kernel.bus.level == "Normal")
    await kernel.sources.apply_backpressure()
    assert kernel.sources.get("timer:fast").state == "running"
    count = len(recorder.from_source("timer:fast"))
    await wait_for(lambda: len(recorder.from_source("timer:fast")) >= count + 2)


async def test_reconfigure_writes_the_file_and_changes_the_interval(start):
    client, kernel, recorder, path = await start("[sources.timer.slow]\ninterval_ms = 60000\n")
    await asyncio.sleep(0.3)
    assert recorder.from_source("timer:slow") == []
    resp = await client.put(
        "/event-source/timer:slow/config",
        json={"interval_ms": 100, "payload": {"n": 1}},
        headers={"x-aman-operator": "ops"},
    )
    body = await resp.get_json()
    assert resp.status_code == 200, body
    assert body["source"]["config"] == {
        "interval_ms": 100,
        "event_type": "timer_tick",
        "payload": {"n": 1},
    }
    assert tomllib.loads(path.read_text())["sources"]["timer"]["slow"] == {
        "interval_ms": 100,
        "payload": {"n": 1},
    }
    await wait_for(lambda: len(recorder.from_source("timer:slow")) >= 3)
    assert recorder.from_source("timer:slow")[0].payload["n"] == 1
    rows = await kernel.store.fetchall(
        "SELECT key, new_value, operator FROM config_log ORDER BY key"
    )
    assert [tuple(r) for r in rows] == [
        ("sources.timer.slow.interval_ms", "100", "source:timer:slow"),
        ("sources.timer.slow.payload", "{'n': 1}", "source:timer:slow"),
    ]
    page = await kernel.audit.query(action="source.config")
    assert [(r.outcome, r.detail, r.operator) for r in page.items] == [
        ("ok", "interval_ms,payload", "ops")
    ]


async def test_the_write_back_does_not_restart_the_timer_twice(start):
    client, kernel, recorder, _ = await start(FAST)
    from builtin_plugins.timers import TIMERS

    timer = kernel.plugins.records["timers"].ctx.stash[TIMERS].sources["timer:fast"]
    restarts = []
    original = timer._begin

    async def counting() -> None:
        restarts.append(1)
        await original()

    timer._begin = counting
    resp = await client.put("/event-source/timer:fast/config", json={"interval_ms": 200})
    assert resp.status_code == 200
    assert restarts == [1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"bogus": 1}, "unknown config key for source timer:fast: bogus"),
        ({"enabled": False}, "unknown config key for source timer:fast: enabled"),
        ({"interval_ms": 99}, "field 'interval_ms' must be between 100 and 86400000"),
        ({"interval_ms": True}, "field 'interval_ms' must be an integer"),
        ({"interval_ms": 1.5}, "field 'interval_ms' must be an integer"),
        (
            {"event_type": "tock"},
            "invalid value for 'event_type': 'tock' (expected one of: timer_tick, heartbeat)",
        ),
        ({"payload": []}, "field 'payload' must be an object"),
        ({"payload": {"a": None}}, "field 'payload' must not contain null (TOML has no null)"),
        ({"interval_ms": 200, "bogus": 1}, "unknown config key for source timer:fast: bogus"),
    ],
)
async def test_a_bad_reconfigure_is_400_and_changes_nothing(start, body, message):
    client, kernel, recorder, path = await start(FAST)
    before = path.read_bytes()
    resp = await client.put("/event-source/timer:fast/config", json=body)
    assert (resp.status_code, (await resp.get_json())["error"]) == (400, message)
    assert path.read_bytes() == before
    assert kernel.sources.get("timer:fast").config["interval_ms"] == 100


async def config_set(client, changes: dict[str, Any]):
    return await client.post("/config/set", json={"changes": changes}, headers=CONFIRM)


async def test_config_set_creates_changes_and_removes_timers(start):
    client, kernel, recorder, path = await start(FAST)
    resp = await config_set(
        client, {"sources.timer.new.interval_ms": 100, "sources.timer.new.event_type": "heartbeat"}
    )
    assert resp.status_code == 200, await resp.get_json()
    assert kernel.sources.get("timer:new").state == "running"
    await wait_for(
        lambda: [e.event_type for e in recorder.from_source("timer:new")][:1] == ["heartbeat"]
    )

    await config_set(client, {"sources.timer.new.payload": {"k": "v"}})
    assert kernel.sources.get("timer:new").config["payload"] == {"k": "v"}
    await wait_for(lambda: recorder.from_source("timer:new")[-1].payload.get("k") == "v")

    await config_set(client, {"sources.timer.fast.enabled": False})
    assert [s.id for s in kernel.sources.list() if s.plugin == "timers"] == ["timer:new"]
    await config_set(client, {"sources.timer.fast.enabled": True})
    assert kernel.sources.get("timer:fast").state == "running"

    resp = await config_set(
        client,
        {
            "sources.timer.new.interval_ms": None,
            "sources.timer.new.event_type": None,
            "sources.timer.new.payload": None,
        },
    )
    assert resp.status_code == 200, await resp.get_json()
    assert "new" not in tomllib.loads(path.read_text())["sources"]["timer"]
    assert [s.id for s in kernel.sources.list() if s.plugin == "timers"] == ["timer:fast"]
    await asyncio.sleep(0.15)
    count = len(recorder.from_source("timer:new"))
    await asyncio.sleep(0.3)
    assert len(recorder.from_source("timer:new")) == count


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"sources.timer.x.event_type": "heartbeat"},
            "invalid configuration: sources.timer.x.interval_ms is required",
        ),
        (
            {"sources.timer.x.interval_ms": 50},
            "invalid value for sources.timer.x.interval_ms: must be between 100 and 86400000",
        ),
        ({"sources.timer.x.bogus": 1}, "unknown config key: sources.timer.x.bogus"),
        (
            {"sources.timer.x!.interval_ms": 100},
            "invalid configuration: invalid source name sources.timer.x!: 1-64 characters of A-Za-z0-9_.-",
        ),
        (
            {"sources.watch.w.recursive": False},
            "invalid configuration: sources.watch.w.paths is required",
        ),
        (
            {"sources.watch.w.paths": []},
            "invalid value for sources.watch.w.paths: must have 1 to 100 elements",
        ),
        (
            {"sources.watch.w.paths": ["in"], "sources.watch.w.debounce_ms": -1},
            "invalid value for sources.watch.w.debounce_ms: must be between 0 and 60000",
        ),
    ],
)
async def test_config_set_refuses_bad_tables(start, changes, message):
    client, kernel, *_ = await start(FAST)
    resp = await config_set(client, changes)
    assert (resp.status_code, (await resp.get_json())["error"]) == (400, message)


def test_a_bad_table_stops_the_start(make_kernel, tmp_path):
    from sdk import ConfigError

    path = tmp_path / "aman.toml"
    path.write_text('[sources.timer.a]\nevent_type = "heartbeat"\n')
    with pytest.raises(ConfigError, match=re.escape("sources.timer.a.interval_ms is required")):
        make_kernel(config_path=path)
    path.write_text("[sources.timer.a]\ninterval_ms = 100\nextra = 1\n")
    with pytest.raises(ConfigError, match=re.escape("unknown key 'sources.timer.a.extra'")):
        make_kernel(config_path=path)


async def test_disabling_timers_shuts_its_sources_down(start):
    client, kernel, recorder, _ = await start(FAST + '[sources.watch.w]\npaths = ["."]\n')
    assert {s.id for s in kernel.sources.list() if s.plugin == "timers"} == {
        "timer:fast",
        "watch:w",
    }
    resp = await client.post("/plugin/timers/disable", headers=CONFIRM)
    assert resp.status_code == 200, await resp.get_json()
    assert [s.id for s in kernel.sources.list() if s.plugin == "timers"] == []
    await asyncio.sleep(0.15)
    count = len(recorder.from_source("timer:fast"))
    await asyncio.sleep(0.3)
    assert len(recorder.from_source("timer:fast")) == count
    # the keys stay known while the plugin is disabled; changes wait for it
    resp = await config_set(client, {"sources.timer.later.interval_ms": 100})
    assert resp.status_code == 200
    assert (await client.post("/plugin/timers/enable")).status_code == 200
    ids = {s.id for s in kernel.sources.list() if s.plugin == "timers"}
    assert ids == {"timer:fast", "timer:later", "watch:w"}
    await wait_for(lambda: len(recorder.from_source("timer:later")) >= 1)


async def test_shutdown_stops_the_timers(start):
    client, kernel, recorder, _ = await start(FAST)
    await wait_for(lambda: len(recorder.from_source("timer:fast")) >= 1)
    from builtin_plugins.timers import TIMERS

    timer = kernel.plugins.records["timers"].ctx.stash[TIMERS].sources["timer:fast"]
    await kernel.lifecycle.shutdown()
    assert timer._task is None and timer.running is False
