"""One test per hook of SDK API "1": each hook does what ``docs/hooks.md`` says.

``tests/contract/test_contract.py`` fails when a hookspec has no ``test_hook_<name>`` here.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import Gauge

from sdk import ConfigError, ConfigKey, EventHandler, Health, Migration, Route, hookimpl
from sdk.testing import wait_for

CONFIRM = {"x-aman-confirm": "yes"}



class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []


async def test_hook_on_startup(make_kernel, serve_kernel):
    class P(Recorder):
        @hookimpl
        async def on_startup(self, ctx) -> None:
            self.calls.append(("on_startup", (ctx.name, ctx.lifecycle.phase, ctx.data_dir.is_dir())))

    plugin = P()
    await serve_kernel(make_kernel(plugin))
    assert plugin.calls == [("on_startup", ("recorder", 1, True))]  # during phase 2, data dir ready


async def test_hook_on_shutdown(make_kernel, serve_kernel):
    class P(Recorder):
        @hookimpl
        def on_shutdown(self, ctx) -> None:  # a sync implementation runs in a worker thread
            self.calls.append(("on_shutdown", ctx.lifecycle.status))

    plugin = P()
    kernel = make_kernel(plugin)
    await serve_kernel(kernel)
    await kernel.lifecycle.shutdown()
    assert plugin.calls == [("on_shutdown", "draining")]


async def test_hook_health_check(make_kernel, serve_kernel):
    class P(Recorder):
        @hookimpl
        def health_check(self) -> Health:
            return Health(status="degraded", detail="warming up")

    client = await serve_kernel(make_kernel(P()))
    items = (await (await client.get("/plugins")).get_json())["items"]
    assert next(p for p in items if p["name"] == "recorder")["health"] == {"status": "degraded", "detail": "warming up"}


async def test_hook_register_routes(make_kernel, serve_kernel):
    class P(Recorder):
        @hookimpl
        def register_routes(self, ctx) -> list[Route]:
            return [Route(method="GET", path="/items/{item_id}", handler=self.item)]

        async def item(self, ctx, item_id: str) -> dict[str, str]:
            return {"plugin": ctx.name, "item": item_id}

    client = await serve_kernel(make_kernel(P()))
    resp = await client.get("/api/v1/recorder/items/42")
    assert await resp.get_json() == {"plugin": "recorder", "item": "42"}


async def test_hook_register_event_handlers(make_kernel, serve_kernel):
    class P(Recorder):
        @hookimpl
        def register_event_handlers(self) -> list[EventHandler]:
            return [
                EventHandler(name="orders", handler=self.order, event_types=("order.created",), payload={"vip": True}),
            ]

        async def order(self, event) -> None:
            self.calls.append(("order", event.payload["id"]))

    plugin = P()
    kernel = make_kernel(plugin)
    await serve_kernel(kernel)
    await kernel.bus.publish("order.created", {"id": 1, "vip": False})
    await kernel.bus.publish("order.shipped", {"id": 2, "vip": True})
    await kernel.bus.publish("order.created", {"id": 3, "vip": True})
    await wait_for(lambda: plugin.calls == [("order", 3)])
    await kernel.bus.drain(1)
    assert plugin.calls == [("order", 3)]


async def test_hook_register_config(make_kernel, tmp_path):
    class P(Recorder):
        @hookimpl
        def register_config(self) -> list[ConfigKey]:
            return [ConfigKey(name="recorder.depth", type=int, default=3, minimum=1, maximum=9)]

    path = tmp_path / "aman.toml"
    path.write_text("[recorder]\ndepth = 5\n")
    assert make_kernel(P(), config_path=path).config.get("recorder.depth") == 5
    path.write_text("[recorder]\ndepth = 50\n")
    with pytest.raises(ConfigError, match=r"invalid value for 'recorder\.depth': must be between 1 and 9"):
        make_kernel(P(), config_path=path)


async def test_hook_register_migrations(make_kernel, serve_kernel):
    class P(Recorder):
        @hookimpl
        def register_migrations(self) -> list[Migration]:
            return [Migration(version=1, sql="CREATE TABLE recorder_items (id INTEGER PRIMARY KEY);")]

        @hookimpl
        async def on_startup(self, ctx) -> None:
            await ctx.store.execute("INSERT INTO recorder_items DEFAULT VALUES")

    first = make_kernel(P())
    await serve_kernel(first)
    await first.lifecycle.shutdown()
    second = make_kernel(P())
    await serve_kernel(second)  # the migration is not applied twice
    rows = await second.store.fetchall("SELECT count(*) FROM recorder_items")
    assert rows[0][0] == 2


async def test_hook_register_metrics(make_kernel, serve_kernel):
    class P(Recorder):
        @hookimpl
        def register_metrics(self, registry) -> None:
            Gauge("aman_recorder_depth", "Depth.", registry=registry).set(7)

    client = await serve_kernel(make_kernel(P()))
    assert b"aman_recorder_depth 7.0" in await (await client.get("/metrics")).get_data()


async def test_hook_on_config_changed(make_kernel, serve_kernel):
    class P(Recorder):
        @hookimpl
        async def on_config_changed(self, ctx, changes) -> None:
            self.calls.append(("changed", dict(changes), dict(ctx.config)))

    plugin = P()
    client = await serve_kernel(make_kernel(plugin))
    await client.post("/config/set", json={"changes": {"plugin.recorder.level": 2}}, headers=CONFIRM)
    await client.post("/config/set", json={"changes": {"http.max_body_bytes": 4096}}, headers=CONFIRM)
    assert plugin.calls == [("changed", {"plugin.recorder.level": 2}, {"level": 2})]


async def test_hook_register_llm_providers(make_kernel, serve_kernel, tmp_path):
    class Mock:
        def __init__(self, config) -> None:
            self.config = config

        async def probe(self) -> None:
            pass

    class P(Recorder):
        @hookimpl
        def register_llm_providers(self):
            from sdk import ProviderType

            return [ProviderType(type="mock", factory=Mock, default_model="mock-1")]

    path = tmp_path / "aman.toml"
    path.write_text('[llm]\ndefault_provider = "m"\n\n[llm.providers.m]\ntype = "mock"\n')
    client = await serve_kernel(make_kernel(P(), config_path=path))
    body = await (await client.get("/health/llm")).get_json()
    assert (body["provider"], body["type"], body["model"]) == ("m", "mock", "mock-1")


async def test_hook_register_sources(make_kernel, serve_kernel):
    class Once:
        id, kind, mode, trust_level = "plugin:once", "plugin", "push", "trusted"

        def settings(self):
            return {}

        async def start(self, emit) -> None:
            await emit("once.started", {"ok": True})

        async def stop(self) -> None: ...

        async def pause(self) -> None: ...

        async def resume(self) -> None: ...

        async def reconfigure(self, changes) -> None: ...

    class P(Recorder):
        @hookimpl
        def register_sources(self):
            return [Once()]

    kernel = make_kernel(P())
    await serve_kernel(kernel)
    events = await kernel.bus.recent(10, event_type="once.started")
    assert [(e.source, e.payload) for e in events] == [("plugin:once", {"ok": True})]
    assert kernel.sources.get("plugin:once").events_emitted == 1


async def test_hook_register_im_channels(make_kernel, serve_kernel):
    from sdk import ImChannel

    class Source:
        kind, mode, trust_level = "im", "push", "untrusted"

        def __init__(self, instance: str) -> None:
            self.id = f"chat:mock:{instance}"

        def settings(self):
            return {}

        async def start(self, emit) -> None: ...

        async def stop(self) -> None: ...

        async def pause(self) -> None: ...

        async def resume(self) -> None: ...

        async def reconfigure(self, changes) -> None: ...

    class P(Recorder):
        @hookimpl
        def register_im_channels(self):
            return [ImChannel(platform="mock", factory=Source)]

    kernel = make_kernel(P())
    client = await serve_kernel(kernel)
    resp = await client.post("/im-channel/mock/main/reload")
    assert await resp.get_json() == {"ok": True, "source_id": "chat:mock:main"}
    assert kernel.sources.get("chat:mock:main").state == "running"
