"""The event bus (http-api §5.1): priority queues, backpressure, dedup, TTL, delivery modes,
retries, dead-lettering, durability and the event store.

Publishing runs the pipeline of §5.1: validation, trust, backpressure, deduplication, then, for a
guaranteed event in ``persistent`` mode, one store transaction with its outbox row
(``bus_pending``) and its event-store record *before* the publisher gets the id (concurrent
publishers share a commit), then the priority queue. The dispatcher takes the oldest event of the
highest non-empty priority and hands it to each matching subscriber's own queue; every subscriber
works through its queue in order with a time limit per call, so a slow or failing one delays
only itself. A failed guaranteed delivery is retried after the backoff delays (off the worker,
so later events are not held up) and dead-lettered after the last attempt. Completion is recorded
per (subscriber, event) behind the hot path; ``exactly_once`` marks the start durably before the
handler runs. Undone events are replayed at start-up.

The transport is behind :class:`sdk.Bus`, so another one can replace this class without touching
features.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from attrs import define, field
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sdk import (
    Event,
    EventHandler,
    EventMetadata,
    Forbidden,
    Invalid,
    Migration,
    PublishResult,
    Unavailable,
)

from .convert import converter
from .hooks import PluginThreads
from .ids import now_ms, uuid7

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from sdk import Delivery, Priority

    from .config import Config
    from .dead_letters import DeadLetter, DeadLetters
    from .store import SqliteStore

__all__ = ["LEVELS", "MIGRATIONS", "EventBus", "PluginBus", "check_name"]

log = logging.getLogger("aman.bus")
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
GUARANTEED = ("at_least_once", "exactly_once")
DELIVERIES = ("at_most_once", *GUARANTEED)
LEVELS = ("Normal", "L1", "L2", "L3", "L4A", "L4B", "Critical")
LEVEL_VALUE = dict(zip(LEVELS, (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0), strict=True))
_RANK = {name: rank for rank, name in enumerate(LEVELS)}
_PROTECTED = ("config_changed", "secret_rotated", "injection_detected")
_TRACE_MAX = 500
_PRUNE_EVERY = 512
_TIMED_OUT = "TimeoutError: handler timed out"

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE bus_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, trace_id TEXT NOT NULL,
            event_type TEXT NOT NULL, source TEXT NOT NULL, body TEXT NOT NULL
        );
        CREATE INDEX bus_events_id ON bus_events (id);
        CREATE INDEX bus_events_trace ON bus_events (trace_id, seq);
        CREATE TABLE bus_pending (
            id TEXT PRIMARY KEY, rank INTEGER NOT NULL, body TEXT NOT NULL,
            overflow INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE bus_deliveries (
            event_id TEXT NOT NULL, subscriber TEXT NOT NULL, state TEXT NOT NULL,
            PRIMARY KEY (event_id, subscriber)
        ) WITHOUT ROWID;
        CREATE TABLE bus_dedup (
            key TEXT PRIMARY KEY, event_id TEXT NOT NULL, first_ms INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    )
]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: str, what: str) -> None:
    """http-api §1.9: 1–128 characters, no control characters, no surrounding whitespace."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{what} cannot be empty")
    if len(value) > 128 or value != value.strip() or _CONTROL.search(value):
        raise Invalid(
            f"{what} must be 1-128 characters without control characters or surrounding whitespace"
        )


_MARK = "INSERT OR REPLACE INTO bus_deliveries (event_id, subscriber, state) VALUES (?, ?, ?)"


def _sql(statement: str, *params: Any) -> Callable[[sqlite3.Connection], object]:
    """One statement as a store operation."""
    return lambda conn: conn.execute(statement, params)


_unstructure_event = converter.get_unstructure_hook(Event)  # resolved once, not per event
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _dumps(event: Event) -> str:
    return _encode(_unstructure_event(event))


def _loads(body: str) -> Event:
    return converter.structure(json.loads(body), Event)


@define(eq=False)
class _Flight:
    """An accepted event on its way through the subscribers."""

    event: Event
    body: str
    persist: bool  # has an outbox row to clear when done
    open: set[str] = field(factory=set)  # subscribers that have not finished it
    waiting: int = 0  # targets that have not started it (depth accounting)
    counted: bool = True  # counted in the queue depth
    expired: bool = False
    abandoned: bool = False  # a subscriber went away before handling it: keep the outbox row
    retries: int = 0
    done_before: frozenset[str] = frozenset()  # replay: completed before the restart
    started_before: frozenset[str] = frozenset()  # replay: exactly_once deliveries cut short
    only: frozenset[str] | None = None  # a DLQ retry: just these subscribers
    failed: list[str] = field(factory=list)
    reason: str | None = None
    on_done: Callable[[list[str], str | None], Awaitable[None]] | None = None

    @property
    def guaranteed(self) -> bool:
        return self.event.delivery in GUARANTEED


