"""The plugin manager: loading, isolation, quarantine, and live enable/disable (http-api §7)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdk import ConfigError, ConfigKey, EventHandler, Health, Migration, Route, hookimpl
from sdk.testing import wait_for

CONFIRM = {"x-aman-confirm": "yes"}


class Hello:
    """Says hello."""

    name = "hello"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.started = 0
        self.stopped = 0

    @hookimpl
    def register_routes(self) -> list[Route]:
        return [Route(method="GET", path="/ping", handler=self.ping)]

    @hookimpl
    async def on_startup(self, ctx) -> None:
        self.started += 1

    @hookimpl
    async def on_shutdown(self) -> None:
        self.stopped += 1

    @hookimpl
    def register_event_handlers(self) -> list[EventHandler]:
        return [EventHandler(name="seen", handler=self.seen, event_types=("hello.test",))]

    async def seen(self, event) -> None:
        self.events.append(event.payload["n"])

    async def ping(self, ctx) -> dict[str, str]:
        return {"pong": ctx.name}



async def plugin_info(client, name: str) -> dict[str, Any]:
    items = (await (await client.get("/plugins")).get_json())["items"]
    return next(p for p in items if p["name"] == name)


async def test_plugins_listing_shows_builtins_and_third_party(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(Hello()))
    items = (await (await client.get("/plugins")).get_json())["items"]
    names = [p["name"] for p in items]
    assert names == sorted(names)
    assert {"auth", "lifecycle", "plugin-manager"} <= set(names)
    hello = await plugin_info(client, "hello")
    assert hello["state"] == "running" and hello["loaded"] and hello["enabled"]
    assert hello["description"] == "Says hello."
    assert hello["routes"] == [{"method": "GET", "path": "/api/v1/hello/ping", "public": False}]
    assert hello["builtin"] is False and hello["essential"] is False
    auth = await plugin_info(client, "auth")
    assert auth["essential"] and auth["builtin"] and auth["source"] == "builtin"


async def test_disable_removes_routes_and_subscriptions_live_and_enable_restores(make_kernel, serve_kernel):
    hello = Hello()
    kernel = make_kernel(hello)
    client = await serve_kernel(kernel)
    assert (await client.get("/api/v1/hello/ping")).status_code == 200

    resp = await client.post("/plugin/hello/disable", headers=CONFIRM)
    assert await resp.get_json() == {"ok": True, "name": "hello", "state": "disabled", "changed": True}
    assert (await client.get("/api/v1/hello/ping")).status_code == 404
    assert hello.stopped == 1
    await kernel.bus.publish("hello.test", {"n": "while-disabled"})
    assert (await plugin_info(client, "hello"))["state"] == "disabled"
    again = await client.post("/plugin/hello/disable", headers=CONFIRM)
    assert (await again.get_json())["changed"] is False

    resp = await client.post("/plugin/hello/enable")
    assert await resp.get_json() == {"ok": True, "name": "hello", "state": "running", "changed": True}
    assert await (await client.get("/api/v1/hello/ping")).get_json() == {"pong": "hello"}
    await kernel.bus.publish("hello.test", {"n": "after"})
    await wait_for(lambda: hello.events == ["after"])
    assert hello.started == 2


async def test_enable_disable_are_audited_and_published(make_kernel, serve_kernel):
    kernel = make_kernel(Hello())
    seen: list[str] = []
    kernel.bus.observers.append(lambda e: seen.append(e.event_type))
    client = await serve_kernel(kernel)
    await client.post("/plugin/hello/disable", headers={**CONFIRM, "x-aman-operator": "ops"})
    await client.post("/plugin/hello/enable")
    page = await kernel.audit.query(action="plugin.*")
    assert [(r.action, r.target, r.outcome, r.operator) for r in page.items] == [
        ("plugin.enable", "plugin:hello", "ok", "api"),
        ("plugin.disable", "plugin:hello", "ok", "ops"),
    ]
    assert seen.count("plugin:disabled") == 1 and seen.count("plugin:enabled") == 1


async def test_disabled_state_survives_restart(make_kernel, serve_kernel, tmp_path):
    first = make_kernel(Hello())
    client = await serve_kernel(first)
    await client.post("/plugin/hello/disable", headers=CONFIRM)
    await first.lifecycle.shutdown()

    second = make_kernel(Hello())
    client = await serve_kernel(second)
    assert (await client.get("/api/v1/hello/ping")).status_code == 404
    assert (await plugin_info(client, "hello"))["enabled"] is False
    await client.post("/plugin/hello/enable")
    assert (await client.get("/api/v1/hello/ping")).status_code == 200


async def test_unknown_and_essential_plugins(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel())
    resp = await client.post("/plugin/nope/enable")
    assert (resp.status_code, (await resp.get_json())["error"]) == (404, "plugin not found: nope")
    for name in ("auth", "lifecycle", "plugin-manager"):
        resp = await client.post(f"/plugin/{name}/disable", headers=CONFIRM)
        assert resp.status_code == 409
        assert (await resp.get_json())["error"] == f"plugin {name} is essential and cannot be disabled"


def test_essential_plugins_cannot_be_disabled_at_creation(make_kernel):
    with pytest.raises(ConfigError, match="essential"):
        make_kernel(disabled=("auth",))


def test_a_misspelt_hook_is_an_error(make_kernel):
    class Typo:
        name = "typo"

        @hookimpl
        def register_rouets(self) -> list[Route]:
            return []

    with pytest.raises(Exception, match="register_rouets"):
        make_kernel(Typo())


class Broken:
    """Raises in on_startup."""

    name = "broken"

    @hookimpl
    async def on_startup(self) -> None:
        raise RuntimeError("cannot start")

    @hookimpl
    def register_routes(self) -> list[Route]:
        return [Route(method="GET", path="/x", handler=self.x)]

    async def x(self) -> dict[str, bool]:
        return {"x": True}


async def test_a_failing_plugin_is_isolated_and_reported(make_kernel, serve_kernel):
    hello = Hello()
    kernel = make_kernel(Broken(), hello)
    client = await serve_kernel(kernel)
    assert (await client.get("/health/ready")).status_code == 200
    info = await plugin_info(client, "broken")
    assert info["state"] == "failed"
    assert info["error"] == "RuntimeError: cannot start"
    assert (await client.get("/api/v1/broken/x")).status_code == 404
    assert (await client.get("/api/v1/hello/ping")).status_code == 200
    errors = kernel.metrics.registry.get_sample_value(
        "plugin_hook_errors_total", {"plugin": "broken", "hook": "on_startup"}
    )
    assert errors == 1
    page = await kernel.audit.query(action="plugin.load")
    assert [(r.outcome, r.detail) for r in page.items] == [("failed", "RuntimeError: cannot start")]
    resp = await client.post("/plugin/broken/enable")
    assert (resp.status_code, (await resp.get_json())["error"]) == (
        422,
        "plugin failed to start: RuntimeError: cannot start",
    )


async def test_a_hanging_async_hook_is_timed_out(make_kernel, serve_kernel):
    class Hangs:
        name = "hangs"

        @hookimpl
        async def on_startup(self) -> None:
            await asyncio.sleep(3600)

    kernel = make_kernel(Hangs(), Hello(), settings={"plugins.load_timeout_sec": 1})
    client = await serve_kernel(kernel)
    assert (await plugin_info(client, "hangs"))["error"] == "on_startup timed out after 1 s"
    assert (await plugin_info(client, "hello"))["state"] == "running"


async def test_a_failing_builtin_aborts_startup_and_rolls_back(make_kernel, serve_kernel):
    kernel = make_kernel(Broken(), settings={"runtime.autostart": False})
    kernel.plugins.records["broken"].source = "builtin"
    client = await serve_kernel(kernel)
    for _ in range(2):  # a failed start rolls back, so it may be tried again
        resp = await client.post("/agent/start")
        assert resp.status_code == 500
        assert (await resp.get_json())["error"] == (
            "startup failed in phase 2: built-in plugin broken failed to start: RuntimeError: cannot start"
        )
        status = await (await client.get("/runtime/status")).get_json()
        assert status == {"phase": 0, "ready": False, "live": True, "status": "new"}
    page = await kernel.audit.query(action="runtime.phase")
    assert [r.outcome for r in page.items] == ["failed", "failed"]


async def test_repeated_handler_failures_quarantine_the_plugin(make_kernel, serve_kernel):
    class Flaky:
        name = "flaky"
        calls = 0

        @hookimpl
        def register_event_handlers(self) -> list[EventHandler]:
            return [EventHandler(name="fail", handler=self.fail, event_types=("flaky.test",))]

        async def fail(self, event) -> None:
            Flaky.calls += 1
            raise ValueError("always")

    hello = Hello()
    kernel = make_kernel(Flaky(), hello, settings={"plugins.quarantine_after_failures": 3})
    client = await serve_kernel(kernel)
    for n in range(5):
        await kernel.bus.publish("flaky.test", {"n": n})
        await kernel.bus.publish("hello.test", {"n": str(n)})
    await wait_for(lambda: kernel.plugins.records["flaky"].unstable)
    await wait_for(lambda: len(hello.events) == 5)
    info = await plugin_info(client, "flaky")
    assert info["unstable"] is True and info["enabled"] is False
    assert "quarantined after 3 failures" in info["error"]
    page = await kernel.audit.query(action="plugin.quarantine")
    assert [(r.operator, r.outcome) for r in page.items] == [("system", "quarantined")]
    assert Flaky.calls == 3
    resp = await client.post("/plugin/flaky/enable")
    assert resp.status_code == 200
    assert (await plugin_info(client, "flaky"))["unstable"] is False


async def test_health_check_results_are_reported(make_kernel, serve_kernel):
    class Degraded:
        name = "degraded"

        @hookimpl
        def health_check(self) -> Health:
            return Health(status="degraded", detail="backend slow")

    class Sick:
        name = "sick"

        @hookimpl
        async def health_check(self) -> dict[str, str]:
            return {"status": "error", "detail": "no backend"}

    client = await serve_kernel(make_kernel(Degraded(), Sick()))
    assert (await plugin_info(client, "degraded"))["health"] == {"status": "degraded", "detail": "backend slow"}
    sick = await plugin_info(client, "sick")
    assert sick["state"] == "failed"
    assert sick["error"] == "health check failed: no backend"


async def test_migrations_and_config_keys_of_a_plugin(make_kernel, serve_kernel):
    class Notes:
        name = "notes"

        @hookimpl
        def register_migrations(self) -> list[Migration]:
            return [
                Migration(version=1, sql="CREATE TABLE notes_items (id INTEGER PRIMARY KEY, text TEXT);"),
                Migration(version=2, sql="ALTER TABLE notes_items ADD COLUMN author TEXT;"),
            ]

        @hookimpl
        def register_config(self) -> list[ConfigKey]:
            return [ConfigKey(name="notes.max_items", type=int, default=10, minimum=1, maximum=100)]

    kernel = make_kernel(Notes())
    await serve_kernel(kernel)
    await kernel.store.execute("INSERT INTO notes_items (text, author) VALUES ('a', 'b')")
    rows = await kernel.store.fetchall("SELECT version FROM schema_migrations WHERE plugin = 'notes'")
    assert [r[0] for r in rows] == [1, 2]
    assert kernel.config.get("notes.max_items") == 10
    result = await kernel.config.set({"notes.max_items": 20}, operator="t")
    assert result.applied == ["notes.max_items"]


async def test_a_plugin_raising_in_every_runtime_hook_cannot_take_the_runtime_down(make_kernel, serve_kernel):
    class Evil:
        """Raises wherever it can once started."""

        name = "evil"
        checks = 0

        @hookimpl
        def health_check(self):
            Evil.checks += 1
            if Evil.checks > 1:  # healthy at start (an unhealthy start simply fails the plugin)
                raise RuntimeError("health")

        @hookimpl
        def register_event_handlers(self):
            return [EventHandler(name="all", handler=self.handle)]

        async def handle(self, event):
            raise RuntimeError("handler")

        @hookimpl
        async def on_config_changed(self, changes):
            raise RuntimeError("config")

        @hookimpl
        async def on_shutdown(self):
            raise RuntimeError("shutdown")

    hello = Hello()
    kernel = make_kernel(Evil(), hello, settings={"plugins.quarantine_after_failures": 3})
    client = await serve_kernel(kernel)
    resp = await client.post("/config/set", json={"changes": {"plugin.evil.x": 1}}, headers=CONFIRM)
    assert resp.status_code == 200  # its on_config_changed raised; the change stays applied
    for n in range(5):
        await kernel.bus.publish("hello.test", {"n": str(n)})
    await wait_for(lambda: kernel.plugins.records["evil"].unstable)
    await wait_for(lambda: len(hello.events) == 5)  # the others got every event
    assert (await client.get("/api/v1/hello/ping")).status_code == 200
    assert (await client.get("/health/ready")).status_code == 200
    errors = kernel.metrics.registry.get_sample_value
    assert errors("plugin_hook_errors_total", {"plugin": "evil", "hook": "on_config_changed"}) == 1
    await kernel.plugins._health(kernel.plugins.records["evil"])  # a later check raises: reported

    await kernel.lifecycle.shutdown()  # its failing on_shutdown does not stop the shutdown
    assert kernel.lifecycle.status == "stopped"
