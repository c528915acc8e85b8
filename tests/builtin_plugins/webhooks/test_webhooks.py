"""``POST /webhook/{name}`` and the ``webhook:<name>`` sources (docs/decisions.md, Webhooks)."""

from __future__ import annotations

import asyncio
import tomllib
from typing import Any

import pytest

from sdk.testing import Recorder, wait_for

TOKEN = {"Authorization": "Bearer s3cret"}
CONFIRM = {**TOKEN, "x-aman-confirm": "yes"}



TABLES = (
    '[http]\ntoken = "s3cret"\nmax_body_bytes = 2048\n\n'
    "[sources.webhook.github]\n\n"
    '[sources.webhook.ci]\nevent_type = "ci.build"\n\n'
    "[sources.webhook.off]\nenabled = false\n"
)


@pytest.fixture(name="setup")
async def _setup(make_kernel, serve_kernel, tmp_path):
    path = tmp_path / "aman.toml"
    path.write_text(TABLES)
    recorder = Recorder(sources=("webhook:github", "webhook:ci"))
    kernel = make_kernel(recorder, config_path=path)
    client = await serve_kernel(kernel)
    return client, kernel, recorder, path


async def test_a_json_post_becomes_an_untrusted_guaranteed_event(setup):
    client, kernel, recorder, _ = setup
    resp = await client.post(
        "/webhook/github", json={"action": "opened", "number": 7}, headers={**TOKEN, "x-aman-operator": "gh"}
    )
    body = await resp.get_json()
    assert resp.status_code == 200, body
    assert body == {"ok": True, "id": body["id"], "status": "queued"}
    await wait_for(lambda: len(recorder.seen) == 1)
    (event,) = recorder.seen
    assert (event.id, event.source, event.event_type, event.trust_level, event.delivery) == (
        body["id"],
        "webhook:github",
        "webhook_received",
        "untrusted",
        "at_least_once",
    )
    assert event.payload == {
        "name": "github",
        "content_type": "application/json",
        "body": {"action": "opened", "number": 7},
    }
    info = kernel.sources.get("webhook:github")
    assert (info.kind, info.mode, info.plugin, info.state, info.config, info.events_emitted) == (
        "webhook",
        "push",
        "webhooks",
        "running",
        {"event_type": "webhook_received"},
        1,
    )
    page = await kernel.audit.query(action="webhook.receive")
    assert [(r.operator, r.target, r.outcome, r.detail) for r in page.items] == [
        ("gh", "source:webhook:github", "ok", body["id"])
    ]


async def test_any_other_body_is_text_and_the_event_type_is_configurable(setup):
    client, kernel, recorder, _ = setup
    resp = await client.post(
        "/webhook/ci", data="build 12 passed", headers={**TOKEN, "content-type": "text/plain; charset=utf-8"}
    )
    assert resp.status_code == 200, await resp.get_json()
    resp = await client.post("/webhook/ci", headers=TOKEN)
    assert resp.status_code == 200
    await wait_for(lambda: len(recorder.seen) == 2)
    assert [(e.event_type, e.payload) for e in recorder.seen] == [
        ("ci.build", {"name": "ci", "content_type": "text/plain; charset=utf-8", "body": "build 12 passed"}),
        ("ci.build", {"name": "ci", "content_type": "", "body": ""}),
    ]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"data": b"\xff\xfe", "headers": {"content-type": "application/octet-stream"}}, 400,
         "webhook body must be JSON or UTF-8 text"),
        ({"data": "{oops", "headers": {"content-type": "application/json"}}, 400, None),
        ({"data": "x" * 3000, "headers": {"content-type": "text/plain"}}, 413,
         "request body too large (limit 2048 bytes)"),
    ],
)
async def test_bad_bodies_are_refused(setup, kwargs, status, message):
    client, kernel, recorder, _ = setup
    resp = await client.post("/webhook/github", **{**kwargs, "headers": {**TOKEN, **kwargs["headers"]}})
    error = (await resp.get_json())["error"]
    assert resp.status_code == status
    if message is not None:
        assert error == message
    else:
        assert error.startswith("invalid JSON body: ")
    await asyncio.sleep(0.05)
    assert recorder.seen == []


async def test_the_route_needs_the_token(setup):
    client, *_ = setup
    resp = await client.post("/webhook/github", json={})
    assert resp.status_code == 401


async def test_unknown_and_disabled_webhooks_are_404(setup):
    client, *_ = setup
    for name in ("nope", "off"):
        resp = await client.post(f"/webhook/{name}", json={}, headers=TOKEN)
        assert (resp.status_code, await resp.get_json()) == (404, {"error": f"source not found: webhook:{name}"})


