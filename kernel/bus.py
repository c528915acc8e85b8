"""The event bus: three priority queues, a dispatcher, and one worker per subscriber.

The dispatcher always takes the oldest event of the highest non-empty priority and hands it to
every matching subscriber's own queue; each subscriber works through its queue in order, with a
time limit per call. A slow or failing subscriber therefore delays only itself.

The transport sits behind :class:`sdk.Bus`, so a durable or distributed one can replace this
class without touching features.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sdk import Event, EventHandler, EventMetadata, Invalid, PublishResult

from .ids import now_ms, uuid7

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from sdk import Delivery, Priority

    from .config import Config

__all__ = ["EventBus", "PluginBus", "check_name"]

log = logging.getLogger("aman.bus")
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
_GUARANTEED = ("at_least_once", "exactly_once")


def check_name(value: str, what: str) -> None:
    """http-api §1.9: 1–128 characters, no control characters, no surrounding whitespace."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{what} cannot be empty")
    if (
        len(value) > 128
        or value != value.strip()
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        raise Invalid(
            f"{what} must be 1-128 characters without control characters or surrounding whitespace"
        )


class _Subscriber:
    def __init__(self, name: str, plugin: str, spec: EventHandler) -> None:
        self.name, self.plugin, self.spec = name, plugin, spec
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.busy = False
        self.active = True

    def wants(self, event: Event) -> bool:
        spec = self.spec
        if spec.event_types and event.event_type not in spec.event_types:
            return False
        if spec.sources and event.source not in spec.sources:
            return False
        if spec.priorities and event.priority not in spec.priorities:
            return False
        if spec.payload is not None:
            payload = event.payload
            if not isinstance(payload, Mapping):
                return False
            return all(k in payload and payload[k] == v for k, v in spec.payload.items())
        return True


class EventBus:
    """The in-process :class:`sdk.Bus`."""

    def __init__(self, config: Config, registry: CollectorRegistry) -> None:
        self._config = config
        self._queues: dict[str, deque[Event]] = {p: deque() for p in PRIORITIES}
        self._subs: dict[str, list[_Subscriber]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.observers: list[Callable[[Event], None]] = []
        self.on_failure: Callable[[str], None] = lambda plugin: None
        self.on_success: Callable[[str], None] = lambda plugin: None
        self.accepted = 0
        self.delivery_failures = 0
        self._accepted = Counter(
            "event_throughput", "Events accepted by the bus.", registry=registry
        )
        self._failures = Counter(
            "event_delivery_failures",
            "Failed delivery attempts.",
            ["subscriber"],
            registry=registry,
        )
        registry.register(_BusCollector(self))

    # --- publishing ------------------------------------------------------------------------

    async def publish(
        self,
        event_type: str,
        payload: Any = None,
        *,
        source: str | None = None,
        priority: Priority = "normal",
        delivery: Delivery = "at_most_once",
        agent_id: str | None = None,
        ttl_ms: int | None = None,
        dedup_key: str | None = None,
        trace_id: str | None = None,
        parent_event_id: str | None = None,
        trust_level: str = "trusted",
    ) -> PublishResult:
        source = source or "gateway"
        check_name(source, "source")
        check_name(event_type, "event_type")
        if priority not in PRIORITIES:
            raise Invalid(f"invalid priority: {priority}")
        created = now_ms()
        event_id = uuid7()
        event = Event(
            id=event_id,
            source=source,
            event_type=event_type,
            timestamp=created,
            priority=priority,
            delivery=delivery,
            dedup_key=dedup_key
            if dedup_key is not None or delivery not in _GUARANTEED
            else event_id,
            trust_level=trust_level,  # type: ignore[arg-type]
            payload=payload,
            metadata=EventMetadata(
                trace_id=trace_id or uuid7(),
                parent_event_id=parent_event_id,
                agent_id=agent_id,
                max_retries=self._config.get("event_bus.retry_max_attempts") - 1
                if delivery in _GUARANTEED
                else 0,
                ttl_ms=ttl_ms,
                created_at=created,
            ),
        )
        self._queues[priority].append(event)
        self._accepted.inc()
        self.accepted += 1
        self._wake.set()
        for observe in self.observers:
            observe(event)
        return PublishResult(id=event.id, trace_id=event.metadata.trace_id, status="queued")

    # --- subscribers -----------------------------------------------------------------------

    def subscribe(
        self, plugin: str, handlers: Iterable[EventHandler], *, builtin: bool = False
    ) -> None:
        handlers = list(handlers)
        subs = []
        for spec in handlers:
            if builtin:
                name = spec.name
            else:
                name = f"plugin:{plugin}" if len(handlers) == 1 else f"plugin:{plugin}/{spec.name}"
            sub = _Subscriber(name, plugin, spec)
            sub.task = asyncio.get_running_loop().create_task(
                self._work(sub), name=f"aman-sub-{name}"
            )
            subs.append(sub)
        if subs:
            self._subs[plugin] = subs

    def unsubscribe(self, plugin: str) -> None:
        for sub in self._subs.pop(plugin, []):
            sub.active = False
            if sub.task is not None and sub.task is not asyncio.current_task():
                sub.task.cancel()

    @property
    def subscription_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # --- dispatching -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="aman-bus")

    def pending(self) -> int:
        waiting = sum(len(q) for q in self._queues.values())
        return waiting + sum(s.queue.qsize() + s.busy for subs in self._subs.values() for s in subs)

    async def drain(self, timeout: float, give_up: Callable[[], bool] = lambda: False) -> None:
        """Wait until nothing is pending, ``timeout`` passes, 2 s pass without progress, or
        ``give_up()`` turns true."""
        deadline = time.monotonic() + timeout
        last, still_since = self.pending(), time.monotonic()
        while (now := time.monotonic()) < deadline and (left := self.pending()) and not give_up():
            if left != last:
                last, still_since = left, now
            elif now - still_since >= 2:
                break
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        tasks = [t for t in [self._task] if t] + [
            s.task for subs in self._subs.values() for s in subs if s.task
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._subs.clear()

    def _next(self) -> Event | None:
        for priority in PRIORITIES:
            if self._queues[priority]:
                return self._queues[priority].popleft()
        return None

    async def _dispatch(self) -> None:
        while True:
            event = self._next()
            if event is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            for subs in list(self._subs.values()):
                for sub in subs:
                    if sub.wants(event):
                        sub.queue.put_nowait(event)

    async def _work(self, sub: _Subscriber) -> None:
        handler = sub.spec.handler
        while sub.active:
            event = await sub.queue.get()
            if not sub.active:
                break
            sub.busy = True
            try:
                async with asyncio.timeout(self._config.get("event_bus.handler_timeout_ms") / 1000):
                    if inspect.iscoroutinefunction(handler):
                        await handler(event)
                    else:
                        result = await asyncio.to_thread(handler, event)
                        if inspect.isawaitable(result):
                            await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.labels(subscriber=sub.name).inc()
                self.delivery_failures += 1
                log.error("subscriber %s failed on event %s: %r", sub.name, event.id, exc)
                self.on_failure(sub.plugin)
            else:
                self.on_success(sub.plugin)
            finally:
                sub.busy = False

    def stats(self) -> dict[str, Any]:
        return {
            "queue_depth": {p: len(q) for p, q in self._queues.items()},
            "throughput": self.accepted,
            "subscription_count": self.subscription_count,
            "delivery_failure_count": self.delivery_failures,
        }


class _BusCollector(Collector):
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "event_bus_queue_depth", "Events waiting per priority.", labels=["priority"]
        )
        for priority, queue in self._bus._queues.items():
            depth.add_metric([priority], len(queue))
        yield depth
        yield GaugeMetricFamily(
            "subscription_count", "Subscribers.", value=self._bus.subscription_count
        )


class PluginBus:
    """A plugin's view of the bus: events default to the source ``plugin:<name>``. Built-ins
    may name any source; a third-party plugin only its own (``plugin:<name>`` or below it)."""

    def __init__(self, bus: EventBus, plugin: str, *, builtin: bool) -> None:
        self._bus, self._plugin, self._builtin = bus, plugin, builtin

    async def publish(self, event_type: str, payload: Any = None, **options: Any) -> PublishResult:
        own = f"plugin:{self._plugin}"
        source = options.pop("source", None) or own
        if not self._builtin and source != own and not source.startswith(own + "/"):
            raise Invalid(f"plugin {self._plugin} may only publish as source {own}")
        options.pop("trust_level", None)
        return await self._bus.publish(event_type, payload, source=source, **options)

    def stats(self) -> Mapping[str, Any]:
        return self._bus.stats()
