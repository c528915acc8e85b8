"""Phases, readiness, start and the drain (contract D3; http-api §1.7, §3)."""

from __future__ import annotations

import asyncio

import pytest

from sdk import EventHandler, hookimpl
from sdk.testing import wait_for

CONFIRM = {"x-aman-confirm": "yes"}



class Counting:
    name = "counting"

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl
    async def on_startup(self) -> None:
        self.log.append("start counting")

    @hookimpl
    async def on_shutdown(self) -> None:
        self.log.append("stop counting")


class Second(Counting):
    name = "second"

    @hookimpl
    async def on_startup(self) -> None:
        self.log.append("start second")

    @hookimpl
    async def on_shutdown(self) -> None:
        self.log.append("stop second")


@pytest.fixture(name="idle")
async def _idle(make_kernel, serve_kernel):
    """A served kernel that has not started (``runtime.autostart = false``)."""
    log: list[str] = []
    kernel = make_kernel(Counting(log), Second(log), settings={"runtime.autostart": False})
    client = await serve_kernel(kernel)
    client.kernel, client.log = kernel, log
    return client


async def test_before_start_only_always_endpoints_answer(idle):
    assert await (await idle.get("/health/live")).get_json() == {"status": "live", "phase": 0}
    resp = await idle.get("/health/ready")
    assert resp.status_code == 503
    assert await resp.get_json() == {"error": "not ready", "phase": 0, "status": "new"}
    assert resp.headers["Retry-After"] == "1"
    resp = await idle.get("/plugins")
    assert (resp.status_code, await resp.get_json()) == (503, {"error": "runtime not ready (phase 0)"})
    assert resp.headers["Retry-After"] == "1"
    for path in ("/runtime/status", "/runtime/config", "/audit-log", "/debug/metrics", "/metrics"):
        assert (await idle.get(path)).status_code == 200, path
    assert await (await idle.get("/runtime/status")).get_json() == {
        "phase": 0, "ready": False, "live": True, "status": "new"
    }


async def test_start_runs_once_and_is_idempotent(idle):
    seen: list[str] = []
    idle.kernel.bus.observers.append(lambda e: seen.append(e.event_type))
    answers = await asyncio.gather(*(idle.post("/agent/start", headers={"x-aman-operator": "ops"}) for _ in range(3)))
    for resp in answers:
        assert await resp.get_json() == {"ok": True, "phase": 5, "status": "ready"}
    assert idle.log == ["start counting", "start second"]
    assert await (await idle.post("/agent/start")).get_json() == {"ok": True, "phase": 5, "status": "ready"}
    assert idle.log == ["start counting", "start second"]
    assert (await idle.get("/health/ready")).status_code == 200
    assert seen[:2] == ["gateway:starting", "gateway:ready"]
    page = await idle.kernel.audit.query(action="agent.start")
    assert [(r.operator, r.outcome) for r in page.items] == [("api", "ok")] + [("ops", "ok")] * 3


async def test_shutdown_needs_confirmation(idle):
    await idle.post("/agent/start")
    resp = await idle.post("/agent/shutdown")
    assert (resp.status_code, await resp.get_json()) == (409, {"error": "confirmation required"})
    assert idle.kernel.lifecycle.status == "ready"


async def test_shutdown_stops_plugins_in_reverse_and_answers_stopped(idle):
    await idle.post("/agent/start")
    seen: list[str] = []
    idle.kernel.bus.observers.append(lambda e: seen.append(e.event_type))
    resp = await idle.post("/agent/shutdown", headers={**CONFIRM, "x-aman-operator": "ops"})
    assert await resp.get_json() == {"ok": True, "status": "stopped"}
    assert idle.log[-2:] == ["stop second", "stop counting"]
    assert seen == ["gateway:stopping"]

    live = await idle.get("/health/live")
    assert (live.status_code, await live.get_json()) == (
        503, {"error": "runtime is stopped", "phase": 0, "status": "stopped"}
    )
    assert "Retry-After" not in live.headers
    resp = await idle.get("/plugins")
    assert (resp.status_code, await resp.get_json()) == (503, {"error": "runtime is stopped"})
    assert "Retry-After" not in resp.headers
    resp = await idle.post("/agent/start")
    assert (resp.status_code, await resp.get_json()) == (
        409, {"error": "invalid state transition: runtime is shutting down"}
    )
    again = await idle.post("/agent/shutdown", headers=CONFIRM)
    assert await again.get_json() == {"ok": True, "status": "stopped"}
    # The audit log stays readable after the store closed, and the shutdown itself is in it.
    page = await idle.kernel.audit.query(action="agent.shutdown")
    assert [(r.operator, r.outcome) for r in page.items] == [("api", "ok"), ("ops", "ok")]
    assert (await idle.get("/audit-log")).status_code == 200


async def test_draining_refuses_ready_endpoints_until_stopped(make_kernel, serve_kernel):
    release = asyncio.Event()
    handled: list[str] = []

    class Slow:
        name = "slow"

        @hookimpl
        def register_event_handlers(self) -> list[EventHandler]:
            return [EventHandler(name="slow", handler=self.slow, event_types=("slow.work",))]

        async def slow(self, event) -> None:
            await release.wait()
            handled.append(event.id)

    kernel = make_kernel(Slow())
    client = await serve_kernel(kernel)
    await kernel.bus.publish("slow.work", {})
    shutdown = asyncio.create_task(client.post("/agent/shutdown", headers=CONFIRM))
    await wait_for(lambda: kernel.lifecycle.status == "draining")
    resp = await client.get("/plugins")
    assert (resp.status_code, await resp.get_json()) == (503, {"error": "runtime is draining"})
    assert resp.headers["Retry-After"] == "1"
    ready = await client.get("/health/ready")
    assert (await ready.get_json())["status"] == "draining"
    concurrent = await client.post("/agent/shutdown", headers=CONFIRM)
    assert await concurrent.get_json() == {"ok": True, "status": "draining"}
    release.set()
    assert await (await shutdown).get_json() == {"ok": True, "status": "stopped"}
    assert len(handled) == 1  # the drain let the subscriber finish


async def test_start_timeout_fails_and_rolls_back(make_kernel, serve_kernel):
    class Hangs:
        name = "hangs"

        @hookimpl
        async def on_startup(self) -> None:
            await asyncio.sleep(3600)

    kernel = make_kernel(
        Hangs(), settings={"runtime.autostart": False, "runtime.start_timeout_sec": 1, "plugins.load_timeout_sec": 30}
    )
    client = await serve_kernel(kernel)
    resp = await client.post("/agent/start")
    assert (resp.status_code, await resp.get_json()) == (500, {"error": "startup failed in phase 2: timed out"})
    assert kernel.lifecycle.status == "new" and kernel.lifecycle.phase == 0


async def test_metrics_follow_the_phase(idle):
    registry = idle.kernel.metrics.registry
    assert registry.get_sample_value("runtime_ready") == 0
    await idle.post("/agent/start")
    assert registry.get_sample_value("runtime_phase") == 5
    assert registry.get_sample_value("runtime_ready") == 1
