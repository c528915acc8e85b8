"""``/notifications/*``, the ``notifications`` subscriber and the NOTIFIER service (http-api §13)."""

from __future__ import annotations

import asyncio

import pytest

from builtin_plugins.notifications import NOTIFICATIONS
from sdk import NOTIFIER, Invalid, hookimpl
from sdk.testing import Recorder, wait_for

CONFIRM = {"x-aman-confirm": "yes"}
KEYS = {
    "id", "severity", "category", "created_at", "title", "message", "dismissed", "dismissible",
    "action_label", "action_route", "event_id", "source",
}



async def answer(resp):
    return resp.status_code, await resp.get_json()


@pytest.fixture(name="served")
async def _served(make_kernel, serve_kernel):
    recorder = Recorder("notification:created")
    kernel = make_kernel(recorder)
    client = await serve_kernel(kernel)
    return client, kernel, recorder


async def send(client, **body) -> str:
    status, out = await answer(await client.post("/notifications/send", json=body))
    assert status == 200 and out["ok"] is True, out
    return out["id"]


async def items(client, query: str = "") -> list[dict]:
    status, out = await answer(await client.get(f"/notifications{query}"))
    assert status == 200, out
    return out


async def count(client) -> int:
    return (await answer(await client.get("/notifications/unread-count")))[1]["count"]


# --- send, test and the object -----------------------------------------------------------------


async def test_send_stores_the_object_and_publishes_created(served):
    client, kernel, recorder = served
    nid = await send(
        client, message="Disk almost full on host a", severity="warning", category="gateway",
        action_label="Open", action_route="/ui/disk",
    )
    [item] = await items(client)
    assert set(item) == KEYS
    assert item["id"] == nid and item["created_at"] > 0
    assert {k: v for k, v in item.items() if k not in ("id", "created_at")} == {
        "severity": "warning", "category": "gateway", "title": "Disk almost full on host a",
        "message": "Disk almost full on host a", "dismissed": False, "dismissible": True,
        "action_label": "Open", "action_route": "/ui/disk", "event_id": None, "source": "api:api",
    } or item["source"].startswith("api:")
    await wait_for(lambda: recorder.seen)
    event = recorder.seen[0]
    assert event.source == "notifications"
    assert event.payload == {"id": nid, "severity": "warning", "category": "gateway",
                             "title": "Disk almost full on host a"}
    assert event.delivery == "at_most_once"


async def test_send_defaults_operator_and_title_truncation(served):
    client, _, _ = served
    text = "x" * 80
    await client.post("/notifications/send", json={"message": text, "action_label": "only"},
                      headers={"x-aman-operator": "ops"})
    [item] = await items(client)
    assert (item["title"], item["severity"], item["category"], item["source"]) == (
        "x" * 50, "info", "plugin", "api:ops")
    assert (item["action_label"], item["action_route"]) == (None, None)  # only both attach


async def test_send_critical_is_not_dismissible(served):
    client, _, _ = served
    await send(client, message="boom", severity="critical")
    assert (await items(client))[0]["dismissible"] is False


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "missing required field 'message'"),
        ({"message": 3}, "field 'message' must be a string"),
        ({"message": "m", "severity": "loud"},
         "invalid value for 'severity': 'loud' (expected one of: critical, warning, info)"),
        ({"message": "m", "category": "misc"},
         "invalid value for 'category': 'misc' (expected one of: backpressure, security, workflow,"
         " llm, plugin, skill, dlq, gateway, secret, idle)"),
        ({"message": "m" * 2001}, "field 'message' must be at most 2000 characters"),
        ({"message": "m", "title": "t" * 201}, "field 'title' must be at most 200 characters"),
    ],
)
async def test_send_rejects_bad_bodies(served, body, error):
    client, _, _ = served
    assert await answer(await client.post("/notifications/send", json=body)) == (400, {"error": error})
    assert await items(client) == []


async def test_test_notification_without_a_token(served):
    client, _, recorder = served
    status, out = await answer(await client.post("/notifications/test"))
    assert status == 200 and out["ok"] is True
    [item] = await items(client)
    assert (item["id"], item["severity"], item["category"], item["title"], item["message"],
            item["source"]) == (out["id"], "warning", "gateway", "Test notification",
                                "This is a test notification.", "api")
    await wait_for(lambda: recorder.seen)
    status, out = await answer(await client.post(
        "/notifications/test",
        json={"severity": "critical", "title": "T", "message": "M", "action_label": "Go",
              "action_route": "/x"},
    ))
    assert status == 200
    item = (await items(client))[0]
    assert (item["severity"], item["title"], item["message"], item["action_label"],
            item["action_route"], item["dismissible"]) == ("critical", "T", "M", "Go", "/x", False)
    assert (await answer(await client.post("/notifications/test", json={"severity": "x"})))[0] == 400


