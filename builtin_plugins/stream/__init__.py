"""Stream: ``GET /events/stream``, the bus and the runtime as Server-Sent Events (http-api §23; D13).

Public, but payloads need the token when one is configured: without it a client gets the
metadata of each event, ``runtime:updated`` and keep-alives; a wrong token is a 401. Filters
(``types``, ``session_id``) apply to event frames, resume follows ``Last-Event-ID``, slow clients
lose their oldest frames (``lagged``), and a shutdown ends every stream with ``shutdown``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from sdk import (
    AGENTS,
    NOTIFIER,
    ConfigKey,
    PluginContext,
    Request,
    Response,
    Route,
    StashKey,
    Unauthorized,
    Unavailable,
    hookimpl,
)
from sdk.auth import presented_token, token_matches

from .hub import EventStream, Hub, frame

HUB = StashKey[Hub]()
CONTENT_TYPE = "text/event-stream; charset=utf-8"


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey]:
    """formats §1.2 ``[sse]``; ``http.max_sse_clients`` is the kernel's."""
    return [
        ConfigKey(name="sse.heartbeat_sec", type=int, default=15, minimum=1, maximum=300),
        ConfigKey(name="sse.client_buffer", type=int, default=256, minimum=16, maximum=100_000),
        ConfigKey(
            name="sse.snapshot_interval_ms", type=int, default=2000, minimum=250, maximum=60_000
        ),
        ConfigKey(
            name="sse.runtime_interval_ms", type=int, default=1000, minimum=250, maximum=60_000
        ),
        ConfigKey(name="sse.replay_max", type=int, default=1000, minimum=0, maximum=10_000),
    ]


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="GET",
            path="/events/stream",
            handler=events_stream,
            public=True,
            availability="always",
        )
    ]


@hookimpl
def register_metrics(ctx: PluginContext, registry: CollectorRegistry) -> None:
    registry.register(SseClients(ctx))


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    hub_of(ctx)


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    hub = ctx.stash.get(HUB)
    if hub is not None:
        hub.close_all()
        if hub.observe in ctx.bus.observers:
            ctx.bus.observers.remove(hub.observe)
        del ctx.stash[HUB]


def hub_of(ctx: PluginContext) -> Hub:
    """The kernel's hub, made on first use: the route answers from phase 0, before on_startup."""
    hub = ctx.stash.get(HUB)
    if hub is None:
        hub = ctx.stash[HUB] = Hub(ctx)
        ctx.bus.observers.append(hub.observe)
    return hub


class SseClients(Collector):
    """``sse_clients``: the open streams (http-api §21; read by ``/debug/metrics`` too)."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx

    def collect(self) -> Iterable[Metric]:
        hub = self._ctx.stash.get(HUB)
        count = len(hub.clients) if hub is not None else 0
        yield GaugeMetricFamily("sse_clients", "Connected SSE clients.", value=count)


# --- the route ------------------------------------------------------------------------------


async def events_stream(ctx: PluginContext, request: Request) -> Response:
    full = _access(ctx, request)
    status = ctx.lifecycle.status
    if status == "draining":
        raise Unavailable("runtime is draining")
    if status == "stopped":
        raise Unavailable("runtime is stopped", retry_after=None)
    query = request.query
    types = frozenset(t.strip() for t in query.get("types", "").split(",") if t.strip())
    hub = hub_of(ctx)
    client = hub.join(full=full, types=types, session_id=query.get("session_id") or None)
    last = request.headers.get("last-event-id") or query.get("last_event_id")
    stream = EventStream(
        hub,
        client,
        last_event_id=(last or "").strip() or None,
        snapshots=lambda: _snapshots(ctx),
        runtime=lambda: _runtime(ctx),
    )
    return Response(body=stream, content_type=CONTENT_TYPE, headers={"X-Accel-Buffering": "no"})


def _access(ctx: PluginContext, request: Request) -> bool:
    """Whether the client may see payloads and snapshots (D13). The token is taken as the kernel
    takes it (http-api §1.2: ``Authorization: Bearer``, else ``x-aman-token``), plus ``?token=``
    for browsers' EventSource; a presented token that is wrong is a 401."""
    configured = ctx.settings.get("http.token")
    if not configured:
        return True
    presented = presented_token(request.headers, request.query.get("token"))
    if presented is None:
        return False
    if token_matches(presented, configured):
        return True
    raise Unauthorized("missing or invalid API token")


def _snapshots(ctx: PluginContext) -> list[bytes]:
    """``metrics:updated``, ``agent_states:updated`` and ``notification:updated`` (from the
    chat and notifications plugins through the stash; empty while they are not running)."""
    stats = ctx.bus.stats()
    agents, notifier = ctx.stash.get(AGENTS), ctx.stash.get(NOTIFIER)
    depth = stats.get("queue_depth", {})
    metrics = {
        "queue_depth": {p: depth.get(p, 0) for p in ("high", "normal", "low")},
        "throughput": stats.get("throughput", 0),
        "discarded": stats.get("discarded_count", 0),
        "duplicate": stats.get("duplicate_count", 0),
        "subscription_count": stats.get("subscription_count", 0),
        "retry_queue_depth": stats.get("retry_queue_depth", 0),
        "dlq_depth": stats.get("dlq_depth", 0),
        "inflight_pipelines": stats.get("inflight_pipelines", 0),
        "inflight_skills": stats.get("inflight_skills", 0),
        "backpressure_level": stats.get("backpressure_level", "Normal"),
        "plugin_health": [
            {"name": p.name, "status": p.state.capitalize()} for p in ctx.plugins.list()
        ],
    }
    return [
        frame("metrics:updated", metrics),
        frame("agent_states:updated", {"agents": agents.states() if agents else []}),
        frame("notification:updated", {"unread_count": notifier.unread if notifier else 0}),
    ]


def _runtime(ctx: PluginContext) -> bytes:
    life = ctx.lifecycle
    data = {
        "phase": life.phase,
        "ready": life.phase == 5 and life.status == "ready",
        "live": life.status != "stopped",
        "status": life.status,
    }
    return frame("runtime:updated", data)
