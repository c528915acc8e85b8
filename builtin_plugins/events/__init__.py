"""Events: publish events over HTTP and read the event store (http-api §5).

``/inject-event`` (debug gate) simulates an internal event; ``/events/push`` is the untrusted
public way in. Both are HTTP publishes, so backpressure refuses guaranteed ones from level L3 with
a 503. ``/events/dump``, ``/events/trace`` and ``/events/recent`` read the bus's event store.
"""

from __future__ import annotations

import re
from typing import Any

from attrs import field, frozen

from sdk import (
    AGENTS,
    AuditNote,
    Delivery,
    Event,
    Invalid,
    NotFound,
    PluginContext,
    Priority,
    Route,
    hookimpl,
    in_range,
)

__all__ = ["KNOWN_TYPES", "find_cycle"]

#: The built-in event types of http-api §1.9, in the order ``/events/types`` lists them.
KNOWN_TYPES = (
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
)
CUSTOM = "Any string not in known_types is a custom event type and is kept as is."
TTL_MAX_MS = 2_592_000_000  # 30 days
DEDUP_KEY_MAX = 256
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="POST",
            path="/inject-event",
            handler=inject_event,
            body=InjectIn,
            debug_gate=True,
            audit="event.inject",
            target="debug",
        ),
        Route(
            method="POST",
            path="/events/push",
            handler=push_event,
            body=PushIn,
            audit="event.push",
            target="global",
        ),
        Route(method="GET", path="/events/trace/{trace_id}", handler=trace),
        Route(method="GET", path="/events/dump/{id}", handler=dump),
        Route(method="GET", path="/events/recent", handler=recent, query=RecentQuery),
        Route(method="GET", path="/events/types", handler=types),
    ]


@frozen
class InjectIn:
    source: str
    event_type: str
    payload: Any


@frozen
class PushIn:
    source: str
    event_type: str
    payload: Any
    agent_id: str | None = None
    priority: Priority = "normal"
    delivery: Delivery = "at_least_once"
    ttl_ms: int | None = field(default=None, validator=in_range(1, TTL_MAX_MS))
    dedup_key: str | None = None
    trace_id: str | None = None


@frozen
class RecentQuery:
    limit: int = field(default=50, metadata={"clamp": (0, 1000)})
    event_type: str | None = None
    source: str | None = None


async def inject_event(ctx: PluginContext, body: InjectIn, audit: AuditNote) -> dict[str, Any]:
    """A new event that simulates an internal one: trusted, normal, at least once."""
    result = await ctx.bus.publish(
        body.event_type,
        body.payload,
        source=body.source,
        priority="normal",
        delivery="at_least_once",
        trust_level="trusted",
        from_http=True,
    )
    audit.detail = result.id
    return {"id": result.id, "trace_id": result.trace_id, "status": result.status}


async def push_event(ctx: PluginContext, body: PushIn, audit: AuditNote) -> dict[str, Any]:
    target = "global" if body.agent_id is None else f"agent:{body.agent_id}"
    audit.target = target
    if body.dedup_key is not None and not 1 <= len(body.dedup_key) <= DEDUP_KEY_MAX:
        raise Invalid(f"field 'dedup_key' must be between 1 and {DEDUP_KEY_MAX} characters")
    if body.trace_id is not None and not _UUID.fullmatch(body.trace_id):
        raise Invalid("field 'trace_id' must be a UUID")
    options: dict[str, Any] = {
        "source": body.source,
        "priority": body.priority,
        "delivery": body.delivery,
        "agent_id": body.agent_id,
        "ttl_ms": body.ttl_ms,
        "dedup_key": body.dedup_key,
        "trace_id": body.trace_id.lower() if body.trace_id else None,
        "trust_level": "untrusted",
    }
    ctx.bus.build(body.event_type, body.payload, **options)  # a bad source: 400 before the 404
    if body.agent_id is not None and not agent_exists(ctx, body.agent_id):
        raise NotFound(f"agent not found: {body.agent_id}")
    result = await ctx.bus.publish(body.event_type, body.payload, from_http=True, **options)
    audit.detail = result.id if result.status == "queued" else f"{result.id} {result.status}"
    return {
        "id": result.id,
        "event_type": body.event_type,
        "target": target,
        "status": result.status,
        "trace_id": result.trace_id,
    }


def agent_exists(ctx: PluginContext, agent_id: str) -> bool:
    """Whether the chat plugin knows the agent (:data:`sdk.AGENTS`)."""
    agents = ctx.stash.get(AGENTS)
    return agents is not None and agent_id in agents.ids()


async def trace(ctx: PluginContext, trace_id: str) -> dict[str, Any]:
    key = trace_id.lower() if _UUID.fullmatch(trace_id) else trace_id
    events = await ctx.bus.trace(key)
    if not events:
        raise NotFound(f"trace not found: {trace_id}")
    out: dict[str, Any] = {"trace_id": key, "events": events, "cycle_detected": False}
    cycle = find_cycle(events)
    if cycle:
        out["cycle_detected"] = True
        out["cycle_path"] = cycle
    return out


def find_cycle(events: list[Event]) -> list[str] | None:
    """The first loop of ``parent_event_id`` links among ``events`` (in their order), as the ids
    met following the links from the loop's earliest event back to it (``[a, b, a]``)."""
    parent = {e.id: e.metadata.parent_event_id for e in events}
    order = {e.id: n for n, e in enumerate(events)}
    cleared: set[str] = set()
    for event in events:
        path: list[str] = []
        seen: dict[str, int] = {}
        node: str | None = event.id
        while node is not None and node in parent and node not in cleared:
            if node in seen:
                loop = path[seen[node] :]
                start = min(loop, key=order.__getitem__)
                i = loop.index(start)
                return [*loop[i:], *loop[:i], start]
            seen[node] = len(path)
            path.append(node)
            node = parent[node]
        cleared.update(path)
    return None


async def dump(ctx: PluginContext, id: str) -> Event:
    event = await ctx.bus.get_event(id)
    if event is None:
        raise NotFound(f"event not found: {id}")
    return event


async def recent(ctx: PluginContext, query: RecentQuery) -> dict[str, list[Event]]:
    if query.limit == 0:
        return {"events": []}
    events = await ctx.bus.recent(query.limit, event_type=query.event_type, source=query.source)
    return {"events": events}


async def types(ctx: PluginContext) -> dict[str, Any]:
    return {"known_types": list(KNOWN_TYPES), "custom": CUSTOM}