async def test_test_notification_with_a_token_is_forbidden(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(settings={"http.token": "s3cret"}))
    auth = {"Authorization": "Bearer s3cret"}
    assert await answer(await client.post("/notifications/test", headers=auth)) == (
        403, {"error": "test notifications are disabled when an API token is configured"})
    assert await answer(await client.get("/notifications", headers=auth)) == (200, [])
    assert (await client.get("/notifications")).status_code == 401


# --- list filters and pagination ---------------------------------------------------------------


async def test_list_filters_and_pagination(served):
    client, _, _ = served
    ids = [
        await send(client, message="a", severity="info", category="plugin"),
        await send(client, message="b", severity="warning", category="llm"),
        await send(client, message="c", severity="critical", category="llm"),
        await send(client, message="d", severity="warning", category="dlq"),
    ]
    assert [i["id"] for i in await items(client)] == ids[::-1]  # newest first
    assert [i["message"] for i in await items(client, "?severity=warning")] == ["d", "b"]
    assert [i["message"] for i in await items(client, "?severity=info")] == ["a"]
    assert [i["message"] for i in await items(client, "?category=llm")] == ["c", "b"]
    assert [i["message"] for i in await items(client, "?category=llm&severity=critical")] == ["c"]
    assert [i["message"] for i in await items(client, "?limit=2")] == ["d", "c"]
    assert [i["message"] for i in await items(client, "?limit=2&offset=2")] == ["b", "a"]
    assert [i["message"] for i in await items(client, "?offset=10")] == []
    assert [i["message"] for i in await items(client, "?limit=0")] == ["d"]  # raised to 1
    assert len(await items(client, "?limit=9999")) == 4  # lowered to 500
    await client.post(f"/notifications/{ids[1]}/dismiss")
    assert [i["message"] for i in await items(client)] == ["d", "c", "a"]
    assert [i["message"] for i in await items(client, "?active_only=false")] == ["d", "c", "b", "a"]
    assert [i["dismissed"] for i in await items(client, "?active_only=no")] == [False, False, True, False]


async def test_an_offset_beyond_64_bits_is_clamped_not_a_500(served):
    """Found by schemathesis: an offset SQLite cannot hold overflowed the query (500)."""
    client, _, _ = served
    await send(client, message="a")
    assert await items(client, f"?offset={10**30}") == []


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("severity=loud", "invalid value for 'severity': 'loud' (expected one of: critical, warning, info)"),
        ("category=misc", "invalid value for 'category': 'misc' (expected one of: backpressure, security,"
                          " workflow, llm, plugin, skill, dlq, gateway, secret, idle)"),
        ("limit=-1", "invalid query parameter 'limit': expected a non-negative integer"),
        ("offset=x", "invalid query parameter 'offset': expected a non-negative integer"),
        ("active_only=maybe", "invalid query parameter 'active_only': expected a boolean"),
    ],
)
async def test_list_rejects_bad_queries(served, query, error):
    client, _, _ = served
    assert await answer(await client.get(f"/notifications?{query}")) == (400, {"error": error})


# --- dismiss, ack, dismiss-all, unread count -----------------------------------------------------


async def test_dismiss_ack_and_unread_count(served):
    client, _, _ = served
    warn = await send(client, message="w", severity="warning")
    crit = await send(client, message="c", severity="critical")
    assert await count(client) == 2
    for _ in range(2):  # idempotent
        assert await answer(await client.post(f"/notifications/{warn}/dismiss")) == (200, {"ok": True})
    assert await count(client) == 1
    assert await answer(await client.post(f"/notifications/{crit}/dismiss")) == (
        404, {"error": f"notification not found or not dismissible: {crit}"})
    assert await count(client) == 1
    for _ in range(2):
        assert await answer(await client.post(f"/notifications/{crit}/ack")) == (200, {"ok": True})
    assert await count(client) == 0
    assert await answer(await client.post(f"/notifications/{warn}/ack")) == (200, {"ok": True})


async def test_unknown_ids_are_404(served):
    client, _, _ = served
    for action in ("dismiss", "ack"):
        assert await answer(await client.post(f"/notifications/nope/{action}")) == (
            404, {"error": "notification not found: nope"})


