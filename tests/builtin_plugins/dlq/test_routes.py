"""``/dlq``, ``/dlq/depth``, ``/debug/dlq/enqueue``, ``/dlq/{id}/retry``, ``/dlq/{id}/discard`` and
the archiving of expired entries (http-api §9), with real subscribers failing and recovering."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import builtin_plugins.dlq as dlq_plugin
from sdk import Event, EventHandler, hookimpl

DAY_MS = 86_400_000
SETTINGS = {
    "debug.force_enable_debug_endpoints": True,
    "event_bus.retry_backoff_ms": [1],
    "plugins.quarantine_after_failures": 100,
}
CONFIRM = {"x-aman-confirm": "yes"}


class Flaky:
    """A subscriber plugin for ``order.*`` events: raises while ``failing``; ``gate`` holds it."""

    def __init__(self, name: str = "flaky", *, failing: bool = True) -> None:
        self.name = name
        self.failing = failing
        self.calls = 0
        self.seen: list[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    @hookimpl
    def register_event_handlers(self) -> list[EventHandler]:
        return [EventHandler(name="orders", handler=self.handle, event_types=("order.created",))]

    async def handle(self, event: Event) -> None:
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        if self.failing:
            raise ValueError(f"shop is down ({self.calls})")
        self.seen.append(event.payload)


class Blocker:
    """Holds ``fill`` events, to raise the bus's backpressure level."""

    name = "blocker"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    @hookimpl
    def register_event_handlers(self) -> list[EventHandler]:
        return [EventHandler(name="fill", handler=self.handle, event_types=("fill",))]

    async def handle(self, event: Event) -> None:
        self.entered.set()
        await self.gate.wait()


