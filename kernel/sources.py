"""The source registry (http-api §6): every event source, whatever plugin owns it.

Sources start at phase 4 (or at once when added to a ready runtime), stop before the bus drains
at shutdown, and are paused by operators (persisted) and by backpressure: a watcher checks the
bus level every 200 ms and pauses every running source at L3 and above, resuming them below it.
What a source emits is published with its id as the event source and its trust level;
plugin-kind sources are limited to 100 events/s with a burst of 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from attrs import define, field

from sdk import Conflict, Invalid, Migration, NotFound, PublishResult, Unavailable
from sdk.sources import EventSource, SourceInfo

from .bus import LEVELS
from .ids import now_ms

if TYPE_CHECKING:
    from .bus import EventBus
    from .store import SqliteStore

__all__ = ["MIGRATIONS", "PluginSources", "SourceRegistry"]

log = logging.getLogger("aman.sources")
WATCH_INTERVAL_SEC = 0.2
RATE_PER_SEC, BURST = 100.0, 200.0
_L3 = LEVELS.index("L3")

MIGRATIONS = [
    Migration(
        version=1,
        sql="CREATE TABLE source_state (id TEXT PRIMARY KEY, operator_paused INTEGER NOT NULL);",
    )
]


@define(eq=False)
class _Entry:
    source: EventSource
    plugin: str
    paused_by: list[str] = field(factory=list)
    started: bool = False
    shutdown: bool = False
    emitted: int = 0
    last_ms: int | None = None
    tokens: float = BURST
    refilled: float = field(factory=time.monotonic)

    @property
    def state(self) -> str:
        if self.shutdown:
            return "shutdown"
        if not self.started:
            return "registered"
        return "paused" if self.paused_by else "running"


class SourceRegistry:
    def __init__(self, bus: EventBus, store: SqliteStore) -> None:
        self._bus = bus
        self._store = store
        self._entries: dict[str, _Entry] = {}
        self._operator_paused: set[str] = set()
        self._running = False  # phase 4 reached
        self._watcher: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Phase 1: the operator pauses that survive restarts."""
        rows = await self._store.fetchall("SELECT id FROM source_state WHERE operator_paused = 1")
        self._operator_paused = {r["id"] for r in rows}

    # --- registration ----------------------------------------------------------------------

    async def add(self, plugin: str, source: EventSource) -> SourceInfo:
        if not isinstance(source, EventSource):
            raise TypeError(f"plugin {plugin}: {source!r} is not an EventSource")
        if source.id in self._entries:
            raise Conflict(f"source already exists: {source.id}")
        entry = _Entry(source=source, plugin=plugin)
        if source.id in self._operator_paused:
            entry.paused_by.append("operator")
        self._entries[source.id] = entry
        if self._running:
            await self._start(entry)
        return self._info(entry)

    async def remove(self, source_id: str, *, forget: bool = False) -> None:
        entry = self._entry(source_id)
        del self._entries[source_id]
        await self._stop(entry)
        if forget and source_id in self._operator_paused:
            await self._remember(source_id, False)

    async def remove_plugin(self, plugin: str) -> None:
        for source_id in [i for i, e in self._entries.items() if e.plugin == plugin]:
            await self.remove(source_id)

    async def replace(self, plugin: str, source: EventSource) -> SourceInfo:
        if source.id in self._entries:
            with contextlib.suppress(Exception):
                await self.remove(source.id)
        return await self.add(plugin, source)

    # --- lifecycle -------------------------------------------------------------------------

    async def start_all(self) -> None:
        """Phase 4: start every source; operator-paused ones stay paused."""
        self._running = True
        for entry in list(self._entries.values()):
            await self._start(entry)
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="aman-sources")

    async def stop_all(self) -> None:
        """Shutdown 4 → 3: stop every source before the bus drains."""
        self._running = False
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for entry in list(self._entries.values()):
            await self._stop(entry)

    async def _start(self, entry: _Entry) -> None:
        if entry.started or entry.shutdown:
            return
        try:
            await entry.source.start(self._emitter(entry))
            entry.started = True
            if entry.paused_by:
                await entry.source.pause()
        except Exception:
            log.exception("source %s failed to start", entry.source.id)

    async def _stop(self, entry: _Entry) -> None:
        if entry.shutdown:
            return
        entry.shutdown = True
        if entry.started:
            try:
                await entry.source.stop()
            except Exception:
                log.exception("source %s failed to stop", entry.source.id)

    # --- emitting --------------------------------------------------------------------------

    def _emitter(self, entry: _Entry) -> Any:
        source = entry.source

        async def emit(event_type: str, payload: Any = None, **options: Any) -> PublishResult:
            if entry.shutdown or entry.paused_by:
                raise Unavailable(f"source {source.id} is paused")
            if source.kind == "plugin":
                now = time.monotonic()
                entry.tokens = min(BURST, entry.tokens + (now - entry.refilled) * RATE_PER_SEC)
                entry.refilled = now
                if entry.tokens < 1:
                    raise Unavailable(
                        f"source {source.id} is over its rate limit ({RATE_PER_SEC:g} events/s)"
                    )
                entry.tokens -= 1
            result = await self._bus.publish(
                event_type, payload, source=source.id, trust_level=source.trust_level, **options
            )
            if result.status != "dropped":
                entry.emitted += 1
                entry.last_ms = now_ms()
            return result

        return emit

    # --- operators -------------------------------------------------------------------------

    def _entry(self, source_id: str) -> _Entry:
        entry = self._entries.get(source_id)
        if entry is None:
            raise NotFound(f"source not found: {source_id}")
        return entry

    def get(self, source_id: str) -> SourceInfo:
        return self._info(self._entry(source_id))

    def list(self) -> list[SourceInfo]:
        return [self._info(e) for _, e in sorted(self._entries.items())]

    def owner(self, source_id: str) -> str:
        return self._entry(source_id).plugin

    async def pause(self, source_id: str, by: str = "operator") -> SourceInfo:
        entry = self._entry(source_id)
        if entry.shutdown:
            raise Conflict(f"source {source_id} is already shut down")
        if by not in entry.paused_by:
            was_running = entry.started and not entry.paused_by
            entry.paused_by.append(by)
            if was_running:
                await entry.source.pause()
        if by == "operator":
            await self._remember(source_id, True)
        return self._info(entry)

    async def resume(self, source_id: str, by: str = "operator") -> SourceInfo:
        entry = self._entry(source_id)
        if entry.shutdown:
            raise Conflict(f"source {source_id} is already shut down")
        if by in entry.paused_by:
            entry.paused_by.remove(by)
            if entry.started and not entry.paused_by:
                await entry.source.resume()
        if not entry.started:
            await self._start(entry)
        if by == "operator":
            await self._remember(source_id, False)
        return self._info(entry)

    async def configure(self, source_id: str, changes: Mapping[str, Any]) -> SourceInfo:
        entry = self._entry(source_id)
        if not isinstance(changes, Mapping):
            raise Invalid("request body must be a JSON object")
        await entry.source.reconfigure(changes)
        return self._info(entry)

    async def _remember(self, source_id: str, paused: bool) -> None:
        (self._operator_paused.add if paused else self._operator_paused.discard)(source_id)

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO source_state (id, operator_paused) VALUES (?, ?)"
                " ON CONFLICT (id) DO UPDATE SET operator_paused = excluded.operator_paused",
                (source_id, int(paused)),
            )

        await self._store.write(save)

    # --- backpressure ----------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SEC)
            try:
                await self.apply_backpressure()
            except Exception:
                log.exception("applying backpressure to sources failed")

    async def apply_backpressure(self) -> None:
        """Pause every running source at L3 and above; resume them below L3 (http-api §5.1)."""
        high = LEVELS.index(self._bus.level) >= _L3
        for entry in list(self._entries.values()):
            if entry.shutdown:
                continue
            if high and "backpressure" not in entry.paused_by:
                await self.pause(entry.source.id, by="backpressure")
            elif not high and "backpressure" in entry.paused_by:
                await self.resume(entry.source.id, by="backpressure")

    def _info(self, entry: _Entry) -> SourceInfo:
        source = entry.source
        return SourceInfo(
            id=source.id,
            kind=source.kind,
            plugin=entry.plugin,
            mode=source.mode,
            trust_level=source.trust_level,
            state=entry.state,  # type: ignore[arg-type]
            paused_by=list(entry.paused_by),
            config=dict(source.settings()),
            events_emitted=entry.emitted,
            last_event_at_ms=entry.last_ms,
        )


class PluginSources:
    """A plugin's ``ctx.sources``: what it adds belongs to it."""

    def __init__(self, registry: SourceRegistry, plugin: str) -> None:
        self._registry, self._plugin = registry, plugin

    async def add(self, source: EventSource) -> SourceInfo:
        return await self._registry.add(self._plugin, source)

    async def remove(self, source_id: str, *, forget: bool = False) -> None:
        await self._registry.remove(source_id, forget=forget)

    def get(self, source_id: str) -> SourceInfo:
        return self._registry.get(source_id)

    def list(self) -> list[SourceInfo]:
        return self._registry.list()

    async def pause(self, source_id: str) -> SourceInfo:
        return await self._registry.pause(source_id)

    async def resume(self, source_id: str) -> SourceInfo:
        return await self._registry.resume(source_id)

    async def configure(self, source_id: str, changes: Mapping[str, Any]) -> SourceInfo:
        return await self._registry.configure(source_id, changes)

    async def replace(self, source: EventSource, *, owner: str) -> SourceInfo:
        return await self._registry.replace(owner, source)
