"""``/inject-event``, ``/events/push``, ``/events/trace``, ``/events/dump``, ``/events/recent`` and
``/events/types`` (http-api §5)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import attrs
import pytest

from builtin_plugins.events import KNOWN_TYPES, find_cycle
from sdk import Event, EventMetadata
from sdk.testing import Recorder, wait_for

DEBUG = {"debug.force_enable_debug_endpoints": True, "event_bus.retry_backoff_ms": [1]}
OPS = {"x-aman-operator": "ops"}
UUID = "0192f3a4-5b6c-7d8e-9f00-aabbccddeeff"


@pytest.fixture(name="setup")
async def _setup(make_kernel, serve_kernel):
    recorder = Recorder("order.created", "order.paid", "t.inject")
    kernel = make_kernel(recorder, settings=DEBUG)
    client = await serve_kernel(kernel)
    return client, kernel, recorder


async def push(client, **body: Any):
    return await client.post("/events/push", json={"payload": None, **body}, headers=OPS)


async def audits(kernel, action: str) -> list[tuple[str, str, str, str]]:
    page = await kernel.audit.query(action=action)
    return [(r.operator, r.target, r.outcome, r.detail) for r in reversed(page.items)]


# --- /events/push ----------------------------------------------------------------------------


async def test_a_pushed_event_is_delivered_dumpable_traceable_and_recent(setup):
    client, kernel, recorder = setup
    resp = await push(client, source="shop", event_type="order.created", payload={"order": 7})
    assert resp.status_code == 200
    body = await resp.get_json()
    assert set(body) == {"id", "event_type", "target", "status", "trace_id"}
    assert body["event_type"] == "order.created"
    assert (body["target"], body["status"]) == ("global", "queued")
    event_id, trace_id = body["id"], body["trace_id"]

    await wait_for(lambda: [e.id for e in recorder.seen] == [event_id])
    dumped = await (await client.get(f"/events/dump/{event_id}")).get_json()
    created = dumped["metadata"]["created_at"]
    assert dumped == {
        "id": event_id,
        "source": "shop",
        "event_type": "order.created",
        "timestamp": created,
        "priority": "normal",
        "delivery": "at_least_once",
        "dedup_key": event_id,
        "trust_level": "untrusted",
        "payload": {"order": 7},
        "metadata": {
            "trace_id": trace_id,
            "parent_event_id": None,
            "agent_id": None,
            "retry_count": 0,
            "max_retries": 4,
            "ttl_ms": None,
            "lifespan_ms": None,
            "created_at": created,
        },
    }
    traced = await (await client.get(f"/events/trace/{trace_id}")).get_json()
    assert traced == {"trace_id": trace_id, "events": [dumped], "cycle_detected": False}
    recent = await (await client.get("/events/recent")).get_json()
    assert recent["events"][0] == dumped
    assert await audits(kernel, "event.push") == [("ops", "global", "ok", event_id)]


async def test_push_applies_every_field(setup):
    client, kernel, recorder = setup
    resp = await push(
        client,
        source="shop",
        event_type="order.created",
        payload=[1, 2],
        agent_id="aman",
        priority="high",
        delivery="exactly_once",
        ttl_ms=60_000,
        dedup_key="order-7",
        trace_id=UUID.upper(),
    )
    body = await resp.get_json()
    assert (resp.status_code, body["target"], body["status"]) == (200, "agent:aman", "queued")
    assert body["trace_id"] == UUID  # ids are lower-case (http-api §1.10)
    event = await (await client.get(f"/events/dump/{body['id']}")).get_json()
    assert (event["priority"], event["delivery"], event["dedup_key"]) == (
        "high",
        "exactly_once",
        "order-7",
    )
    assert event["metadata"]["agent_id"] == "aman"
    assert event["metadata"]["ttl_ms"] == 60_000
    assert event["metadata"]["trace_id"] == UUID
    assert await audits(kernel, "event.push") == [("ops", "agent:aman", "ok", body["id"])]

    # a second event continues the trace; the trace lists both in time order
    second = await (
        await push(client, source="shop", event_type="order.paid", trace_id=UUID)
    ).get_json()
    traced = await (await client.get(f"/events/trace/{UUID.upper()}")).get_json()
    assert [e["id"] for e in traced["events"]] == [body["id"], second["id"]]
    assert traced["trace_id"] == UUID


async def test_push_at_most_once_has_no_default_dedup_key(setup):
    client, _, _ = setup
    body = await (
        await push(client, source="s", event_type="x.y", delivery="at_most_once")
    ).get_json()
    event = await (await client.get(f"/events/dump/{body['id']}")).get_json()
    assert (event["delivery"], event["dedup_key"]) == ("at_most_once", None)
    assert event["metadata"]["max_retries"] == 0


async def test_a_dedup_key_makes_a_push_idempotent_in_any_mode(setup):
    client, kernel, recorder = setup
    expected = []
    for delivery in ("at_most_once", "at_least_once", "exactly_once"):
        first = await (
            await push(
                client,
                source="s",
                event_type="order.created",
                delivery=delivery,
                dedup_key=delivery,
                payload=1,
            )
        ).get_json()
        again = await (
            await push(
                client,
                source="s",
                event_type="order.created",
                delivery=delivery,
                dedup_key=delivery,
                payload=2,
            )
        ).get_json()
        assert (again["status"], again["id"]) == ("duplicate", first["id"]), delivery
        expected += [
            ("ops", "global", "ok", first["id"]),
            ("ops", "global", "ok", f"{first['id']} duplicate"),
        ]
    assert await audits(kernel, "event.push") == expected
    await wait_for(lambda: len(recorder.seen) == 3)
    recent = await (await client.get("/events/recent?event_type=order.created")).get_json()
    assert [e["payload"] for e in recent["events"]] == [1, 1, 1]


async def test_push_to_the_default_agent_and_to_an_unknown_one(setup):
    client, kernel, recorder = setup
    resp = await push(client, source="s", event_type="order.created", agent_id="bob")
    assert (resp.status_code, await resp.get_json()) == (404, {"error": "agent not found: bob"})
    assert await audits(kernel, "event.push") == [
        ("ops", "agent:bob", "error", "agent not found: bob")
    ]
    recent = await (await client.get("/events/recent?event_type=order.created")).get_json()
    assert recent["events"] == []
    # a bad field answers 400 before the agent is looked up
    resp = await push(client, source=" ", event_type="order.created", agent_id="bob")
    assert (resp.status_code, (await resp.get_json())["error"]) == (400, "source cannot be empty")


LONG = "x" * 129
NAME_RULE = "must be 1-128 characters without control characters or surrounding whitespace"


BAD_PUSHES = [
    ({"event_type": "e", "payload": 1}, "missing required field 'source'"),
    ({"source": "s", "payload": 1}, "missing required field 'event_type'"),
    ({"source": "s", "event_type": "e"}, "missing required field 'payload'"),
    ({"source": 5, "event_type": "e", "payload": 1}, "field 'source' must be a string"),
    ({"source": "", "event_type": "e", "payload": 1}, "source cannot be empty"),
    ({"source": "  ", "event_type": "e", "payload": 1}, "source cannot be empty"),
    ({"source": LONG, "event_type": "e", "payload": 1}, f"source {NAME_RULE}"),
    ({"source": "s", "event_type": "", "payload": 1}, "event_type cannot be empty"),
    ({"source": "s", "event_type": " e", "payload": 1}, f"event_type {NAME_RULE}"),
    ({"source": "s", "event_type": "a\nb", "payload": 1}, f"event_type {NAME_RULE}"),
    ({"source": "s", "event_type": LONG, "payload": 1}, f"event_type {NAME_RULE}"),
    (
        {"source": "s", "event_type": "e", "payload": 1, "priority": "urgent"},
        "invalid value for 'priority': 'urgent' (expected one of: high, normal, low)",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "priority": "HIGH"},
        "invalid value for 'priority': 'HIGH' (expected one of: high, normal, low)",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "delivery": "twice"},
        "invalid value for 'delivery': 'twice' (expected one of: at_most_once, at_least_once, exactly_once)",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "ttl_ms": 0},
        "field 'ttl_ms' must be between 1 and 2592000000",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "ttl_ms": 2_592_000_001},
        "field 'ttl_ms' must be between 1 and 2592000000",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "ttl_ms": 1.0},
        "field 'ttl_ms' must be an integer",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "ttl_ms": True},
        "field 'ttl_ms' must be an integer",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "ttl_ms": "5"},
        "field 'ttl_ms' must be an integer",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "dedup_key": ""},
        "field 'dedup_key' must be between 1 and 256 characters",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "dedup_key": "k" * 257},
        "field 'dedup_key' must be between 1 and 256 characters",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "dedup_key": 5},
        "field 'dedup_key' must be a string",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "trace_id": "abc"},
        "field 'trace_id' must be a UUID",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "trace_id": "{" + UUID + "}"},
        "field 'trace_id' must be a UUID",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "trace_id": 7},
        "field 'trace_id' must be a string",
    ),
    (
        {"source": "s", "event_type": "e", "payload": 1, "agent_id": 7},
        "field 'agent_id' must be a string",
    ),
]


async def test_push_rejects_bad_fields(setup):
    client, kernel, _ = setup
    for body, message in BAD_PUSHES:  # one kernel for the whole table
        resp = await client.post("/events/push", json=body, headers=OPS)
        assert (resp.status_code, await resp.get_json()) == (400, {"error": message}), body
    assert await audits(kernel, "event.push") == [
        ("ops", "global", "error", m) for _, m in BAD_PUSHES
    ]
    recent = await (await client.get("/events/recent?source=s")).get_json()
    assert recent["events"] == []


async def test_push_rejects_bodies_that_are_not_json_objects(setup):
    client, kernel, _ = setup
    resp = await client.post("/events/push", json=[1], headers=OPS)
    assert (resp.status_code, await resp.get_json()) == (
        400,
        {"error": "request body must be a JSON object"},
    )
    resp = await client.post(
        "/events/push", data="source=s", headers={"content-type": "text/plain"}
    )
    assert resp.status_code == 415
    resp = await client.post("/events/push", data="{", headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert (await resp.get_json())["error"].startswith("invalid JSON body: ")
    assert [r[2] for r in await audits(kernel, "event.push")] == ["error"] * 3


async def test_push_accepts_the_limits_of_its_ranges(setup):
    client, _, _ = setup
    for extra in (
        {"ttl_ms": 1},
        {"ttl_ms": 2_592_000_000},
        {"dedup_key": "k" * 256},
        {"source": "s" * 128},
    ):
        resp = await push(client, **{"source": "s", "event_type": "e", **extra})
        assert resp.status_code == 200, extra


async def test_push_needs_the_token_and_a_401_is_not_audited(make_kernel, serve_kernel):
    kernel = make_kernel(settings={"http.token": "t0k"})
    client = await serve_kernel(kernel)
    resp = await push(client, source="s", event_type="e")
    assert resp.status_code == 401
    assert await audits(kernel, "event.push") == []
    resp = await client.post(
        "/events/push",
        json={"source": "s", "event_type": "e", "payload": 1},
        headers={"x-aman-token": "t0k"},
    )
    assert resp.status_code == 200


# --- /inject-event ---------------------------------------------------------------------------


async def test_inject_is_refused_unless_debug_endpoints_are_enabled(make_kernel, serve_kernel):
    kernel = make_kernel()
    client = await serve_kernel(kernel)
    resp = await client.post(
        "/inject-event", json={"source": "s", "event_type": "t.inject", "payload": 1}, headers=OPS
    )
    assert (resp.status_code, await resp.get_json()) == (
        403,
        {"error": "debug endpoints are disabled (set debug.force_enable_debug_endpoints = true)"},
    )
    assert await audits(kernel, "event.inject") == [
        ("ops", "debug", "forbidden", "force_enable_debug_endpoints=false")
    ]
    recent = await (await client.get("/events/recent?event_type=t.inject")).get_json()
    assert recent["events"] == []


async def test_inject_publishes_a_trusted_guaranteed_event(setup):
    client, kernel, recorder = setup
    resp = await client.post(
        "/inject-event",
        json={"source": "timer:x", "event_type": "t.inject", "payload": None},
        headers=OPS,
    )
    body = await resp.get_json()
    assert resp.status_code == 200 and set(body) == {"id", "trace_id", "status"}
    assert body["status"] == "queued"
    await wait_for(lambda: [e.id for e in recorder.seen] == [body["id"]])
    event = await (await client.get(f"/events/dump/{body['id']}")).get_json()
    assert (event["source"], event["trust_level"], event["priority"], event["delivery"]) == (
        "timer:x",
        "trusted",
        "normal",
        "at_least_once",
    )
    assert event["payload"] is None and event["metadata"]["trace_id"] == body["trace_id"]
    again = await (
        await client.post(
            "/inject-event", json={"source": "timer:x", "event_type": "t.inject", "payload": None}
        )
    ).get_json()
    assert again["id"] != body["id"] and again["trace_id"] != body["trace_id"]  # not idempotent
    assert await audits(kernel, "event.inject") == [
        ("ops", "debug", "ok", body["id"]),
        ("api", "debug", "ok", again["id"]),
    ]


async def test_inject_rejects_bad_fields(setup):
    client, kernel, _ = setup
    cases = [
        ({"source": "  ", "event_type": "e", "payload": 1}, "source cannot be empty"),
        ({"source": "s", "event_type": "e\t", "payload": 1}, f"event_type {NAME_RULE}"),
        ({"source": "s", "event_type": "e"}, "missing required field 'payload'"),
        ({"source": "s", "event_type": ["e"], "payload": 1}, "field 'event_type' must be a string"),
    ]
    for body, message in cases:
        resp = await client.post("/inject-event", json=body, headers=OPS)
        assert (resp.status_code, await resp.get_json()) == (400, {"error": message}), body
    assert await audits(kernel, "event.inject") == [("ops", "debug", "error", m) for _, m in cases]


# --- backpressure ------------------------------------------------------------------------------


async def test_backpressure_refuses_http_publishes_and_drops_at_most_once(
    make_kernel, serve_kernel
):
    blocker = Recorder("fill", name="blocker")
    kernel = make_kernel(blocker, settings={**DEBUG, "event_bus.max_queue_size": 20})
    client = await serve_kernel(kernel)
    blocker.gate.clear()
    await kernel.bus.publish("fill", 0, delivery="at_least_once")
    await blocker.entered.wait()  # it holds the first one; the rest wait for it
    while kernel.bus.level != "L3":  # internal guaranteed publishes are still accepted at L3
        await kernel.bus.publish("fill", 1, delivery="at_least_once")
    refused = "event bus backpressure (level L3); retry later"

    resp = await push(client, source="s", event_type="e")
    assert (resp.status_code, await resp.get_json()) == (503, {"error": refused})
    assert resp.headers["Retry-After"] == "1"
    resp = await client.post(
        "/inject-event", json={"source": "s", "event_type": "e", "payload": 1}, headers=OPS
    )
    assert (resp.status_code, await resp.get_json()) == (503, {"error": refused})

    resp = await push(client, source="s", event_type="e", delivery="at_most_once", trace_id=UUID)
    dropped = await resp.get_json()
    assert (resp.status_code, dropped["status"], dropped["trace_id"]) == (200, "dropped", UUID)
    assert (await client.get(f"/events/dump/{dropped['id']}")).status_code == 404  # never stored

    await kernel.bus.publish("fill", 2, delivery="at_least_once")
    assert kernel.bus.level == "Critical"
    resp = await push(client, source="s", event_type="e", priority="low")
    assert (resp.status_code, await resp.get_json()) == (
        503,
        {"error": "event bus is full; retry later"},
    )
    resp = await push(client, source="s", event_type="e")
    assert (await resp.get_json())[
        "error"
    ] == "event bus backpressure (level Critical); retry later"

    assert await audits(kernel, "event.push") == [
        ("ops", "global", "error", refused),
        ("ops", "global", "ok", f"{dropped['id']} dropped"),
        ("ops", "global", "error", "event bus is full; retry later"),
        ("ops", "global", "error", "event bus backpressure (level Critical); retry later"),
    ]
    assert await audits(kernel, "event.inject") == [("ops", "debug", "error", refused)]
    blocker.gate.set()
    await wait_for(lambda: kernel.bus.pending() == 0)
    assert (await push(client, source="s", event_type="e")).status_code == 200


# --- reading the event store -----------------------------------------------------------------


async def test_unknown_trace_and_event_are_404(setup):
    client, _, _ = setup
    resp = await client.get(f"/events/trace/{UUID}")
    assert (resp.status_code, await resp.get_json()) == (404, {"error": f"trace not found: {UUID}"})
    resp = await client.get("/events/trace/nope")
    assert (resp.status_code, await resp.get_json()) == (404, {"error": "trace not found: nope"})
    resp = await client.get(f"/events/dump/{UUID}")
    assert (resp.status_code, await resp.get_json()) == (404, {"error": f"event not found: {UUID}"})


async def _store(kernel, *events: Event) -> None:
    rows = [
        (
            e.id,
            e.metadata.trace_id,
            e.event_type,
            e.source,
            json.dumps(kernel.converter.unstructure(e)),
        )
        for e in events
    ]

    def insert(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO bus_events (id, trace_id, event_type, source, body) VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    await kernel.store.write(insert)


def _linked(kernel, trace_id: str, n: int) -> list[Event]:
    return [kernel.bus.build("loop.step", k, source="s", trace_id=trace_id) for k in range(n)]


def _parent(event: Event, parent: Event) -> Event:
    return attrs.evolve(event, metadata=attrs.evolve(event.metadata, parent_event_id=parent.id))


async def test_trace_reports_a_cycle_of_parent_links(setup):
    client, kernel, _ = setup
    a, b, c = _linked(kernel, UUID, 3)
    await _store(kernel, _parent(a, c), _parent(b, a), _parent(c, b))  # a ← b ← c ← a
    traced = await (await client.get(f"/events/trace/{UUID}")).get_json()
    assert [e["id"] for e in traced["events"]] == [a.id, b.id, c.id]
    assert traced["cycle_detected"] is True
    assert traced["cycle_path"] == [a.id, c.id, b.id, a.id]


async def test_trace_without_a_cycle_has_no_path(setup):
    client, kernel, _ = setup
    a, b, c = _linked(kernel, UUID, 3)
    await _store(kernel, a, _parent(b, a), _parent(c, a))
    traced = await (await client.get(f"/events/trace/{UUID}")).get_json()
    assert (traced["cycle_detected"], "cycle_path" in traced) == (False, False)


def _event(event_id: str, parent: str | None) -> Event:
    return Event(
        id=event_id,
        source="s",
        event_type="e",
        timestamp=0,
        metadata=EventMetadata(trace_id="t", parent_event_id=parent),
    )


@pytest.mark.parametrize(
    ("links", "path"),
    [
        ([("a", None), ("b", "a"), ("c", "b")], None),
        ([("a", "a")], ["a", "a"]),
        ([("a", "b"), ("b", "a")], ["a", "b", "a"]),
        (
            [("t", "x"), ("x", "y"), ("y", "z"), ("z", "x")],
            ["x", "y", "z", "x"],
        ),  # a tail into a loop
        ([("a", "gone"), ("b", "c"), ("c", "b")], ["b", "c", "b"]),  # a parent outside the trace
    ],
)
def test_find_cycle(links, path):
    assert find_cycle([_event(i, p) for i, p in links]) == path


async def test_recent_is_newest_first_with_exact_filters_and_a_clamped_limit(setup):
    client, _, _ = setup
    ids = []
    for n, (source, event_type) in enumerate(
        [("a", "x.one"), ("b", "x.one"), ("a", "x.two"), ("a", "X.one")]
    ):
        body = await (
            await push(client, source=source, event_type=event_type, payload=n)
        ).get_json()
        ids.append(body["id"])

    async def recent(query: str) -> list[str]:
        resp = await client.get(f"/events/recent{query}")
        assert resp.status_code == 200
        return [e["id"] for e in (await resp.get_json())["events"]]

    assert (await recent("?limit=4")) == ids[::-1]
    assert (await recent("?limit=2")) == [ids[3], ids[2]]
    assert (await recent("?limit=0")) == []
    assert (await recent("?event_type=x.one")) == [ids[1], ids[0]]
    assert (await recent("?source=a")) == [ids[3], ids[2], ids[0]]
    assert (await recent("?source=a&event_type=x.one")) == [ids[0]]
    assert (await recent("?source=A")) == []
    assert (await recent("?event_type=nothing")) == []
    assert ids[3] in await recent("?limit=5000")
    assert (await recent("?unknown=1&limit=1")) == [ids[3]]
    for bad in ("-1", "abc", "1.5"):
        resp = await client.get(f"/events/recent?limit={bad}")
        assert (resp.status_code, await resp.get_json()) == (
            400,
            {"error": "invalid query parameter 'limit': expected a non-negative integer"},
        )


async def test_recent_default_limit_is_50(setup):
    client, kernel, _ = setup
    for n in range(55):
        await kernel.bus.publish("bulk", n)
    events = (await (await client.get("/events/recent")).get_json())["events"]
    assert len(events) == 50 and events[0]["payload"] == 54


async def test_types_lists_the_built_in_types_in_order(setup):
    client, _, _ = setup
    body = await (await client.get("/events/types")).get_json()
    assert body == {
        "known_types": [
            "file_created",
            "file_changed",
            "file_deleted",
            "cron_tick",
            "timer_tick",
            "heartbeat",
            "message_received",
            "webhook_received",
            "system_signal",
            "workflow_state_changed",
            "skill_loaded",
            "skill_reloaded",
            "config_changed",
            "secret_rotated",
            "injection_detected",
            "idle",
            "system.queue_drained",
            "agent:message",
        ],
        "custom": "Any string not in known_types is a custom event type and is kept as is.",
    }
    assert tuple(body["known_types"]) == KNOWN_TYPES


async def test_reads_are_not_audited_and_follow_availability(setup):
    client, kernel, _ = setup
    before = (await kernel.audit.query()).items
    for path in (
        "/events/recent",
        "/events/types",
        f"/events/trace/{UUID}",
        f"/events/dump/{UUID}",
    ):
        assert (await client.head(path)).status_code in (200, 404)
        await client.get(path)
    assert (await kernel.audit.query()).items == before
    await kernel.lifecycle.shutdown()
    resp = await client.get("/events/types")
    assert (resp.status_code, await resp.get_json()) == (503, {"error": "runtime is stopped"})
