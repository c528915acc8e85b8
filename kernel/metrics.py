"""The kernel's Prometheus registry and its own metric families (http-api §21).

One registry per kernel, never the global one, so kernels in one process (tests) stay apart.
Plugins add collectors through ``register_metrics``; the ``metrics`` plugin serves them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["KernelMetrics"]


class KernelMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "http_requests", "Requests served.", ["method", "route", "status"], registry=r
        )
        self.auth_failures = Counter("http_auth_failures", "401 answers.", registry=r)
        self.hook_errors = Counter(
            "plugin_hook_errors",
            "Hook calls that raised or timed out.",
            ["plugin", "hook"],
            registry=r,
        )
        self.phase = Gauge("runtime_phase", "Runtime phase, 0..5.", registry=r)
        self.ready = Gauge("runtime_ready", "1 when the runtime is ready.", registry=r)