class _Subscriber:
    def __init__(self, name: str, plugin: str, spec: EventHandler) -> None:
        self.name, self.plugin, self.spec = name, plugin, spec
        self.queues: dict[str, deque[tuple[_Flight, int]]] = {p: deque() for p in PRIORITIES}
        self.wake = asyncio.Event()
        self.is_async = inspect.iscoroutinefunction(spec.handler)
        self.task: asyncio.Task[None] | None = None
        self.busy = False
        self.since = 0.0  # when the running call started (loop time)
        self.timed_out = False
        self.active = True
        self.current: _Flight | None = None  # the flight being delivered

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

    def put(self, flight: _Flight, attempt: int) -> None:
        self.queues[flight.event.priority].append((flight, attempt))
        self.wake.set()

    def take(self) -> tuple[_Flight, int] | None:
        """The oldest waiting delivery of the highest priority (strict priority per subscriber)."""
        for priority in PRIORITIES:
            if self.queues[priority]:
                return self.queues[priority].popleft()
        return None

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())


class _WriteBehind:
    """Store writes nobody waits for (completions, at-most-once records), grouped per loop turn."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._ops: list[Callable[[sqlite3.Connection], object]] = []
        self._rows: list[tuple[str, str, str, str, str]] = []
        self._scheduled = False
        self._inflight: set[asyncio.Future[Any]] = set()
        self.on_recorded: Callable[[sqlite3.Connection, int], None] = lambda conn, n: None

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def add(self, op: Callable[[sqlite3.Connection], object]) -> None:
        self._schedule()
        self._ops.append(op)

    def record(self, row: tuple[str, str, str, str, str]) -> None:
        """An event-store record; records of a loop turn go in with one ``executemany``."""
        self._schedule()
        self._rows.append(row)

    def _flush(self) -> None:
        self._scheduled = False
        ops, self._ops = self._ops, []
        rows, self._rows = self._rows, []
        if not (ops or rows) or not self._store.is_open:
            return

        def run(conn: sqlite3.Connection) -> None:
            if rows:
                conn.executemany(
                    "INSERT INTO bus_events (id, trace_id, event_type, source, body) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                self.on_recorded(conn, len(rows))
            for op in ops:
                op(conn)

        future = self._store.defer(run)  # rides along with the next write's commit
        self._inflight.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._inflight.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("bus write failed: %s", future.exception())

    async def wait(self) -> None:
        self._flush()
        self._store.release()
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)


class EventBus:
    """The in-process :class:`sdk.Bus` of the kernel."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry,
        store: SqliteStore,
        dead_letters: DeadLetters,
        threads: PluginThreads | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._threads = threads or PluginThreads()
        self.dead_letters = dead_letters
        self._queues: dict[str, deque[_Flight]] = {p: deque() for p in PRIORITIES}
        self._overflow: list[_Flight] = []
        self._subs: dict[str, list[_Subscriber]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._behind = _WriteBehind(store)
        self._durable_ops: list[Callable[[sqlite3.Connection], object]] = []
        self._durable_future: asyncio.Future[None] | None = None
        self._behind.on_recorded = self._pruned
        self._dedup: dict[str, tuple[str, int]] = {}
        self._depth = 0
        self._retry_waiting = 0
        self._retry_handles: set[asyncio.TimerHandle] = set()
        self._background: set[asyncio.Future[Any]] = set()
        self._recorded = 0
        self._level = "Normal"
        self._level_audited = "Normal"
        self._level_audited_at = 0.0
        self._level_timer: asyncio.TimerHandle | None = None
        self._discards: dict[tuple[str, str], list[Any]] = {}
        self.observers: list[Callable[[Event], None]] = []
        self.on_failure: Callable[[str], None] = lambda plugin: None
        self.on_success: Callable[[str], None] = lambda plugin: None
        self.audit: Callable[[str, str, str], Awaitable[None]] | None = None
        self.accepted = 0
        self.delivery_failures = 0
        self.discarded = 0
        self.duplicates = 0
        self.expired = 0
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

    @property
    def persistent(self) -> bool:
        return bool(self._config.get("event_bus.mode") == "persistent")

    # --- backpressure ----------------------------------------------------------------------

    @property
    def level(self) -> str:
        return self._level

    def _compute_level(self) -> str:
        usage = self._depth / self._config.get("event_bus.max_queue_size")
        if usage >= 1:
            level = "Critical"
        elif usage >= 0.98:
            level = "L4B" if self._overflow_full() else "L4A"
        elif usage >= 0.95:
            level = "L3"
        elif usage >= 0.9:
            level = "L2"
        elif usage >= 0.8:
            level = "L1"
        else:
            level = "Normal"
        if level != self._level:
            self._level = level
            self._level_changed()
        return level

    def _level_changed(self) -> None:
        """Audit a level change at most once a second (http-api §1.8); a change within the
        second is audited at its end, so the log always ends with the level in force."""
        wait = self._level_audited_at + 1 - time.monotonic()
        if wait <= 0:
            self._audit_level()
        elif self._level_timer is None:
            self._level_timer = asyncio.get_running_loop().call_later(wait, self._audit_level)

    def _audit_level(self) -> None:
        self._level_timer = None
        if self._level != self._level_audited:
            self._level_audited, self._level_audited_at = self._level, time.monotonic()
            self._audit("backpressure.apply", "sources", self._level)

    def _overflow_full(self) -> bool:
        cap: int = self._config.get("event_bus.overflow_max_events")
        return len(self._overflow) >= 0.8 * cap

    def _audit(self, action: str, target: str, detail: str) -> None:
        if self.audit is not None:
            self._spawn(self.audit(action, target, detail))

    def _spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _count(self, n: int) -> None:
        self._depth += n
        self._compute_level()
        if (
            n < 0
            and self._overflow
            and self._depth < 0.8 * self._config.get("event_bus.max_queue_size")
        ):
            self._admit_overflow()

    def _drop(self, event: Event, reason: str) -> PublishResult:
        """Count a drop; the answer carries the dropped event's id and trace (never stored)."""
        self.discarded += 1
        source, event_id = event.source, event.id
        key = (source, self._level)
        now = time.monotonic()
        entry = self._discards.setdefault(key, [0.0, 0])
        entry[1] += 1
        if now - entry[0] >= 10:
            self._audit(
                "event.discard",
                source,
                f"level={self._level} reason={reason} dropped={entry[1]} last_event_id={event_id}",
            )
            entry[0], entry[1] = now, 0
        return PublishResult(id=event_id, trace_id=event.metadata.trace_id, status="dropped")

    # --- publishing ------------------------------------------------------------------------

    def build(
        self,
        event_type: str,
        payload: Any = None,
        *,
        source: str = "gateway",
        priority: Priority = "normal",
        delivery: Delivery = "at_most_once",
        agent_id: str | None = None,
        ttl_ms: int | None = None,
        dedup_key: str | None = None,
        trace_id: str | None = None,
        parent_event_id: str | None = None,
        trust_level: str = "trusted",
    ) -> Event:
        """A new, validated event (not published)."""
        check_name(source, "source")
        check_name(event_type, "event_type")
        if priority not in PRIORITIES:
            raise Invalid(
                f"invalid value for 'priority': '{priority}' (expected one of: high, normal, low)"
            )
        if delivery not in DELIVERIES:
            raise Invalid(
                f"invalid value for 'delivery': '{delivery}' (expected one of: {', '.join(DELIVERIES)})"
            )
        created = now_ms()
        event_id = uuid7()
        guaranteed = delivery in GUARANTEED
        return Event(
            id=event_id,
            source=source,
            event_type=event_type,
            timestamp=created,
            priority=priority,
            delivery=delivery,
            dedup_key=dedup_key if dedup_key is not None or not guaranteed else event_id,
            trust_level=trust_level,  # type: ignore[arg-type]
            payload=payload,
            metadata=EventMetadata(
                trace_id=trace_id or uuid7(),
                parent_event_id=parent_event_id,
                agent_id=agent_id,
                max_retries=self._config.get("event_bus.retry_max_attempts") - 1
                if guaranteed
                else 0,
                ttl_ms=ttl_ms,
                created_at=created,
            ),
        )

    async def publish(
        self,
        event_type: str,
        payload: Any = None,
        *,
        from_http: bool = False,
        also: Callable[[sqlite3.Connection, str], object] | None = None,
        **options: Any,
    ) -> PublishResult:
        """Publish by the pipeline of http-api §5.1; ``from_http`` marks an HTTP publish;
        ``also(conn, event_id)`` writes the publisher's own rows in the event's transaction."""
        event = self.build(event_type, payload, **options)
        if event.trust_level == "sandboxed" and event.event_type in _PROTECTED:
            raise Forbidden(f"a sandboxed source may not publish {event.event_type}")
        guaranteed = event.delivery in GUARANTEED
        level = self._compute_level()
        rank = _RANK[level]
        if not guaranteed and rank >= _RANK["L1"]:
            if event.event_type == "idle":
                return self._drop(event, "idle")
            lowered = PRIORITIES[min(PRIORITIES.index(event.priority) + 1, 2)]
            event = attrs.evolve(event, priority=lowered)
        if not guaranteed and rank >= _RANK["L2"]:
            return self._drop(event, "at_most_once")
        if level == "Critical" and event.priority == "low":
            if not guaranteed:
                return self._drop(event, "queue_full")
            raise Unavailable("event bus is full; retry later")
        overflow = False
        if guaranteed and rank >= _RANK["L3"]:
            if from_http:
                raise Unavailable(f"event bus backpressure (level {level}); retry later")
            if rank >= _RANK["L4A"]:
                if self._overflow_full():
                    raise Unavailable(
                        f"event bus backpressure (level {level}); overflow store full"
                    )
                overflow = True
        if event.dedup_key is not None and (original := self._duplicate(event.dedup_key)):
            self.duplicates += 1
            return PublishResult(id=original, trace_id=event.metadata.trace_id, status="duplicate")
        await self._accept(event, overflow=overflow, also=also)
        return PublishResult(id=event.id, trace_id=event.metadata.trace_id, status="queued")

    def _duplicate(self, key: str) -> str | None:
        window = self._config.get("event_bus.dedup_window_ms")
        seen = self._dedup.get(key)
        if window == 0 or seen is None:
            return None
        if now_ms() - seen[1] < window:
            return seen[0]
        del self._dedup[key]
        return None

    async def _commit_durable(self, ops: list[Callable[[sqlite3.Connection], object]]) -> None:
        """Store a guaranteed event's rows before its publisher gets the id. The publishes of one
        loop turn share one store job, so many concurrent publishers cost one round trip to the
        writer; if that job fails, none of them is acknowledged."""
        if self._durable_future is None:
            loop = asyncio.get_running_loop()
            self._durable_future = loop.create_future()
            loop.call_soon(self._flush_durable)
        future = self._durable_future
        self._durable_ops.extend(ops)
        await asyncio.shield(future)

    def _flush_durable(self) -> None:
        ops, future = self._durable_ops, self._durable_future
        self._durable_ops, self._durable_future = [], None
        assert future is not None

        def run(conn: sqlite3.Connection) -> None:
            for op in ops:
                op(conn)

        def settle(job: asyncio.Future[None]) -> None:
            if job.cancelled():
                future.cancel()
            elif (error := job.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(None)

        asyncio.ensure_future(self._store.write(run)).add_done_callback(settle)

    def _forget_old_keys(self) -> None:
        """Drop keys older than the window from the front of the (insertion-ordered) map, and
        their rows now and then."""
        horizon = now_ms() - self._config.get("event_bus.dedup_window_ms")
        dropped = 0
        while self._dedup:
            key, (_, first_ms) = next(iter(self._dedup.items()))
            if first_ms >= horizon:
                break
            del self._dedup[key]
            dropped += 1
        if dropped and self._store.is_open and self.persistent:
            self._behind.add(_sql("DELETE FROM bus_dedup WHERE first_ms < ?", horizon))

    async def _accept(
        self,
        event: Event,
        *,
        overflow: bool,
        also: Callable[[sqlite3.Connection, str], object] | None = None,
    ) -> None:
        body = _dumps(event)
        durable = event.delivery in GUARANTEED and self.persistent
        # A default key is the event's own, freshly minted id: it can never be seen again, so
        # only explicit keys are remembered (and the window stays as small as its traffic).
        key = event.dedup_key
        remember = (
            key is not None
            and key != event.id
            and bool(self._config.get("event_bus.dedup_window_ms"))
        )
        if remember and key is not None:
            self._forget_old_keys()
            self._dedup[key] = (event.id, event.metadata.created_at)
        ops = [self._record_op(event, body)]
        if remember and self.persistent:
            ops.append(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO bus_dedup VALUES (?, ?, ?)",
                    (event.dedup_key, event.id, event.metadata.created_at),
                )
            )
        if also is not None:
            ops.append(lambda c: also(c, event.id))
            if not durable:  # the rows exist before any subscriber sees the event
                await self._store.write(ops[-1])
        if durable:
            rank = PRIORITIES.index(event.priority)
            ops.append(
                lambda c: c.execute(
                    "INSERT INTO bus_pending (id, rank, body, overflow) VALUES (?, ?, ?, ?)",
                    (event.id, rank, body, int(overflow)),
                )
            )

            try:
                await self._commit_durable(ops)
            except Exception:  # not stored, so not accepted: its key may be used again
                if remember and key is not None and self._dedup.get(key, ("",))[0] == event.id:
                    del self._dedup[key]
                raise
        elif self._store.is_open:
            self._behind.record(
                (event.id, event.metadata.trace_id, event.event_type, event.source, body)
            )
            for op in ops[1 : len(ops) - (also is not None)]:
                self._behind.add(op)
        flight = _Flight(event=event, body=body, persist=durable)
        self._accepted.inc()
        self.accepted += 1
        for observe in self.observers:
            observe(event)
        if overflow:
            flight.counted = False
            self._overflow.append(flight)
        else:
            self._enqueue(flight)

    def _record_op(
        self, event: Event, body: str, *, again: bool = False
    ) -> Callable[[sqlite3.Connection], object]:
        """One event-store record written inside another transaction (a guaranteed publish, a
        DLQ redelivery, which records the event again at the top)."""

        def record(conn: sqlite3.Connection) -> None:
            if again:
                conn.execute("DELETE FROM bus_events WHERE id = ?", (event.id,))
            conn.execute(
                "INSERT INTO bus_events (id, trace_id, event_type, source, body) VALUES (?, ?, ?, ?, ?)",
                (event.id, event.metadata.trace_id, event.event_type, event.source, body),
            )
            self._pruned(conn, 1)

        return record

    def _pruned(self, conn: sqlite3.Connection, added: int) -> None:
        """Count records (on the writer thread) and prune the store every few hundred."""
        before = self._recorded
        self._recorded += added
        if before // _PRUNE_EVERY != self._recorded // _PRUNE_EVERY:
            _prune_events(conn, self._config.get("event_bus.event_store_max_events"))

    def _enqueue(self, flight: _Flight) -> None:
        self._queues[flight.event.priority].append(flight)
        flight.counted = True
        self._count(+1)
        self._wake.set()

    def _admit_overflow(self) -> None:
        self._overflow.sort(key=lambda f: (PRIORITIES.index(f.event.priority), f.event.id))
        limit = 0.8 * self._config.get("event_bus.max_queue_size")
        while self._overflow and self._depth < limit:
            flight = self._overflow.pop(0)
            if flight.persist:
                self._behind.add(
                    _sql("UPDATE bus_pending SET overflow = 0 WHERE id = ?", flight.event.id)
                )
            self._queues[flight.event.priority].append(flight)
            self._depth += 1
            self._wake.set()
        self._compute_level()

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
            sub.wake.set()
            own = sub.task is asyncio.current_task()  # a subscriber quarantined by its failure
            if sub.task is not None and not own:
                sub.task.cancel()
            owed = list(iter(sub.take, None))  # what it will never handle here
            if sub.current is not None and not own:  # its cancelled delivery never finishes
                owed.append((sub.current, 0))
            for flight, attempt in owed:
                if attempt == 1:
                    self._started(flight)
                if flight.on_done is not None:  # a DLQ retry: the entry keeps this subscriber
                    flight.failed = sorted({*flight.failed, sub.name})
                    flight.reason = flight.reason or f"subscriber {sub.name} stopped"
                else:
                    flight.abandoned = True  # still owed: replayed at the next start
                self._finish_for(flight, sub.name)

    def subscribers(self) -> list[str]:
        return [s.name for subs in self._subs.values() for s in subs]

    @property
    def subscription_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # --- dispatching -----------------------------------------------------------------------

    def start(self) -> None:
        """Start dispatching (after phase 2, so replayed events reach restarted subscribers)."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._dispatch(), name="aman-bus")
            self._watchdog = loop.create_task(self._watch_handlers(), name="aman-bus-watchdog")

    async def _watch_handlers(self) -> None:
        """Cut short every handler call running longer than ``event_bus.handler_timeout_ms``.
        One watchdog instead of a timer per call keeps the per-event cost low."""
        loop = asyncio.get_running_loop()
        while True:
            limit = self._config.get("event_bus.handler_timeout_ms") / 1000
            await asyncio.sleep(min(0.05, limit / 4))
            now = loop.time()
            for subs in list(self._subs.values()):
                for sub in subs:
                    if (
                        sub.busy
                        and not sub.timed_out
                        and now - sub.since > limit
                        and sub.task is not None
                    ):
                        sub.timed_out = True
                        sub.task.cancel()

    def _next(self) -> _Flight | None:
        for priority in PRIORITIES:
            if self._queues[priority]:
                return self._queues[priority].popleft()
        return None

    async def _dispatch(self) -> None:
        while True:
            flight = self._next()
            if flight is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._hand_out(flight)
            except Exception:  # the bus always recovers
                log.exception("dispatching event %s failed", flight.event.id)

    async def _hand_out(self, flight: _Flight) -> None:
        event = flight.event
        if self._is_expired(event):
            flight.waiting = 0
            self._uncount(flight)
            await self._expire(flight)
            return
        targets = []
        for subs in self._subs.values():
            for sub in subs:
                if not sub.wants(event) or sub.name in flight.done_before:
                    continue
                if flight.only is not None and sub.name not in flight.only:
                    continue
                targets.append(sub)
        interrupted = [s for s in targets if s.name in flight.started_before]
        targets = [s for s in targets if s.name not in flight.started_before]
        flight.open = {s.name for s in targets} | {s.name for s in interrupted}
        flight.waiting = len(targets)
        if not targets:
            self._uncount(flight)
        for sub in interrupted:
            await self._dead_letter(
                flight, sub.name, f"InterruptedDelivery: {sub.name}", sub.plugin
            )
        for sub in targets:
            sub.put(flight, 1)
        if not flight.open:
            await self._complete(flight)

    def _uncount(self, flight: _Flight) -> None:
        if flight.counted:
            flight.counted = False
            self._count(-1)

    def _started(self, flight: _Flight) -> None:
        flight.waiting -= 1
        if flight.waiting <= 0:
            self._uncount(flight)

    def _is_expired(self, event: Event) -> bool:
        meta = event.metadata
        if meta.ttl_ms is None and meta.lifespan_ms is None:
            return False
        age = now_ms() - meta.created_at
        return any(limit is not None and age > limit for limit in (meta.ttl_ms, meta.lifespan_ms))

    async def _work(self, sub: _Subscriber) -> None:
        while sub.active:
            item = sub.take()
            if item is None:
                sub.wake.clear()
                await sub.wake.wait()
                continue
            flight, attempt = item
            sub.current = flight
            try:
                await self._deliver(sub, flight, attempt)
            except Exception:  # the store refused its bookkeeping (disk full)
                # A guaranteed event keeps its outbox row: it is delivered again at the next
                # start. The subscriber goes on with the next event.
                log.exception(
                    "subscriber %s: event %s could not be settled", sub.name, flight.event.id
                )
            sub.current = None

    async def _deliver(self, sub: _Subscriber, flight: _Flight, attempt: int) -> None:
        if attempt == 1:
            self._started(flight)
        if flight.expired or sub.name not in flight.open:
            return
        event = flight.event
        if self._is_expired(event):
            await self._expire(flight)
            return
        if event.delivery == "exactly_once" and flight.persist:
            await self._store.write(_sql(_MARK, event.id, sub.name, "started"))
        error = await self._call(sub, event)
        if error is not None:
            await self._failed(flight, sub, attempt, error)
            return
        self.on_success(sub.plugin)
        if flight.persist:
            self._behind.add(_sql(_MARK, event.id, sub.name, "done"))
        await self._finish_for_async(flight, sub.name)

    async def _call(self, sub: _Subscriber, event: Event) -> str | None:
        """Run the subscriber's handler on ``event``; the reason it failed, or None. A sync
        handler runs in a thread of its plugin, so it never blocks the loop; an async one that
        blocks the loop past the limit cannot be cut short, but counts as timed out."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        handler = sub.spec.handler
        sub.busy, sub.since = True, loop.time()
        try:
            if sub.is_async:
                await handler(event)  # type: ignore[misc]  # an async def: awaitable
            else:
                result = await self._threads.run(sub.plugin, handler, event)
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            if not sub.active:
                raise
            task.uncancel()  # cut short by the watchdog (or a stray cancel): a failure
            return _TIMED_OUT if sub.timed_out else "cancelled"
        except Exception as exc:  # noqa: BLE001 - isolated per subscriber
            return f"{type(exc).__name__}: {exc}"
        finally:
            sub.busy = False
            if sub.timed_out and task.cancelling():  # the handler swallowed the cancel
                task.uncancel()
            sub.timed_out = False
        if loop.time() - sub.since > self._config.get("event_bus.handler_timeout_ms") / 1000:
            return _TIMED_OUT
        return None

    async def _failed(self, flight: _Flight, sub: _Subscriber, attempt: int, error: str) -> None:
        self._failures.labels(subscriber=sub.name).inc()
        self.delivery_failures += 1
        log.warning(
            "subscriber %s failed on event %s (attempt %d): %s",
            sub.name,
            flight.event.id,
            attempt,
            error,
        )
        if not flight.guaranteed:
            self.on_failure(sub.plugin)
            await self._finish_for_async(flight, sub.name)
            return
        flight.retries = max(flight.retries, attempt - 1)  # automatic redeliveries so far
        if attempt >= self._config.get("event_bus.retry_max_attempts"):
            await self._dead_letter(
                flight, sub.name, f"DeliveryFailed: {sub.name}: {error}", sub.plugin
            )
            return
        if self._retry_waiting >= self._config.get("event_bus.retry_queue_max"):
            await self._dead_letter(flight, sub.name, f"RetryQueueFull: {sub.name}", sub.plugin)
            return
        delays = self._config.get("event_bus.retry_backoff_ms")
        delay = delays[min(attempt - 1, len(delays) - 1)] / 1000
        self._retry_waiting += 1
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def again() -> None:
            self._retry_waiting -= 1
            if handle is not None:
                self._retry_handles.discard(handle)
            if sub.active:
                sub.put(flight, attempt + 1)
            else:  # the subscriber went away while waiting: keep the event in the DLQ
                self._spawn(
                    self._dead_letter(
                        flight, sub.name, f"DeliveryFailed: {sub.name}: {error}", sub.plugin
                    )
                )

        handle = loop.call_later(delay, again)
        self._retry_handles.add(handle)

    async def _dead_letter(
        self, flight: _Flight, subscriber: str, reason: str, plugin: str | None
    ) -> None:
        flight.failed.append(subscriber)
        flight.reason = reason
        if flight.on_done is None:  # a DLQ retry reports back to its entry instead
            event = attrs.evolve(
                flight.event,
                metadata=attrs.evolve(flight.event.metadata, retry_count=flight.retries),
            )
            created = await self._store_dead_letter(flight, event, subscriber, reason)
            if created:
                await self.publish(
                    "dlq:enqueued",
                    {"id": event.id, "event_type": event.event_type, "reason": reason},
                    source="dlq",
                )
        if plugin is not None:
            self.on_failure(plugin)
        await self._finish_for_async(flight, subscriber)

    async def _store_dead_letter(
        self, flight: _Flight, event: Event, subscriber: str | None, reason: str
    ) -> bool:
        body = _dumps(event)

        def add(conn: sqlite3.Connection) -> bool:
            created = self.dead_letters.add_in(
                conn,
                event,
                body,
                subscriber=subscriber,
                reason=reason,
                original_retry_count=flight.retries,
            )
            if flight.persist and subscriber:
                conn.execute(_MARK, (event.id, subscriber, "done"))
            return created

        created = await self._store.write(add)
        if created:
            self.dead_letters.depth += 1
        return created

    async def _expire(self, flight: _Flight) -> None:
        if flight.expired:
            return
        flight.expired = True
        if flight.on_done is not None:  # a DLQ retry: its entry is dropped or goes back `Expired`
            if flight.guaranteed and self._config.get("event_bus.dead_letter_expired"):
                owed = flight.open or flight.only or frozenset()
                flight.failed, flight.reason = sorted({*flight.failed, *owed}), "Expired"
        elif flight.guaranteed and self._config.get("event_bus.dead_letter_expired"):
            event = flight.event

            def add(conn: sqlite3.Connection) -> bool:
                created = self.dead_letters.add_in(
                    conn,
                    event,
                    flight.body,
                    subscriber=None,
                    reason="Expired",
                    original_retry_count=flight.retries,
                )
                conn.execute(
                    "UPDATE dead_letters SET failed_subscribers = ? WHERE id = ?",
                    (json.dumps(sorted(flight.open)), event.id),
                )
                return created

            if await self._store.write(add):
                self.dead_letters.depth += 1
        self.expired += 1  # counted once its dead letter is stored: readers see both or neither
        flight.open.clear()
        await self._complete(flight)

    def _finish_for(self, flight: _Flight, subscriber: str) -> None:
        flight.open.discard(subscriber)
        if not flight.open:
            self._spawn(self._complete(flight))

    async def _finish_for_async(self, flight: _Flight, subscriber: str) -> None:
        if subscriber in flight.open:
            flight.open.discard(subscriber)
            if not flight.open:
                await self._complete(flight)

    async def _complete(self, flight: _Flight) -> None:
        if flight.persist and not flight.abandoned:
            flight.persist = False  # once
            event_id = flight.event.id

            def clear(conn: sqlite3.Connection) -> None:
                conn.execute("DELETE FROM bus_pending WHERE id = ?", (event_id,))
                conn.execute("DELETE FROM bus_deliveries WHERE event_id = ?", (event_id,))

            self._behind.add(clear)
        if flight.on_done is not None:
            done, flight.on_done = flight.on_done, None
            await done(flight.failed, flight.reason)

    # --- replay and manual redelivery ------------------------------------------------------

    async def replay(self) -> int:
        """Phase 1: re-queue the guaranteed events not done before the stop; rebuild the dedup
        window. Returns the number of events re-queued."""
        window = self._config.get("event_bus.dedup_window_ms")

        def load(
            conn: sqlite3.Connection,
        ) -> tuple[list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row]]:
            conn.execute("DELETE FROM bus_dedup WHERE first_ms < ?", (now_ms() - window,))
            pending = conn.execute(
                "SELECT id, body, overflow FROM bus_pending ORDER BY rank, id"
            ).fetchall()
            deliveries = conn.execute(
                "SELECT event_id, subscriber, state FROM bus_deliveries"
            ).fetchall()
            dedup = conn.execute("SELECT key, event_id, first_ms FROM bus_dedup").fetchall()
            return pending, deliveries, dedup

        if not self.persistent:
            return 0
        pending, deliveries, dedup = await self._store.write(load)
        self._dedup = {r["key"]: (r["event_id"], r["first_ms"]) for r in dedup}
        done: dict[str, set[str]] = {}
        started: dict[str, set[str]] = {}
        for row in deliveries:
            (done if row["state"] == "done" else started).setdefault(row["event_id"], set()).add(
                row["subscriber"]
            )
        for row in pending:
            event = _loads(row["body"])
            flight = _Flight(
                event=event,
                body=row["body"],
                persist=True,
                done_before=frozenset(done.get(event.id, ())),
                started_before=frozenset(started.get(event.id, ()))
                if event.delivery == "exactly_once"
                else frozenset(),
            )
            if row["overflow"]:
                flight.counted = False
                self._overflow.append(flight)
            else:
                self._queues[event.priority].append(flight)
                self._depth += 1
        self._compute_level()
        return len(pending)

    async def redeliver(self, entry: DeadLetter) -> list[str]:
        """A manual DLQ retry: deliver the entry's event again, same id and trace, not subject to
        deduplication, to its failed subscribers that still exist (else to every current match),
        with the normal automatic retries; the entry is deleted when they all complete it."""
        level = self._compute_level()
        if _RANK[level] >= _RANK["L3"]:
            raise Unavailable(f"event bus backpressure (level {level}); retry later")
        event = converter.structure(entry.event, Event)
        existing = set(self.subscribers())
        only = [name for name in entry.failed_subscribers if name in existing]
        targets = only or sorted(
            s.name for subs in self._subs.values() for s in subs if s.wants(event)
        )

        async def done(failed: list[str], reason: str | None) -> None:
            await self.dead_letters.finish_retry(entry.id, failed, reason)

        flight = _Flight(
            event=event, body=_dumps(event), persist=False, only=frozenset(targets), on_done=done
        )
        if self._store.is_open:
            self._behind.add(self._record_op(event, flight.body, again=True))
        self._accepted.inc()
        self.accepted += 1
        for observe in self.observers:
            observe(event)
        self._enqueue(flight)
        return targets

    # --- event store -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every write-behind record is in the store."""
        await self._behind.wait()

    async def get_event(self, event_id: str) -> Event | None:
        await self.flush()
        rows = await self._store.fetchall(
            "SELECT body FROM bus_events WHERE id = ? ORDER BY seq DESC LIMIT 1", (event_id,)
        )
        return _loads(rows[0]["body"]) if rows else None

    async def trace(self, trace_id: str) -> list[Event]:
        await self.flush()
        rows = await self._store.fetchall(
            "SELECT body FROM bus_events WHERE trace_id = ? ORDER BY seq", (trace_id,)
        )
        events = {e.id: e for e in (_loads(r["body"]) for r in rows)}
        return sorted(events.values(), key=lambda e: (e.timestamp, e.id))

    async def recent(
        self, limit: int, *, event_type: str | None = None, source: str | None = None
    ) -> list[Event]:
        await self.flush()
        where, params = [], []  # type: tuple[list[str], list[Any]]
        if event_type is not None:
            where.append("event_type = ?")
            params.append(event_type)
        if source is not None:
            where.append("source = ?")
            params.append(source)
        sql = "SELECT body FROM bus_events" + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = await self._store.fetchall(sql + " ORDER BY seq DESC LIMIT ?", [*params, limit])
        return [_loads(r["body"]) for r in rows]

    async def after(self, event_id: str, limit: int) -> list[Event] | None:
        """Events recorded after ``event_id`` (oldest first), or None when it is not stored."""
        await self.flush()
        found = await self._store.fetchall(
            "SELECT max(seq) FROM bus_events WHERE id = ?", (event_id,)
        )
        if not found or found[0][0] is None:
            return None
        rows = await self._store.fetchall(
            "SELECT body FROM bus_events WHERE seq > ? ORDER BY seq LIMIT ?", (found[0][0], limit)
        )
        return [_loads(r["body"]) for r in rows]

    # --- drain and stop --------------------------------------------------------------------

    def pending(self) -> int:
        queued = sum(len(q) for q in self._queues.values())
        busy = sum(len(s) + s.busy for subs in self._subs.values() for s in subs)
        return queued + busy + self._retry_waiting

    async def drain(self, timeout: float, give_up: Callable[[], bool] = lambda: False) -> None:
        """Wait until nothing is pending, ``timeout`` passes, 2 s pass without progress, or
        ``give_up()`` turns true. Guaranteed events still pending stay in the store."""
        deadline = time.monotonic() + timeout
        last, still_since = self.pending(), time.monotonic()
        while (now := time.monotonic()) < deadline and (left := self.pending()) and not give_up():
            if left != last:
                last, still_since = left, now
            elif now - still_since >= 2:
                break
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._level_timer is not None:
            self._level_timer.cancel()
            self._level_timer = None
        for handle in self._retry_handles:
            handle.cancel()
        self._retry_handles.clear()
        self._retry_waiting = 0
        tasks = [t for t in [self._task, self._watchdog] if t] + [
            s.task for subs in self._subs.values() for s in subs if s.task
        ]
        for subs in self._subs.values():
            for sub in subs:
                sub.active = False
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = self._watchdog = None
        self._subs.clear()
        await self._behind.wait()

    def stats(self) -> dict[str, Any]:
        return {
            "queue_depth": {p: len(q) for p, q in self._queues.items()},
            "throughput": self.accepted,
            "subscription_count": self.subscription_count,
            "delivery_failure_count": self.delivery_failures,
            "discarded_count": self.discarded,
            "duplicate_count": self.duplicates,
            "expired_count": self.expired,
            "retry_queue_depth": self._retry_waiting,
            "overflow_depth": len(self._overflow),
            "backpressure_level": self._level,
            "dlq_depth": self.dead_letters.depth,
        }


