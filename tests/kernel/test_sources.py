"""The source registry and the ``sources`` routes (http-api §6)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest

from sdk import EventHandler, ImChannel, Invalid, NotFound, hookimpl
from sdk.testing import wait_for

CONFIRM = {"x-aman-confirm": "yes"}



class Manual:
    """A push source that emits when told; records what the registry asked of it."""

    kind, mode, trust_level = "plugin", "push", "trusted"

    def __init__(self, source_id: str = "plugin:manual") -> None:
        self.id = source_id
        self.calls: list[str] = []
        self.every = 1
        self.emit: Any = None

    def settings(self) -> Mapping[str, Any]:
        return {"every": self.every}

    async def start(self, emit) -> None:
        self.calls.append("start")
        self.emit = emit

    async def stop(self) -> None:
        self.calls.append("stop")

    async def pause(self) -> None:
        self.calls.append("pause")

    async def resume(self) -> None:
        self.calls.append("resume")

    async def reconfigure(self, changes) -> None:
        if set(changes) - {"every"}:
            raise Invalid(
                f"unknown config key for source {self.id}: {sorted(set(changes) - {'every'})[0]}"
            )
        self.every = changes.get("every", self.every)


class Owner:
    name = "owner"

    def __init__(self, *sources: Manual) -> None:
        self.sources = list(sources)
        self.seen: list[Any] = []

    @hookimpl
    def register_sources(self):
        return self.sources

    @hookimpl
    def register_event_handlers(self):
        return [EventHandler(name="seen", handler=self.handle, event_types=("manual.event",))]

    async def handle(self, event) -> None:
        self.seen.append((event.source, event.trust_level, event.payload))


@pytest.fixture(name="setup")
async def _setup(make_kernel, serve_kernel):
    source = Manual()
    owner = Owner(source)
    kernel = make_kernel(owner)
    client = await serve_kernel(kernel)
    return client, kernel, source, owner


async def test_sources_start_at_phase_4_and_emit_as_themselves(setup):
    client, kernel, source, owner = setup
    assert source.calls == ["start"]
    await source.emit("manual.event", {"n": 1})
    await wait_for(lambda: owner.seen == [("plugin:manual", "trusted", {"n": 1})])
    body = await (await client.get("/event-sources")).get_json()
    (info,) = [s for s in body["items"] if s["id"] == "plugin:manual"]
    assert info == {
        "id": "plugin:manual",
        "kind": "plugin",
        "plugin": "owner",
        "mode": "push",
        "trust_level": "trusted",
        "state": "running",
        "paused_by": [],
        "config": {"every": 1},
        "events_emitted": 1,
        "last_event_at_ms": info["last_event_at_ms"],
    }
    assert isinstance(info["last_event_at_ms"], int)


@pytest.mark.parametrize("prefix", ["/event-source", "/source"])
async def test_pause_and_resume_over_http(setup, prefix):
    client, kernel, source, _ = setup
    resp = await client.post(f"{prefix}/plugin:manual/pause", headers={"x-aman-operator": "ops"})
    body = await resp.get_json()
    assert body["ok"] is True
    assert (body["source"]["state"], body["source"]["paused_by"]) == ("paused", ["operator"])
    assert source.calls[-1] == "pause"
    from sdk import Unavailable

    with pytest.raises(Unavailable, match="source plugin:manual is paused"):
        await source.emit("manual.event", {})
    again = await client.post(f"{prefix}/plugin:manual/pause")  # idempotent
    assert (await again.get_json())["source"]["paused_by"] == ["operator"]
    resp = await client.post(f"{prefix}/plugin:manual/resume")
    assert (await resp.get_json())["source"]["state"] == "running"
    assert source.calls[-1] == "resume"
    page = await kernel.audit.query(action="source.*")
    assert [(r.action, r.target) for r in page.items][-1] == (
        "source.pause",
        "source:plugin:manual",
    )


async def test_unknown_source_is_404(setup):
    client, *_ = setup
    for method, path in [
        ("POST", "/event-source/nope/pause"),
        ("POST", "/source/nope/resume"),
        ("PUT", "/event-source/nope/config"),
    ]:
        resp = await client.open(path, method=method, json={})
        assert (resp.status_code, (await resp.get_json())["error"]) == (
            404,
            "source not found: nope",
        )


async def test_configure_applies_or_refuses(setup):
    client, kernel, source, _ = setup
    resp = await client.put("/event-source/plugin:manual/config", json={"every": 5})
    assert (await resp.get_json())["source"]["config"] == {"every": 5}
    resp = await client.put("/event-source/plugin:manual/config", json={"every": 6, "bogus": 1})
    assert (resp.status_code, (await resp.get_json())["error"]) == (
        400,
        "unknown config key for source plugin:manual: bogus",
    )
    assert source.every == 5
    resp = await client.put("/event-source/plugin:manual/config", json=[1])
    assert (resp.status_code, (await resp.get_json())["error"]) == (
        400,
        "request body must be a JSON object",
    )
    page = await kernel.audit.query(action="source.config")
    assert [(r.outcome, r.detail) for r in page.items][-1] == ("ok", "every")


async def test_operator_pauses_survive_restart(make_kernel, serve_kernel):
    first_source = Manual()
    first = make_kernel(Owner(first_source))
    client = await serve_kernel(first)
    await client.post("/event-source/plugin:manual/pause")
    await first.lifecycle.shutdown()
    assert first_source.calls[-1] == "stop"

    source = Manual()
    second = make_kernel(Owner(source))
    client = await serve_kernel(second)
    info = second.sources.get("plugin:manual")
    assert (info.state, info.paused_by) == ("paused", ["operator"])
    assert source.calls == ["start", "pause"]
    await client.post("/event-source/plugin:manual/resume")
    assert second.sources.get("plugin:manual").state == "running"


async def test_backpressure_pauses_every_source_and_resumes_them(setup):
    _, kernel, source, _ = setup
    kernel.bus._level = "L3"  # the level the watcher reads
    await kernel.sources.apply_backpressure()
    assert kernel.sources.get("plugin:manual").paused_by == ["backpressure"]
    kernel.bus._level = "Normal"
    await kernel.sources.apply_backpressure()
    assert kernel.sources.get("plugin:manual").state == "running"
    assert source.calls[-2:] == ["pause", "resume"]


async def test_disabling_the_owner_removes_its_sources(setup):
    client, kernel, source, _ = setup
    await client.post("/plugin/owner/disable", headers=CONFIRM)
    assert source.calls[-1] == "stop"
    resp = await client.post("/event-source/plugin:manual/pause")
    assert resp.status_code == 404
    await client.post("/plugin/owner/enable")
    assert kernel.sources.get("plugin:manual").state == "running"


async def test_a_source_id_collision_fails_the_plugin(make_kernel, serve_kernel):
    class Other(Owner):
        name = "other"

    client = await serve_kernel(make_kernel(Owner(Manual("dup")), Other(Manual("dup"))))
    items = (await (await client.get("/plugins")).get_json())["items"]
    other = next(p for p in items if p["name"] == "other")
    assert other["state"] == "failed" and "source already exists: dup" in other["error"]


async def test_plugin_sources_are_rate_limited(setup, monkeypatch):
    _, _, source, _ = setup
    from sdk import Unavailable

    now = [time.monotonic()]  # the limiter's clock from here on, moved by the test alone
    monkeypatch.setattr("kernel.sources.time.monotonic", lambda: now[0])

    async def burst(count: int) -> int:
        refused = 0
        for _ in range(count):
            try:
                await source.emit("manual.burst", None)
            except Unavailable:
                refused += 1
        return refused

    assert await burst(260) == 60  # a burst of 200, then nothing until it refills
    now[0] += 0.5  # 100 events a second: 50 more
    assert await burst(60) == 10


# --- IM channels ---------------------------------------------------------------------------


class Chat:
    name = "chat-im"

    def __init__(self) -> None:
        self.built: list[Manual] = []

    @hookimpl
    def register_im_channels(self):
        def factory(instance: str) -> Manual:
            if instance == "missing":
                raise NotFound(f"credentials not found for slack/{instance}")
            if instance == "broken":
                raise Invalid(f"invalid credentials for slack/{instance}: empty token")
            if instance == "crash":
                raise RuntimeError("slack client exploded")
            source = Manual(f"chat:slack:{instance}")
            self.built.append(source)
            return source

        return [ImChannel(platform="slack", factory=factory)]


async def test_im_channel_reload(make_kernel, serve_kernel):
    chat = Chat()
    kernel = make_kernel(chat)
    client = await serve_kernel(kernel)
    resp = await client.post("/im-channel/slack/team/reload")
    assert await resp.get_json() == {"ok": True, "source_id": "chat:slack:team"}
    resp = await client.post("/im-channel/slack/team/reload")
    assert (await resp.get_json())["source_id"] == "chat:slack:team"
    first, second = chat.built
    assert first.calls == ["start", "stop"] and second.calls == ["start"]
    assert kernel.sources.get("chat:slack:team").plugin == "chat-im"
    page = await kernel.audit.query(action="im_channel.reload")
    assert page.items[0].target == "slack/team"

    for path, status, error in [
        ("/im-channel/teams/x/reload", 404, "unsupported platform for hot-reload: teams"),
        ("/im-channel/slack/missing/reload", 404, "credentials not found for slack/missing"),
        (
            "/im-channel/slack/broken/reload",
            400,
            "invalid credentials for slack/broken: empty token",
        ),
        ("/im-channel/slack/crash/reload", 500, "slack client exploded"),
    ]:
        resp = await client.post(path)
        assert (resp.status_code, (await resp.get_json())["error"]) == (status, error)


async def test_removing_for_good_forgets_the_operator_pause(setup):
    client, kernel, _, _ = setup
    await client.post("/event-source/plugin:manual/pause")
    await kernel.sources.remove("plugin:manual")  # kept: the source may come back
    await kernel.sources.add("owner", Manual())
    assert kernel.sources.get("plugin:manual").paused_by == ["operator"]
    await kernel.sources.remove("plugin:manual", forget=True)
    await kernel.sources.add("owner", Manual())
    assert kernel.sources.get("plugin:manual").state == "running"
