"""``GET /metrics``: Prometheus text of the kernel's registry (http-api §21)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sdk import hookimpl


async def test_metrics_text_is_public_and_well_formed(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(settings={"http.token": "s3cret"}))
    await client.get("/runtime/status", headers={"Authorization": "Bearer s3cret"})
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = (await resp.get_data()).decode()
    for line in text.splitlines():
        assert line.startswith("#") or " " in line, line
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("runtime_phase", ())] == 5
    assert samples[("runtime_ready", ())] == 1
    assert samples[("plugin_health", (("plugin", "auth"), ("status", "Running")))] == 1
    assert samples[("event_bus_queue_depth", (("priority", "high"),))] == 0
    key = ("http_requests_total", (("method", "GET"), ("route", "/runtime/status"), ("status", "200")))
    assert samples[key] == 1
    # A labelled family without series is omitted.
    assert "plugin_hook_errors" not in families


async def test_plugins_add_collectors_and_lose_them_when_disabled(make_kernel, serve_kernel):
    from prometheus_client import Counter

    class Counts:
        name = "counts"

        @hookimpl
        def register_metrics(self, registry) -> None:
            Counter("aman_counts_things", "Things counted.", registry=registry).inc(3)

    client = await serve_kernel(make_kernel(Counts()))
    assert b"aman_counts_things_total 3.0" in await (await client.get("/metrics")).get_data()
    await client.post("/plugin/counts/disable", headers={"x-aman-confirm": "yes"})
    assert b"aman_counts_things" not in await (await client.get("/metrics")).get_data()
    await client.post("/plugin/counts/enable")
    assert b"aman_counts_things_total 3.0" in await (await client.get("/metrics")).get_data()
