"""Misbehaving plugins in a real process (http-api §5.1, §7): one that raises on every hook,
one that hangs in an async handler, one that blocks in sync code for a long time. The others
keep receiving every event, the offenders are quarantined, the event loop is never blocked by
them, and a stall that does happen (an ``async def`` that sleeps on the loop) is measured and
reported with its culprit. An ``on_shutdown`` that hangs is bounded by
``plugins.unload_timeout_sec`` and quarantines its plugin after 3 stops in a row."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import metric, poll, records, write_config

pytestmark = pytest.mark.server

CONFIRM = {"x-aman-confirm": "yes"}

# Every plugin writes one line per call to <FAULTS_DIR>/<its name>.txt.
COMMON = """
import asyncio, os, pathlib, time
from sdk import EventHandler, hookimpl

def note(what, event=None):
    path = pathlib.Path(os.environ["FAULTS_DIR"]) / (__name__ + ".txt")
    with path.open("a") as out:
        out.write(f"{what} {event.id if event is not None else '-'}\\n")
"""

STEADY = (
    COMMON
    + """
@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="steady", handler=seen, event_types=("fault.test",))]

async def seen(event):
    note("event", event)
"""
)

RAISER = (
    COMMON
    + """
@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="raiser", handler=fail, event_types=("fault.test",))]

async def fail(event):
    note("event", event)
    raise RuntimeError("raiser fails on purpose")

@hookimpl
async def on_config_changed(ctx, changes):
    note("config")
    raise RuntimeError("raiser fails on purpose")

@hookimpl
def on_shutdown(ctx):
    note("shutdown")
    raise RuntimeError("raiser fails on purpose")
"""
)

HANGER = (
    COMMON
    + """
@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="hanger", handler=hang, event_types=("fault.test",))]

async def hang(event):
    note("event", event)
    await asyncio.sleep(3600)

@hookimpl
async def on_shutdown(ctx):
    note("shutdown")
    await asyncio.sleep(3600)
"""
)

BLOCKER = (
    COMMON
    + """
@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="blocker", handler=block, event_types=("fault.test",))]

def block(event):  # sync: it would block the event loop for 30 s if it ran there
    note("event", event)
    time.sleep(30)

@hookimpl
def on_shutdown(ctx):
    note("shutdown")
    time.sleep(3600)
"""
)

STALLER = (
    COMMON
    + """
@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="staller", handler=stall, event_types=("stall.test",))]

async def stall(event):  # async, yet sleeps on the loop: nothing can cut that short
    note("event", event)
    time.sleep(0.6)
"""
)

OFFENDERS = ("raiser", "hanger", "blocker")


class Prober:
    """Asks ``/health/live`` every 20 ms from a thread and keeps the slowest answer: how long
    the server's event loop was unable to answer."""

    def __init__(self, base_url: str) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=30)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.slowest = 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            started = time.monotonic()
            assert self._client.get("/health/live").status_code == 200
            self.slowest = max(self.slowest, time.monotonic() - started)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(35)
        self._client.close()


def load(entry_point_plugin, folder: Path, **sources: str) -> None:
    for name, source in sources.items():
        entry_point_plugin(folder, f"{name}_plugin", name, source)


def plugins(client: httpx.Client) -> dict[str, dict]:
    return {p["name"]: p for p in client.get("/plugins").json()["items"]}


def calls(folder: Path, name: str, what: str = "event") -> list[str]:
    return [fields[1] for fields in records(folder / f"{name}_plugin.txt") if fields[0] == what]


