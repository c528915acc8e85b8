"""Debug: ``/debug/metrics``, the bus and plugin state as JSON (http-api §20)."""

from __future__ import annotations

import time
from typing import Any

from sdk import PluginContext, Route, hookimpl

LEVELS = ("Normal", "L1", "L2", "L3", "L4A", "L4B", "Critical")


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(method="GET", path="/debug/metrics", handler=debug_metrics, availability="always")
    ]


async def debug_metrics(ctx: PluginContext) -> dict[str, Any]:
    stats = ctx.bus.stats()
    depth = stats.get("queue_depth", {})
    plugins = ctx.plugins.list()
    return {
        "queue_depth_high": depth.get("high", 0),
        "queue_depth_normal": depth.get("normal", 0),
        "queue_depth_low": depth.get("low", 0),
        "retry_queue_depth": stats.get("retry_queue_depth", 0),
        "overflow_depth": stats.get("overflow_depth", 0),
        "throughput": stats.get("throughput", 0),
        "discarded_count": stats.get("discarded_count", 0),
        "duplicate_count": stats.get("duplicate_count", 0),
        "expired_count": stats.get("expired_count", 0),
        "delivery_failure_count": stats.get("delivery_failure_count", 0),
        "subscription_count": stats.get("subscription_count", 0),
        "backpressure_level": stats.get("backpressure_level", "Normal"),
        "dlq_depth": stats.get("dlq_depth", 0),
        "inflight_pipelines": stats.get("inflight_pipelines", 0),
        "inflight_skills": stats.get("inflight_skills", 0),
        "sse_clients": _gauge(ctx, "sse_clients"),
        "phase": ctx.lifecycle.phase,
        "status": ctx.lifecycle.status,
        "uptime_sec": int(time.time() - ctx.lifecycle.started_at_ms / 1000),
        "plugin_health": [
            {
                "name": p.name,
                "status": p.state.capitalize(),
                "health": p.health["status"],
                "unstable": p.unstable,
            }
            for p in plugins
        ],
    }


def _gauge(ctx: PluginContext, name: str) -> int:
    """A gauge of the kernel's registry that another plugin owns (``sse_clients`` is the stream
    plugin's); 0 while nobody registered it."""
    value = ctx.registry.get_sample_value(name)
    return int(value) if value is not None else 0
