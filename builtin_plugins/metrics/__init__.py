"""Metrics: Prometheus text exposition of the kernel's registry at ``/metrics`` (http-api §21)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sdk import PluginContext, Response, Route, hookimpl

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(method="GET", path="/metrics", handler=metrics, public=True, availability="always")
    ]


@hookimpl
def register_metrics(ctx: PluginContext, registry: CollectorRegistry) -> None:
    registry.register(PluginHealth(ctx))


class PluginHealth(Collector):
    """``plugin_health{plugin,status}``: one series per plugin, always 1."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "plugin_health", "One series per plugin (always 1).", labels=["plugin", "status"]
        )
        for plugin in self._ctx.plugins.list():
            family.add_metric([plugin.name, plugin.state.capitalize()], 1)
        yield family


class _NonEmpty(Collector):
    """The registry without the families that have no series yet (http-api §21)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return (m for m in self._registry.collect() if m.samples)


async def metrics(ctx: PluginContext) -> Response:
    view = CollectorRegistry(auto_describe=False)
    view.register(_NonEmpty(ctx.registry))
    return Response(body=generate_latest(view), content_type=CONTENT_TYPE)