async def test_a_paused_webhook_answers_503(setup):
    client, kernel, recorder, _ = setup
    resp = await client.post("/event-source/webhook:github/pause", headers=TOKEN)
    assert resp.status_code == 200
    resp = await client.post("/webhook/github", json={"a": 1}, headers=TOKEN)
    assert (resp.status_code, await resp.get_json()) == (503, {"error": "source webhook:github is paused"})
    await client.post("/event-source/webhook:github/resume", headers=TOKEN)
    resp = await client.post("/webhook/github", json={"a": 2}, headers=TOKEN)
    assert resp.status_code == 200
    await wait_for(lambda: [e.payload["body"] for e in recorder.seen] == [{"a": 2}])
    page = await kernel.audit.query(action="webhook.receive")
    assert ("error", "source webhook:github is paused") in [(r.outcome, r.detail) for r in page.items]


async def test_backpressure_refuses_webhooks(setup):
    client, kernel, recorder, _ = setup
    kernel.bus._level = "L3"  # as the watcher would see it
    await kernel.sources.apply_backpressure()
    resp = await client.post("/webhook/github", json={}, headers=TOKEN)
    assert (resp.status_code, resp.headers.get("Retry-After")) == (503, "1")
    kernel.bus._level = "Normal"
    await kernel.sources.apply_backpressure()
    assert (await client.post("/webhook/github", json={}, headers=TOKEN)).status_code == 200


async def config_set(client, changes: dict[str, Any]):
    return await client.post("/config/set", json={"changes": changes}, headers=CONFIRM)


async def test_tables_are_live(setup):
    client, kernel, recorder, path = setup
    resp = await config_set(client, {"sources.webhook.new.event_type": "new.thing"})
    assert resp.status_code == 200, await resp.get_json()
    assert (await client.post("/webhook/new", json={}, headers=TOKEN)).status_code == 200
    assert kernel.sources.get("webhook:new").config == {"event_type": "new.thing"}

    await config_set(client, {"sources.webhook.ci.event_type": "ci.done"})
    assert kernel.sources.get("webhook:ci").config == {"event_type": "ci.done"}

    await config_set(client, {"sources.webhook.new.event_type": None})
    assert (await client.post("/webhook/new", json={}, headers=TOKEN)).status_code == 404
    assert "webhook:new" not in {s.id for s in kernel.sources.list()}

    await config_set(client, {"sources.webhook.off.enabled": True})
    assert (await client.post("/webhook/off", json={}, headers=TOKEN)).status_code == 200

    for changes, message in [
        ({"sources.webhook.x.event_type": " padded"},
         "invalid configuration: sources.webhook.x.event_type must be 1-128 characters"
         " without control characters or surrounding whitespace"),
        ({"sources.webhook.x.secret": "s"}, "unknown config key: sources.webhook.x.secret"),
    ]:
        resp = await config_set(client, changes)
        assert (resp.status_code, (await resp.get_json())["error"]) == (400, message)


async def test_reconfigure_writes_back(setup):
    client, kernel, recorder, path = setup
    resp = await client.put("/event-source/webhook:github/config", json={"event_type": "gh.push"}, headers=TOKEN)
    assert resp.status_code == 200, await resp.get_json()
    assert tomllib.loads(path.read_text())["sources"]["webhook"]["github"] == {"event_type": "gh.push"}
    await client.post("/webhook/github", json={}, headers=TOKEN)
    await wait_for(lambda: [e.event_type for e in recorder.seen] == ["gh.push"])
    for body, message in [
        ({"enabled": False}, "unknown config key for source webhook:github: enabled"),
        ({"event_type": ""}, "event_type must be 1-128 characters without control characters or surrounding whitespace"),
        ({"event_type": 5}, "event_type must be a string"),
    ]:
        resp = await client.put("/event-source/webhook:github/config", json=body, headers=TOKEN)
        assert (resp.status_code, (await resp.get_json())["error"]) == (400, message)


async def test_disabled_webhooks_plugin_answers_503_and_drops_its_sources(setup):
    client, kernel, *_ = setup
    assert (await client.post("/plugin/webhooks/disable", headers=CONFIRM)).status_code == 200
    resp = await client.post("/webhook/github", json={}, headers=TOKEN)
    assert (resp.status_code, await resp.get_json()) == (503, {"error": "plugin webhooks is disabled"})
    assert [s.id for s in kernel.sources.list() if s.kind == "webhook"] == []
    assert (await client.post("/plugin/webhooks/enable", headers=TOKEN)).status_code == 200
    assert (await client.post("/webhook/github", json={}, headers=TOKEN)).status_code == 200