async def test_dismiss_all_keeps_critical_ones(served):
    client, _, _ = served
    await send(client, message="a", severity="info")
    await send(client, message="b", severity="warning")
    crit = await send(client, message="c", severity="critical")
    assert await answer(await client.post("/notifications/dismiss-all")) == (
        200, {"ok": True, "dismissed": 2})
    assert await answer(await client.post("/notifications/dismiss-all")) == (
        200, {"ok": True, "dismissed": 0})
    assert [i["id"] for i in await items(client)] == [crit]
    assert await count(client) == 1


async def test_notification_endpoints_write_no_audit_records(served):
    client, kernel, _ = served
    nid = await send(client, message="a")
    await client.post(f"/notifications/{nid}/dismiss")
    await client.post("/notifications/dismiss-all")
    await client.post("/notifications/test")
    page = await kernel.audit.query()
    assert not [r for r in page.items if "notification" in r.action or "notification" in r.target]


# --- subscriber ---------------------------------------------------------------------------------


async def test_subscriber_turns_events_into_notifications(served):
    client, kernel, recorder = served
    llm = await kernel.bus.publish(
        "llm_error", {"agent_id": "aman", "session_id": "cs1", "error": "HTTP 502", "provider": "openai"},
        source="agent:aman", delivery="at_least_once",
    )
    await kernel.bus.publish("injection_detected", {"session_id": "cs1", "pattern": "ignore previous"},
                             source="chat:sanitizer", delivery="at_least_once")
    await kernel.bus.publish("output_blocked", {"agent_id": "aman", "session_id": "cs1", "reason": "pii"},
                             source="agent:aman")
    await kernel.bus.publish("message:completed", {"x": 1}, source="skill:dispatcher")  # ignored
    await wait_for(lambda: len(recorder.seen) >= 3)
    found = {i["title"]: i for i in await items(client)}
    assert set(found) == {"LLM call failed", "Prompt injection detected", "Reply blocked by output policy"}
    item = found["LLM call failed"]
    assert (item["severity"], item["category"], item["message"], item["action_label"],
            item["action_route"], item["event_id"], item["source"]) == (
        "warning", "llm", "agent aman: HTTP 502", "Open session", "/chat/cs1", llm.id, "agent:aman")
    item = found["Prompt injection detected"]
    assert (item["severity"], item["category"], item["message"], item["dismissible"]) == (
        "critical", "security", "Source: chat:sanitizer, pattern: ignore previous", False)
    assert found["Reply blocked by output policy"]["message"] == "Reason: pii"


async def test_subscriber_other_triggers(served):
    client, kernel, recorder = served
    bus = kernel.bus
    await bus.publish("llm_backend_down", {"provider": "openai"}, source="llm:openai")
    await bus.publish("llm_backend_recovered", {}, source="llm:openai")
    await bus.publish("skill_reloaded", {"removed": ["a", "b", "c"]}, source="skill:hot_reload")
    await bus.publish("skill_reloaded", {"removed": ["a", "b"]}, source="skill:hot_reload")  # ignored
    await bus.publish("workflow_state_changed", {
        "instance_id": "i1", "workflow_name": "approval", "from_state": "PENDING",
        "to_state": "ERROR", "event": "FAIL", "reason": "action failed"}, source="workflow:approval")
    await bus.publish("workflow_state_changed", {
        "instance_id": "s1", "workflow_name": "message-session", "from_state": "IDLE",
        "to_state": "CLOSED", "event": "TIMEOUT", "reason": "Timeout"}, source="workflow:message-session")
    await bus.publish("agent:reply_ready", {"agent_id": "aman", "session_id": "s", "reply": "r" * 200,
                                            "background": True}, source="agent:aman")
    await bus.publish("agent:reply_ready", {"agent_id": "aman", "session_id": "s", "reply": "x",
                                            "background": False}, source="agent:aman")  # ignored
    for _ in range(2):
        await bus.publish("dlq:enqueued", {"id": "d", "event_type": "e",
                                           "reason": "DeliveryFailed: plugin:x: boom"}, source="dlq")
    await wait_for(lambda: len(recorder.seen) >= 7)
    found = {(i["title"], i["severity"], i["category"], i["message"]) for i in await items(client)}
    assert found == {
        ("LLM backend unavailable", "critical", "llm", "openai"),
        ("LLM backend recovered", "info", "gateway", "openai"),
        ("Several skills were removed", "warning", "skill", "a, b, c"),
        ("Workflow entered its error state", "warning", "workflow", "approval i1"),
        ("Session closed after a timeout", "warning", "workflow", "s1"),
        ("aman finished a background task", "info", "idle", "r" * 120),
        ("Events dead-lettered", "warning", "dlq", "1 events failed for plugin:x"),  # once an hour
    }