def _prune_events(conn: sqlite3.Connection, keep: int) -> None:
    """Keep the newest ``keep`` events and at most 500 per trace (http-api §5.1)."""
    conn.execute(
        "DELETE FROM bus_events WHERE seq <= (SELECT max(seq) FROM bus_events) - ?", (keep,)
    )
    for (trace_id,) in conn.execute(
        "SELECT trace_id FROM bus_events GROUP BY trace_id HAVING count(*) > ?", (_TRACE_MAX,)
    ).fetchall():
        conn.execute(
            "DELETE FROM bus_events WHERE trace_id = ? AND seq < (SELECT seq FROM bus_events"
            " WHERE trace_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (trace_id, trace_id, _TRACE_MAX - 1),
        )


class _BusCollector(Collector):
    """The bus metrics of http-api §21 that are read from live state at every scrape."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    def collect(self) -> Iterable[Metric]:
        bus = self._bus
        depth = GaugeMetricFamily(
            "event_bus_queue_depth", "Events waiting per priority.", labels=["priority"]
        )
        for priority, queue in bus._queues.items():
            depth.add_metric([priority], len(queue))
        yield depth
        yield GaugeMetricFamily("subscription_count", "Subscribers.", value=bus.subscription_count)
        yield GaugeMetricFamily("retry_queue_depth", "Retries waiting.", value=bus._retry_waiting)
        yield GaugeMetricFamily(
            "overflow_depth", "Events in the overflow store.", value=len(bus._overflow)
        )
        yield GaugeMetricFamily(
            "dlq_depth", "DLQ entries in state dead.", value=bus.dead_letters.depth
        )
        yield GaugeMetricFamily(
            "backpressure_level", "0 (Normal) to 1 (Critical).", value=LEVEL_VALUE[bus.level]
        )
        yield CounterMetricFamily(
            "events_discarded", "Events dropped by backpressure.", value=bus.discarded
        )
        yield CounterMetricFamily("events_duplicate", "Duplicates dropped.", value=bus.duplicates)
        yield CounterMetricFamily("events_expired", "Events expired by TTL.", value=bus.expired)


class PluginBus:
    """A plugin's view of the bus: events default to the source ``plugin:<name>``. Built-ins
    may name any source and mark HTTP publishes; a third-party plugin publishes only as itself
    (``plugin:<name>`` or below it)."""

    def __init__(self, bus: EventBus, plugin: str, *, builtin: bool) -> None:
        self._bus, self._plugin, self._builtin = bus, plugin, builtin

    def __getattr__(self, name: str) -> Any:  # event store, DLQ, level, stats: the bus's own
        return getattr(self._bus, name)

    async def publish(self, event_type: str, payload: Any = None, **options: Any) -> PublishResult:
        own = f"plugin:{self._plugin}"
        source = options.pop("source", None) or own
        if not self._builtin:
            if source != own and not source.startswith(own + "/"):
                raise Invalid(f"plugin {self._plugin} may only publish as source {own}")
            options.pop("trust_level", None)
            options.pop("from_http", None)
        return await self._bus.publish(event_type, payload, source=source, **options)