def push(client: httpx.Client, event_type: str, n: int, **extra: object) -> str:
    body = {"source": "faults", "event_type": event_type, "payload": {"n": n}, **extra}
    resp = client.post("/events/push", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def test_failing_hanging_and_blocking_plugins_are_quarantined_and_isolated(
    aman, entry_point_plugin, plugin_dir, tmp_path
):
    load(entry_point_plugin, plugin_dir, steady=STEADY, raiser=RAISER, hanger=HANGER)
    load(entry_point_plugin, plugin_dir, blocker=BLOCKER, staller=STALLER)
    faults = tmp_path / "faults"
    faults.mkdir()
    config = write_config(
        tmp_path / "aman.toml",
        {
            "event_bus": {
                "handler_timeout_ms": 400,
                "retry_max_attempts": 2,
                "retry_backoff_ms": [50],
            },
            "plugins": {"quarantine_after_failures": 3, "unload_timeout_sec": 1},
        },
    )
    server = aman("--config", str(config), env={"FAULTS_DIR": str(faults)}, pythonpath=plugin_dir)
    with server.client() as client, Prober(server.base_url) as prober:
        resp = client.post(
            "/config/set", json={"changes": {"plugin.raiser.level": 1}}, headers=CONFIRM
        )
        assert resp.status_code == 200, resp.text  # its on_config_changed raised: still applied
        sent = [push(client, "fault.test", n) for n in range(8)]

        def quarantined() -> bool:
            listed = plugins(client)
            return all(listed[name]["unstable"] for name in OFFENDERS)

        poll(quarantined, deadline=30, what="the three offenders quarantined")
        at_quarantine = {name: len(calls(faults, name)) for name in OFFENDERS}
        sent += [push(client, "fault.test", n) for n in range(8, 12)]
        poll(
            lambda: sorted(calls(faults, "steady")) == sorted(sent),
            deadline=10,
            what="steady received every event",
        )
        during_faults = prober.slowest

        listed = plugins(client)
        for name in OFFENDERS:
            assert (listed[name]["state"], listed[name]["enabled"]) == ("disabled", False)
            assert listed[name]["error"].startswith("quarantined after 3 failures in a row")
        assert (listed["steady"]["state"], listed["steady"]["unstable"]) == ("running", False)
        # An offender is cut off from the moment it is quarantined.
        for name in OFFENDERS:
            assert len(calls(faults, name)) == at_quarantine[name] <= 2 * 8, name
            assert set(calls(faults, name)) <= set(sent[:8])
        assert calls(faults, "raiser", "config") and calls(faults, "raiser", "shutdown")

        audit = client.get("/audit-log", params={"action": "plugin.quarantine"}).json()["items"]
        assert sorted(r["target"] for r in audit) == [f"plugin:{n}" for n in sorted(OFFENDERS)]
        assert {(r["operator"], r["outcome"]) for r in audit} == {("system", "quarantined")}
        events = client.get("/events/recent", params={"event_type": "plugin:quarantined"}).json()[
            "events"
        ]
        assert sorted(e["payload"]["name"] for e in events) == sorted(OFFENDERS)
        exposition = client.get("/metrics").text
        hook_errors = metric(
            exposition, "plugin_hook_errors_total", plugin="raiser", hook="on_config_changed"
        )
        assert hook_errors == 1
        for name in OFFENDERS:  # raised or timed out (the blocker's threads were all taken)
            stopped = metric(
                exposition, "plugin_hook_errors_total", plugin=name, hook="on_shutdown"
            )
            assert stopped == 1, name
        for name in OFFENDERS:
            failures = metric(
                exposition, "event_delivery_failures_total", subscriber=f"plugin:{name}"
            )
            assert failures is not None and failures >= 3, name
        # The blocker's 30 s sleeps and the hanger's waits ran off the loop: no long stall (a
        # short one may come from a busy machine).
        stalls = metric(exposition, "event_loop_stall_seconds_count")
        assert metric(exposition, "event_loop_stall_seconds_bucket", le="1.0") == stalls
        assert during_faults < 2.0, f"/health/live took {during_faults:.2f} s"
        stalled = metric(exposition, "event_loop_stall_seconds_sum")

        # A handler that blocks the loop itself is measured, reported and named.
        push(client, "stall.test", 0, delivery="at_most_once")
        exposition = poll(
            lambda: (
                (text := client.get("/metrics").text)
                and metric(text, "event_loop_stall_seconds_count") > stalls
                and text
            ),
            deadline=10,
            what="the stall counted",
        )
        assert metric(exposition, "event_loop_stall_seconds_sum") - stalled >= 0.5
        logged = poll(
            lambda: re.search(
                r"event loop blocked for (\d+\.\d+) s in staller_plugin\.stall \(", server.stderr
            ),
            deadline=5,
            what="the stall logged with its culprit",
        )
        assert 0.5 <= float(logged[1]) < 5
        print(
            f"slowest /health/live: {during_faults:.3f} s with the offenders, then a stall of {logged[1]} s"
        )
        assert prober.slowest >= 0.4  # seen from outside too
        failures = metric(exposition, "event_delivery_failures_total", subscriber="plugin:staller")
        assert failures == 1  # it ran past handler_timeout_ms: a timeout, after the fact

    started = time.monotonic()
    assert server.stop() == 0  # the blocker's threads still sleep: daemons, they hold nothing up
    assert time.monotonic() - started < 10


def test_a_hanging_on_shutdown_is_bounded_and_quarantines_after_three_stops(
    aman, entry_point_plugin, plugin_dir, tmp_path
):
    stuck_sync = (
        COMMON + "\n@hookimpl\ndef on_shutdown(ctx):\n    note('shutdown')\n    time.sleep(3600)\n"
    )
    stuck_async = (
        COMMON
        + "\n@hookimpl\nasync def on_shutdown(ctx):\n    note('shutdown')\n    await asyncio.sleep(3600)\n"
    )
    load(entry_point_plugin, plugin_dir, stucksync=stuck_sync, stuckasync=stuck_async)
    faults = tmp_path / "faults"
    faults.mkdir()
    config = write_config(tmp_path / "aman.toml", {"plugins": {"unload_timeout_sec": 1}})
    env = {"FAULTS_DIR": str(faults)}
    names = ("stuckasync", "stucksync")
    server = aman("--config", str(config), env=env, pythonpath=plugin_dir)
    with server.client() as client:
        for _ in range(2):  # two stops by hand: each on_shutdown is cut short after 1 s
            for name in names:
                started = time.monotonic()
                resp = client.post(f"/plugin/{name}/disable", headers=CONFIRM)
                assert resp.status_code == 200, resp.text
                assert 1 <= time.monotonic() - started < 5
                assert client.post(f"/plugin/{name}/enable").status_code == 200
        assert not any(plugins(client)[name]["unstable"] for name in names)
    started = time.monotonic()
    assert server.stop() == 0  # the third timeouts, at shutdown: bounded too
    assert time.monotonic() - started < 10
    for name in names:
        assert len(calls(faults, name, "shutdown")) == 3

    again = aman(
        "--config", str(config), env=env, pythonpath=plugin_dir, runtime_dir=server.runtime_dir
    )
    with again.client() as client:
        listed = plugins(client)
        for name in names:
            assert (listed[name]["state"], listed[name]["unstable"]) == ("disabled", True)
        audit = client.get("/audit-log", params={"action": "plugin.quarantine"}).json()["items"]
        assert sorted(r["target"] for r in audit) == [f"plugin:{n}" for n in names]
        assert {r["detail"] for r in audit} == {"quarantined after 3 on_shutdown timeouts in a row"}
        # Enabling clears the quarantine and the count.
        assert client.post("/plugin/stucksync/enable").status_code == 200
        assert plugins(client)["stucksync"]["unstable"] is False
    assert again.stop() == 0


def test_a_sync_tool_stuck_past_its_limit_does_not_hold_up_the_exit(
    aman, entry_point_plugin, plugin_dir, tmp_path
):
    """A sync tool handler runs in a daemon thread of its plugin: when it overruns
    ``runtime.tool_timeout_sec`` the call fails, and the thread it keeps never delays the stop."""
    stuck_tool = (
        COMMON
        + """
from sdk import Tool

def slow(args, tc):
    note("called")
    time.sleep(3600)

@hookimpl
def register_tools(ctx):
    return [Tool(name="stuck_tool", description="never returns", handler=slow)]
"""
    )
    load(entry_point_plugin, plugin_dir, stucktool=stuck_tool)
    faults = tmp_path / "faults"
    faults.mkdir()
    config = write_config(tmp_path / "aman.toml", {"runtime": {"tool_timeout_sec": 1}})
    server = aman("--config", str(config), env={"FAULTS_DIR": str(faults)}, pythonpath=plugin_dir)
    with server.client() as client:
        resp = client.post("/tools/stuck_tool/execute", json={})
        assert (resp.status_code, resp.json()) == (
            400, {"error": "tool stuck_tool timed out after 1 s"})
        assert calls(faults, "stucktool", "called")
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10  # the stuck thread sleeps for an hour