async def test_backpressure_watch(served):
    client, kernel, _ = served
    from builtin_plugins.notifications import _SUBSCRIBER

    subscriber = kernel.stash[_SUBSCRIBER]

    class Bus:
        level = "L3"

        def stats(self):
            return {"overflow_depth": 7}

    real, subscriber._ctx = subscriber._ctx, type("Ctx", (), {"bus": Bus()})()
    try:
        await subscriber.check_backpressure()
        await subscriber.check_backpressure()  # at most one per 10 minutes
        Bus.level = "L4B"
        await subscriber.check_backpressure()
    finally:
        subscriber._ctx = real
    titles = [(i["title"], i["message"]) for i in await items(client)]
    assert titles == [("Event overflow store nearly full", "overflow events: 7"),
                      ("Event bus under pressure", "level L3")]


# --- storage ------------------------------------------------------------------------------------


async def test_notifications_persist_across_a_restart(make_kernel, serve_kernel, tmp_path):
    runtime = tmp_path / "rt"
    kernel = make_kernel(runtime_dir=runtime)
    client = await serve_kernel(kernel)
    nid = await send(client, message="kept", severity="warning")
    crit = await send(client, message="crit", severity="critical")
    await client.post(f"/notifications/{nid}/dismiss")
    await kernel.lifecycle.shutdown()
    kernel = make_kernel(runtime_dir=runtime)
    client = await serve_kernel(kernel)
    listed = await items(client, "?active_only=false")
    assert [(i["id"], i["dismissed"]) for i in listed] == [(crit, False), (nid, True)]
    assert await count(client) == 1


async def test_max_items_prunes_the_oldest(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(settings={"notifications.max_items": 3}))
    ids = [await send(client, message=str(n)) for n in range(5)]
    assert [i["id"] for i in await items(client, "?active_only=false")] == ids[:1:-1]


# --- the NOTIFIER service and the disabled plugin ----------------------------------------------


async def test_notifier_service(served):
    client, kernel, recorder = served
    notifier = kernel.stash[NOTIFIER]
    nid = await notifier.notify(severity="critical", category="plugin", title="Plugin x failed",
                                body="x: boom", source="plugin:x")
    [item] = await items(client)
    assert (item["id"], item["title"], item["message"], item["source"], item["dismissible"]) == (
        nid, "Plugin x failed", "x: boom", "plugin:x", False)
    await wait_for(lambda: recorder.seen)
    with pytest.raises(Invalid):
        await notifier.notify(severity="loud", category="plugin", title="t")
    with pytest.raises(Invalid):
        await notifier.notify(severity="info", category="misc", title="t")
    item = await kernel.stash[NOTIFICATIONS].get(nid)
    assert item is not None


async def test_disabled_plugin_answers_503_and_creates_nothing(served):
    client, kernel, recorder = served
    assert (await client.post("/plugin/notifications/disable", headers=CONFIRM)).status_code == 200
    assert NOTIFIER not in kernel.stash
    for method, path in (
        ("GET", "/notifications"), ("GET", "/notifications/unread-count"),
        ("POST", "/notifications/x/dismiss"), ("POST", "/notifications/x/ack"),
        ("POST", "/notifications/dismiss-all"), ("POST", "/notifications/test"),
        ("POST", "/notifications/send"),
    ):
        resp = await client.open(path, method=method, json={})
        assert await answer(resp) == (503, {"error": "plugin notifications is disabled"}), path
    await kernel.bus.publish("llm_backend_down", {}, source="llm:openai")
    assert (await client.post("/plugin/notifications/enable")).status_code == 200
    assert NOTIFIER in kernel.stash
    assert await items(client) == []


class Broken:
    name = "broken"

    @hookimpl
    def on_startup(self):
        raise RuntimeError("no database")


async def test_a_plugin_that_failed_at_start_up_raises_a_warning(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(Broken()))
    for _ in range(1000):
        found = await items(client, "?category=plugin")
        if found:
            break
        await asyncio.sleep(0.005)
    [item] = found
    assert (item["severity"], item["title"]) == ("warning", "Plugin failed to load")
    assert item["message"].startswith("broken: ") and "no database" in item["message"]
