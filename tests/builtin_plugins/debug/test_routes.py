"""``GET /debug/metrics`` (http-api §20)."""

from __future__ import annotations

from sdk import EventHandler, hookimpl


async def test_debug_metrics_fields(make_kernel, serve_kernel):
    class Sub:
        name = "sub"

        @hookimpl
        def register_event_handlers(self):
            return [EventHandler(name="all", handler=self.handle)]

        async def handle(self, event) -> None:
            pass

    kernel = make_kernel(Sub())
    client = await serve_kernel(kernel)
    await kernel.bus.publish("x.test", {})
    body = await (await client.get("/debug/metrics")).get_json()
    expected = {
        "queue_depth_high", "queue_depth_normal", "queue_depth_low", "retry_queue_depth", "overflow_depth",
        "throughput", "discarded_count", "duplicate_count", "expired_count", "delivery_failure_count",
        "subscription_count", "backpressure_level", "dlq_depth", "inflight_pipelines", "inflight_skills",
        "sse_clients", "phase", "status", "uptime_sec", "plugin_health",
    }
    assert set(body) == expected
    assert body["phase"] == 5 and body["status"] == "ready"
    assert body["subscription_count"] == len(kernel.bus.subscribers())  # built-ins subscribe too
    assert "plugin:sub" in kernel.bus.subscribers()
    assert body["throughput"] >= 2  # gateway:ready and x.test at least
    assert body["backpressure_level"] == "Normal"
    names = [p["name"] for p in body["plugin_health"]]
    assert names == sorted(names)
    sub = next(p for p in body["plugin_health"] if p["name"] == "sub")
    assert sub == {"name": "sub", "status": "Running", "health": "healthy", "unstable": False}