async def eventually(check, timeout: float = 5.0) -> None:
    """Poll ``check`` (sync or async) until it is true, failing after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


@pytest.fixture(name="start")
def _start(make_kernel, serve_kernel):
    async def start(*plugins: object, **settings: Any):
        kernel = make_kernel(*plugins, settings={**SETTINGS, **settings})
        client = await serve_kernel(kernel)
        return client, kernel

    return start


async def depth(client) -> int:
    resp = await client.get("/dlq/depth")
    assert resp.status_code == 200
    return (await resp.get_json())["depth"]


async def entries(client, query: str = "") -> list[dict[str, Any]]:
    resp = await client.get(f"/dlq{query}")
    assert resp.status_code == 200, await resp.get_json()
    return (await resp.get_json())["items"]


async def stored(kernel, entry_id: str) -> bool:
    rows = await kernel.store.fetchall("SELECT 1 FROM dead_letters WHERE id = ?", (entry_id,))
    return bool(rows)


async def dead_letter(client, payload: Any = 1) -> str:
    """Push an order over HTTP and wait until the failing subscriber dead-letters it."""
    before = await depth(client)
    resp = await client.post("/events/push", json={"source": "shop", "event_type": "order.created", "payload": payload})
    assert resp.status_code == 200
    event_id: str = (await resp.get_json())["id"]

    async def listed() -> bool:
        return await depth(client) == before + 1

    await eventually(listed)
    return event_id


async def enqueue(client, **body: Any) -> str:
    resp = await client.post("/debug/dlq/enqueue", json={"source": "s", "event_type": "e", "payload": None, **body})
    assert resp.status_code == 200, await resp.get_json()
    return str((await resp.get_json())["id"])


async def retry(client, entry_id: str, body: Any = None, **headers: str):
    if body is None:  # an empty body is fine
        return await client.post(f"/dlq/{entry_id}/retry", headers={**CONFIRM, **headers})
    return await client.post(f"/dlq/{entry_id}/retry", json=body, headers={**CONFIRM, **headers})


async def audits(kernel, action: str) -> list[tuple[str, str, str, str]]:
    page = await kernel.audit.query(action=action)
    return [(r.operator, r.target, r.outcome, r.detail) for r in reversed(page.items)]


# --- the real flow -----------------------------------------------------------------------------


async def test_a_failed_event_is_dead_lettered_and_a_retry_delivers_it(start):
    flaky, good = Flaky(), Flaky("good", failing=False)
    client, kernel = await start(flaky, good)
    event_id = await dead_letter(client, {"order": 7})
    assert flaky.calls == 5  # event_bus.retry_max_attempts
    assert good.seen == [{"order": 7}]
    [entry] = await entries(client)
    dumped = await (await client.get(f"/events/dump/{event_id}")).get_json()
    assert entry["event"] == {**dumped, "metadata": {**dumped["metadata"], "retry_count": 4}}
    assert entry["id"] == event_id
    assert entry["reason"] == "DeliveryFailed: plugin:flaky: ValueError: shop is down (5)"
    assert (entry["failed_subscribers"], entry["state"]) == (["plugin:flaky"], "dead")
    assert (entry["retry_count"], entry["original_retry_count"], entry["retry_history"]) == (0, 4, [])
    assert entry["updated_at_ms"] == entry["enqueued_at_ms"]
    assert entry["expires_at_ms"] == entry["enqueued_at_ms"] + 30 * DAY_MS
    notices = (await (await client.get("/events/recent?event_type=dlq:enqueued")).get_json())["events"]
    assert [(e["source"], e["delivery"], e["payload"]) for e in notices] == [
        ("dlq", "at_most_once", {"id": event_id, "event_type": "order.created", "reason": entry["reason"]})
    ]

    flaky.failing = False
    resp = await retry(client, event_id, {"reason": "shop is back"}, **{"x-aman-operator": "alice"})
    assert (resp.status_code, await resp.get_json()) == (
        200,
        {"ok": True, "id": event_id, "event_id": event_id, "retry_count": 1, "subscribers": ["plugin:flaky"]},
    )
    await eventually(lambda: flaky.seen == [{"order": 7}])
    await eventually(lambda: _gone(kernel, event_id))
    assert good.seen == [{"order": 7}]  # the subscriber that had it does not get it again
    assert await depth(client) == 0 and await entries(client) == []
    recent = (await (await client.get("/events/recent?limit=1")).get_json())["events"]
    assert recent[0]["id"] == event_id  # recorded again by the redelivery
    assert await audits(kernel, "dlq.retry") == [("alice", f"dlq:{event_id}", "ok", "shop is back")]
    resp = await retry(client, event_id)
    assert (resp.status_code, await resp.get_json()) == (404, {"error": f"dlq entry not found: {event_id}"})


async def _gone(kernel, entry_id: str) -> bool:
    return not await stored(kernel, entry_id)


async def test_a_failing_retry_puts_the_entry_back_with_its_count(start):
    flaky = Flaky()
    client, kernel = await start(flaky)
    event_id = await dead_letter(client)
    [before] = await entries(client)
    flaky.gate.clear()  # hold the redelivery while the list is looked at
    resp = await client.post(f"/dlq/{event_id}/retry", headers=CONFIRM)  # no body: the default reason
    assert (await resp.get_json())["retry_count"] == 1
    assert await depth(client) == 0  # retrying entries leave the list and the depth at once
    assert await entries(client) == []
    flaky.gate.set()

    async def back() -> bool:
        return await depth(client) == 1

    await eventually(back)
    [entry] = await entries(client)
    assert flaky.calls == 10
    assert (entry["state"], entry["retry_count"], entry["failed_subscribers"]) == ("dead", 1, ["plugin:flaky"])
    assert entry["reason"] == "DeliveryFailed: plugin:flaky: ValueError: shop is down (10)"
    assert entry["enqueued_at_ms"] == before["enqueued_at_ms"]
    assert entry["updated_at_ms"] >= before["updated_at_ms"]
    [record] = entry["retry_history"]
    assert (record["operator"], record["reason"]) == ("api", "manual retry")
    assert before["enqueued_at_ms"] <= record["at_ms"] <= entry["updated_at_ms"]
    assert await audits(kernel, "dlq.retry") == [("api", f"dlq:{event_id}", "ok", "manual retry")]


async def failed_in(kernel, entry_id: str) -> list[str]:
    rows = await kernel.store.fetchall("SELECT failed_subscribers FROM dead_letters WHERE id = ?", (entry_id,))
    return json.loads(rows[0][0]) if rows else []


async def test_a_failure_added_while_the_entry_is_retried_outlives_the_retry(start):
    fast, slow = Flaky("fast"), Flaky("slow")
    slow.gate.clear()  # its first delivery of the event is still running
    client, kernel = await start(fast, slow)
    event_id = await dead_letter(client)
    assert (await entries(client))[0]["failed_subscribers"] == ["plugin:fast"]
    fast.failing, fast.entered = False, asyncio.Event()
    fast.gate.clear()
    assert (await retry(client, event_id)).status_code == 200
    await fast.entered.wait()  # the retry is being delivered
    slow.gate.set()  # now the other subscriber fails for good, while the entry is retried
    await eventually(lambda: _has(kernel, event_id, "plugin:slow"))
    fast.gate.set()

    async def back() -> bool:
        return await depth(client) == 1

    await eventually(back)
    [entry] = await entries(client)
    assert (entry["state"], entry["failed_subscribers"]) == ("dead", ["plugin:slow"])
    assert entry["reason"].startswith("DeliveryFailed: plugin:slow: ")


async def _has(kernel, entry_id: str, subscriber: str) -> bool:
    return subscriber in await failed_in(kernel, entry_id)


async def test_a_retry_cut_short_by_a_disable_puts_the_entry_back(start):
    flaky = Flaky()
    client, kernel = await start(flaky)
    event_id = await dead_letter(client)
    flaky.failing, flaky.entered = False, asyncio.Event()
    flaky.gate.clear()
    assert (await retry(client, event_id)).status_code == 200
    await flaky.entered.wait()
    assert (await client.post("/plugin/flaky/disable", headers=CONFIRM)).status_code == 200

    async def back() -> bool:
        return await depth(client) == 1

    await eventually(back)  # not stuck in "retrying", not deleted
    [entry] = await entries(client)
    assert (entry["state"], entry["failed_subscribers"]) == ("dead", ["plugin:flaky"])
    assert (await client.post("/plugin/flaky/enable", headers=CONFIRM)).status_code == 200
    flaky.gate.set()
    assert (await retry(client, event_id)).status_code == 200
    await eventually(lambda: _gone(kernel, event_id))
    assert flaky.seen == [1]


async def test_the_manual_retry_limit_answers_422(start):
    flaky = Flaky()
    client, kernel = await start(flaky, **{"dlq.max_manual_retries": 1})
    event_id = await dead_letter(client)
    assert (await retry(client, event_id, {"reason": "one"})).status_code == 200

    async def back() -> bool:
        return await depth(client) == 1

    await eventually(back)
    [before] = await entries(client)
    resp = await retry(client, event_id, {"reason": "two"})
    message = f"dlq entry {event_id} reached the manual retry limit (1); discard it instead"
    assert (resp.status_code, await resp.get_json()) == (422, {"error": message})
    assert await entries(client) == [before]  # nothing changed
    assert await audits(kernel, "dlq.retry") == [
        ("api", f"dlq:{event_id}", "ok", "one"),
        ("api", f"dlq:{event_id}", "error", message),
    ]
    assert (await client.post(f"/dlq/{event_id}/discard")).status_code == 200


async def test_the_default_limit_is_five_manual_retries(start):
    client, kernel = await start(Flaky())
    event_id = await dead_letter(client)
    for n in range(1, 6):
        assert (await (await retry(client, event_id)).get_json())["retry_count"] == n

        async def back() -> bool:
            return await depth(client) == 1

        await eventually(back)
    resp = await retry(client, event_id)
    assert resp.status_code == 422
    assert (await resp.get_json())["error"].endswith("reached the manual retry limit (5); discard it instead")


async def test_a_second_retry_while_the_first_is_in_flight_is_409(start):
    flaky = Flaky()
    client, kernel = await start(flaky)
    event_id = await dead_letter(client, "late")
    flaky.failing = False
    flaky.gate.clear()  # the redelivery will wait inside the subscriber
    assert (await retry(client, event_id, {"reason": "first"})).status_code == 200
    busy = {"error": f"dlq entry {event_id} is being retried"}
    resp = await retry(client, event_id, {"reason": "second"})
    assert (resp.status_code, await resp.get_json()) == (409, busy)
    resp = await client.post(f"/dlq/{event_id}/discard")
    assert (resp.status_code, await resp.get_json()) == (409, busy)
    assert await stored(kernel, event_id)  # never silently dropped
    flaky.gate.set()
    await eventually(lambda: _gone(kernel, event_id))
    assert flaky.seen == ["late"]
    assert (await retry(client, event_id)).status_code == 404
    assert await audits(kernel, "dlq.retry") == [
        ("api", f"dlq:{event_id}", "ok", "first"),
        ("api", f"dlq:{event_id}", "error", busy["error"]),
        ("api", f"dlq:{event_id}", "error", f"dlq entry not found: {event_id}"),
    ]
    assert await audits(kernel, "dlq.discard") == [("api", f"dlq:{event_id}", "error", busy["error"])]


async def test_retry_needs_confirmation_before_anything_is_looked_up(start):
    client, kernel = await start()
    entry_id = await enqueue(client)
    [before] = await entries(client)
    for target, headers in ((entry_id, {}), ("nope", {"x-aman-confirm": "true"})):
        resp = await client.post(f"/dlq/{target}/retry", json={"reason": 5}, headers=headers)
        assert (resp.status_code, await resp.get_json()) == (409, {"error": "confirmation required"})
    assert await entries(client) == [before]
    assert await audits(kernel, "dlq.retry") == [
        ("api", f"dlq:{entry_id}", "confirm_required", ""),
        ("api", "dlq:nope", "confirm_required", ""),
    ]


async def test_retry_errors(start):
    client, kernel = await start()
    resp = await retry(client, "nope")
    assert (resp.status_code, await resp.get_json()) == (404, {"error": "dlq entry not found: nope"})
    entry_id = await enqueue(client)
    resp = await retry(client, entry_id, {"reason": 5})
    assert (resp.status_code, await resp.get_json()) == (400, {"error": "field 'reason' must be a string"})
    resp = await client.post(f"/dlq/{entry_id}/retry", data="x", headers={**CONFIRM, "content-type": "text/plain"})
    assert resp.status_code == 415
    assert [r[1:3] for r in await audits(kernel, "dlq.retry")] == [
        ("dlq:nope", "error"),
        (f"dlq:{entry_id}", "error"),
        (f"dlq:{entry_id}", "error"),
    ]
    assert len(await entries(client)) == 1


async def test_a_retry_refused_by_backpressure_changes_nothing(start):
    blocker = Blocker()
    client, kernel = await start(blocker, **{"event_bus.max_queue_size": 20})
    entry_id = await enqueue(client, reason="parked")
    [before] = await entries(client)
    await kernel.bus.publish("fill", 0, delivery="at_least_once")
    await blocker.entered.wait()
    while kernel.bus.level != "L3":
        await kernel.bus.publish("fill", 1, delivery="at_least_once")
    resp = await retry(client, entry_id, {"reason": "too soon"})
    message = "event bus backpressure (level L3); retry later"
    assert (resp.status_code, await resp.get_json()) == (503, {"error": message})
    assert resp.headers["Retry-After"] == "1"
    assert await entries(client) == [before]
    assert await depth(client) == 1
    assert await audits(kernel, "dlq.retry") == [("api", f"dlq:{entry_id}", "error", message)]

    blocker.gate.set()
    await eventually(lambda: kernel.bus.pending() == 0 and kernel.bus.level == "Normal")
    resp = await retry(client, entry_id)
    body = await resp.get_json()
    assert (resp.status_code, body["retry_count"]) == (200, 1)
    # only the built-ins that subscribe to every event (skills, workflows) take `e`
    assert not any(s.startswith("plugin:") for s in body["subscribers"]), body["subscribers"]
    await eventually(lambda: _gone(kernel, entry_id))


# --- discard -----------------------------------------------------------------------------------


async def test_discard_answers_the_removed_entry_and_a_second_call_is_404(start):
    flaky = Flaky()
    client, kernel = await start(flaky)
    event_id = await dead_letter(client)
    [entry] = await entries(client)
    resp = await client.post(f"/dlq/{event_id}/discard", headers={"x-aman-operator": "bob"})
    assert (resp.status_code, await resp.get_json()) == (200, entry)
    assert await depth(client) == 0 and await entries(client) == []
    resp = await client.post(f"/dlq/{event_id}/discard")
    assert (resp.status_code, await resp.get_json()) == (404, {"error": f"dlq entry not found: {event_id}"})
    assert await audits(kernel, "dlq.discard") == [
        ("bob", f"dlq:{event_id}", "ok", ""),
        ("api", f"dlq:{event_id}", "error", f"dlq entry not found: {event_id}"),
    ]
    assert flaky.calls == 5 and flaky.seen == []  # never delivered


# --- /debug/dlq/enqueue --------------------------------------------------------------------------


async def test_enqueue_is_refused_unless_debug_endpoints_are_enabled(start):
    client, kernel = await start(**{"debug.force_enable_debug_endpoints": False})
    resp = await client.post("/debug/dlq/enqueue", json={"source": "s", "event_type": "e", "payload": 1})
    assert (resp.status_code, await resp.get_json()) == (
        403,
        {"error": "debug endpoints are disabled (set debug.force_enable_debug_endpoints = true)"},
    )
    assert await audits(kernel, "dlq.enqueue") == [("api", "dlq", "forbidden", "force_enable_debug_endpoints=false")]
    assert await depth(client) == 0


async def test_enqueue_creates_an_unpublished_entry_and_announces_it(start):
    client, kernel = await start()
    resp = await client.post(
        "/debug/dlq/enqueue",
        json={"source": "shop", "event_type": "order.created", "payload": {"n": 1}},
        headers={"x-aman-operator": "ops"},
    )
    assert resp.status_code == 200
    body = await resp.get_json()
    assert list(body) == ["id"]
    entry_id = body["id"]
    [entry] = await entries(client)
    event = entry["event"]
    assert event["id"] == entry_id
    assert (event["source"], event["event_type"], event["payload"]) == ("shop", "order.created", {"n": 1})
    assert (event["priority"], event["delivery"], event["trust_level"]) == ("normal", "at_least_once", "trusted")
    assert (entry["reason"], entry["failed_subscribers"], entry["state"]) == ("DebugEnqueued", [], "dead")
    assert (entry["retry_count"], entry["original_retry_count"], entry["retry_history"]) == (0, 0, [])
    assert entry["expires_at_ms"] - entry["enqueued_at_ms"] == 30 * DAY_MS
    assert await depth(client) == 1
    assert (await client.get(f"/events/dump/{entry_id}")).status_code == 404  # created, not published
    notices = (await (await client.get("/events/recent?event_type=dlq:enqueued")).get_json())["events"]
    assert [(e["source"], e["payload"]) for e in notices] == [
        ("dlq", {"id": entry_id, "event_type": "order.created", "reason": "DebugEnqueued"})
    ]
    assert await audits(kernel, "dlq.enqueue") == [("ops", f"dlq:{entry_id}", "ok", "DebugEnqueued")]

    other = await enqueue(client, reason="r" * 1000, ttl_days=2, payload=None)
    [newest, _] = await entries(client)
    assert newest["id"] == other and newest["event"]["payload"] is None
    assert newest["expires_at_ms"] - newest["enqueued_at_ms"] == 2 * DAY_MS
    assert newest["reason"] == "r" * 1000


BAD_ENQUEUES = (
    [
        ({"event_type": "e", "payload": 1}, "missing required field 'source'"),
        ({"source": "s", "payload": 1}, "missing required field 'event_type'"),
        ({"source": "s", "event_type": "e"}, "missing required field 'payload'"),
        ({"source": " ", "event_type": "e", "payload": 1}, "source cannot be empty"),
        (
            {"source": "s", "event_type": "e ", "payload": 1},
            "event_type must be 1-128 characters without control characters or surrounding whitespace",
        ),
        ({"source": "s", "event_type": "e", "payload": 1, "reason": ""}, "field 'reason' must be between 1 and 1000 characters"),
        (
            {"source": "s", "event_type": "e", "payload": 1, "reason": "r" * 1001},
            "field 'reason' must be between 1 and 1000 characters",
        ),
        ({"source": "s", "event_type": "e", "payload": 1, "reason": 5}, "field 'reason' must be a string"),
        ({"source": "s", "event_type": "e", "payload": 1, "ttl_days": 0}, "field 'ttl_days' must be between 1 and 3650"),
        ({"source": "s", "event_type": "e", "payload": 1, "ttl_days": 3651}, "field 'ttl_days' must be between 1 and 3650"),
        ({"source": "s", "event_type": "e", "payload": 1, "ttl_days": "1"}, "field 'ttl_days' must be an integer"),
    ]
)


async def test_enqueue_rejects_bad_fields(start):
    client, kernel = await start()
    for body, message in BAD_ENQUEUES:  # one kernel for the whole table
        resp = await client.post("/debug/dlq/enqueue", json=body)
        assert (resp.status_code, await resp.get_json()) == (400, {"error": message}), body
    assert await audits(kernel, "dlq.enqueue") == [("api", "dlq", "error", m) for _, m in BAD_ENQUEUES]
    assert await depth(client) == 0


# --- GET /dlq ----------------------------------------------------------------------------------


async def test_list_pages_newest_first_with_a_stable_cursor(start):
    client, _ = await start()
    ids = [await enqueue(client, reason=f"r{n}") for n in range(5)]
    first = await (await client.get("/dlq?limit=2")).get_json()
    assert [e["id"] for e in first["items"]] == [ids[4], ids[3]]
    newer = await enqueue(client)  # added after the first page: later pages do not shift
    second = await (await client.get(f"/dlq?limit=2&cursor={first['next_cursor']}")).get_json()
    assert [e["id"] for e in second["items"]] == [ids[2], ids[1]]
    last = await (await client.get(f"/dlq?limit=2&cursor={second['next_cursor']}")).get_json()
    assert ([e["id"] for e in last["items"]], last["next_cursor"]) == ([ids[0]], None)
    everything = await (await client.get("/dlq")).get_json()
    assert ([e["id"] for e in everything["items"]], everything["next_cursor"]) == ([newer, *ids[::-1]], None)
    assert len(await entries(client, "?limit=0")) == 1  # raised to the minimum
    assert len(await entries(client, "?limit=5000")) == 6  # lowered to the cap


async def test_list_filters(start):
    client, _ = await start()
    a = await enqueue(client, source="shop", event_type="order.created", reason="DeliveryFailed: plugin:x: boom")
    b = await enqueue(client, source="Shop", event_type="Order.Created", reason="Expired")
    c = await enqueue(client, source="bank", event_type="payment", reason="RetryQueueFull: plugin:y")

    async def ids(query: str) -> list[str]:
        return [e["id"] for e in await entries(client, query)]

    assert await ids("?reason=deliveryfailed") == [a]
    assert await ids("?reason=DeliveryFailed:%20plugin:x") == [a]
    assert await ids("?reason=plugin") == []  # a prefix, not a substring
    assert await ids("?source=SHOP") == [b, a]
    assert await ids("?source=sho") == []
    assert await ids("?event_type=order.created") == [b, a]
    assert await ids("?event_type=payment&source=bank") == [c]
    assert await ids("?event_type=payment&source=shop") == []
    assert await ids("?reason=Expired&limit=1") == [b]


async def test_list_query_errors(start):
    client, _ = await start()
    for query, message in (
        ("?cursor=nope", "invalid cursor"),
        ("?cursor=", "invalid cursor"),
        ("?limit=-5", "invalid query parameter 'limit': expected a non-negative integer"),
        ("?limit=ten", "invalid query parameter 'limit': expected a non-negative integer"),
    ):
        resp = await client.get(f"/dlq{query}")
        assert (resp.status_code, await resp.get_json()) == (400, {"error": message}), query


async def test_depth_counts_dead_entries(start):
    client, kernel = await start()
    assert await depth(client) == 0
    first = await enqueue(client)
    await enqueue(client)
    assert await depth(client) == 2
    await client.post(f"/dlq/{first}/discard")
    assert await depth(client) == 1
    before = (await kernel.audit.query()).items
    await client.get("/dlq")
    await client.head("/dlq/depth")
    assert (await kernel.audit.query()).items == before  # reads are not audited


# --- durability and expiry ---------------------------------------------------------------------


async def test_entries_survive_a_restart(make_kernel, serve_kernel, tmp_path):
    runtime = tmp_path / "runtime-dlq"
    first = make_kernel(Flaky(), settings=SETTINGS, runtime_dir=runtime)
    client = await serve_kernel(first)
    failed = await dead_letter(client, "kept")
    parked = await enqueue(client)
    listed = await entries(client)
    await first.lifecycle.shutdown()

    fixed = Flaky(failing=False)
    second = make_kernel(fixed, settings=SETTINGS, runtime_dir=runtime)
    client = await serve_kernel(second)
    assert await entries(client) == listed
    assert await depth(client) == 2
    resp = await retry(client, failed)
    assert (await resp.get_json())["subscribers"] == ["plugin:flaky"]
    await eventually(lambda: fixed.seen == ["kept"])
    await eventually(lambda: _gone(second, failed))
    assert [e["id"] for e in await entries(client)] == [parked]


async def test_a_retry_cut_short_by_a_stop_is_dead_again_after_the_restart(make_kernel, serve_kernel, tmp_path):
    runtime = tmp_path / "runtime-dlq"
    stuck = Flaky()
    first = make_kernel(stuck, settings={**SETTINGS, "runtime.drain_timeout_sec": 1}, runtime_dir=runtime)
    client = await serve_kernel(first)
    event_id = await dead_letter(client)
    stuck.gate.clear()
    stuck.entered.clear()
    assert (await retry(client, event_id)).status_code == 200
    await stuck.entered.wait()
    await first.lifecycle.shutdown()  # the drain gives up on the held subscriber

    second = make_kernel(Flaky(), settings=SETTINGS, runtime_dir=runtime)
    client = await serve_kernel(second)
    [entry] = await entries(client)
    assert (entry["id"], entry["state"], entry["retry_count"]) == (event_id, "dead", 1)
    assert await depth(client) == 1


async def test_expired_entries_are_archived_with_a_system_audit_record(start, monkeypatch):
    monkeypatch.setattr(dlq_plugin, "EXPIRE_EVERY_SEC", 0.01)
    client, kernel = await start()
    old, young = await enqueue(client), await enqueue(client)
    await kernel.store.execute("UPDATE dead_letters SET expires_at_ms = 0 WHERE id = ?", (old,))

    async def archived() -> bool:
        return bool(await audits(kernel, "dlq.expire"))

    await eventually(archived)
    assert await audits(kernel, "dlq.expire") == [("system", f"dlq:{old}", "ok", "")]
    assert [e["id"] for e in await entries(client)] == [young]
    assert await depth(client) == 1
    rows = await kernel.store.fetchall("SELECT id FROM dead_letters_archive")
    assert [r["id"] for r in rows] == [old]


async def test_expire_entries_runs_at_start_and_stops_with_the_plugin(start):
    client, kernel = await start()
    entry_id = await enqueue(client)
    await kernel.store.execute("UPDATE dead_letters SET expires_at_ms = 1 WHERE id = ?", (entry_id,))
    ctx = kernel.plugins.records["dlq"].ctx
    assert await dlq_plugin.expire_entries(ctx) == [entry_id]
    assert await dlq_plugin.expire_entries(ctx) == []
    task = ctx.stash[dlq_plugin._SWEEPER]
    assert not task.done()
    await kernel.lifecycle.shutdown()
    assert task.cancelled() and dlq_plugin._SWEEPER not in ctx.stash


@pytest.mark.parametrize("dead_letter_expired", [True, False])
async def test_retrying_an_expired_event(start, dead_letter_expired):
    flaky = Flaky()
    client, kernel = await start(flaky, **{"event_bus.dead_letter_expired": dead_letter_expired})
    event_id = await dead_letter(client)
    flaky.failing = False
    await kernel.store.execute(  # its TTL passed while it waited in the DLQ
        "UPDATE dead_letters SET event = json_set(event, '$.metadata.ttl_ms', 1) WHERE id = ?", (event_id,)
    )
    assert (await retry(client, event_id)).status_code == 200
    await eventually(lambda: kernel.bus.stats()["expired_count"] == 1)
    assert flaky.seen == []  # an expired event is handed to no subscriber
    if dead_letter_expired:  # back in the queue with the reason, for the operator to decide

        async def back() -> bool:
            return await depth(client) == 1

        await eventually(back)
        [entry] = await entries(client)
        assert (entry["reason"], entry["failed_subscribers"], entry["retry_count"]) == (
            "Expired",
            ["plugin:flaky"],
            1,
        )
    else:  # dropped
        await eventually(lambda: _gone(kernel, event_id))
        assert await depth(client) == 0


async def test_entries_close_to_expiry_raise_one_warning_per_threshold(make_kernel, serve_kernel):
    kernel = make_kernel(settings=SETTINGS)
    client = await serve_kernel(kernel)
    soon = await client.post(
        "/debug/dlq/enqueue",
        json={"source": "shop", "event_type": "order.created", "payload": None, "ttl_days": 1},
    )
    later = await client.post(
        "/debug/dlq/enqueue", json={"source": "shop", "event_type": "order.paid", "payload": None}
    )
    assert soon.status_code == later.status_code == 200
    ctx = kernel.plugins.records["dlq"].ctx
    await dlq_plugin.expire_entries(ctx)
    await dlq_plugin.expire_entries(ctx)  # a second sweep repeats nothing
    items = await (await client.get("/notifications")).get_json()
    warnings = [n for n in items if n["category"] == "dlq" and "expires in" in n["title"]]
    soon_id = (await soon.get_json())["id"]
    assert [(n["severity"], n["title"]) for n in warnings] == [
        ("warning", f"DLQ entry {soon_id} (order.created) expires in 1 day(s)")
    ]
