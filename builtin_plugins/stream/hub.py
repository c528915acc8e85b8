"""The fan-out behind ``/events/stream``: one bounded buffer per client, filled by a bus observer.

The observer runs inside every publish, so it never awaits and never blocks: it formats the frame
once per event and appends it to the buffer of each client that wants it. A full buffer drops its
oldest frame and counts it; the client's stream reports the count in a ``lagged`` frame. The
stream itself (:class:`EventStream`) is the response body: it replays, sends the snapshots on
their schedules, drains its buffer, and ends with a ``shutdown`` frame when the runtime stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from attrs import define, field, frozen

from sdk import Event, PluginContext, Unavailable

__all__ = ["KEEP_ALIVE", "Client", "ClientBuffer", "EventStream", "Frame", "Hub", "frame"]

log = logging.getLogger("aman.plugin.stream")

KEEP_ALIVE = b": keep-alive\n\n"
CHUNK_FRAMES = 64  # frames joined into one write at most
TICK_SEC = 0.25  # how often an idle stream looks at the runtime status
REPLAY_PAGES = 10  # a replay reads at most this many pages of sse.replay_max stored events


def frame(name: str, data: Any, event_id: str | None = None) -> bytes:
    """One SSE frame: ``event:``, ``id:`` (event frames), ``data:`` (one line of JSON), blank."""
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id else "")
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}data: {body}\n\n".encode()


@frozen
class Frame:
    data: bytes
    event_id: str | None = None


class ClientBuffer:
    """The frames waiting for one client: at most ``capacity``. ``push`` never blocks; when the
    buffer is full the oldest frame is dropped, and the next ``take`` starts with a ``lagged``
    frame that says how many were lost."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dropped = 0
        self.closed = False
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, item: Frame) -> None:
        if self.closed:
            return
        if len(self._frames) >= self.capacity:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(item)
        self._ready.set()

    def close(self) -> None:
        """No more frames; wakes the reader so that it can say goodbye."""
        self.closed = True
        self._ready.set()

    def discard(self, event_ids: set[str]) -> None:
        """Forget the waiting frames of these events (already sent by the replay)."""
        if event_ids:
            kept = [f for f in self._frames if f.event_id not in event_ids]
            self._frames = deque(kept)

    def take(self, limit: int = CHUNK_FRAMES) -> list[Frame]:
        """Up to ``limit`` frames, oldest first, after a ``lagged`` frame if some were dropped."""
        out: list[Frame] = []
        if self.dropped:
            out.append(Frame(frame("lagged", {"dropped": self.dropped})))
            self.dropped = 0
        while self._frames and len(out) < limit:
            out.append(self._frames.popleft())
        if not self._frames and not self.closed:
            self._ready.clear()
        return out

    def nudge(self) -> None:
        """Wake the reader without a frame, so that it looks at its schedules (the hub's tick)."""
        self._ready.set()

    async def wait(self) -> None:
        """Until a frame arrives, the buffer is closed, or the hub's next tick (``TICK_SEC``).
        One timer for all clients instead of a timeout per wait keeps a frame cheap."""
        if self._frames or self.dropped or self.closed:
            return
        await self._ready.wait()


@define(eq=False)
class Client:
    """One open stream: its access, its filters and its buffer."""

    buffer: ClientBuffer
    full: bool  # payloads and snapshots (the token, or none configured); else metadata only
    types: frozenset[str] = frozenset()
    session_id: str | None = None

    def wants(self, event: Event) -> bool:
        if self.types and event.event_type not in self.types:
            return False
        if self.session_id is not None:
            payload = event.payload
            return isinstance(payload, dict) and payload.get("session_id") == self.session_id
        return True


@define(eq=False)
class _Frames:
    """An event's two frames, each built at most once whatever the number of clients."""

    event: Event
    unstructure: Callable[[Any], Any]
    full: Frame | None = None
    meta: Frame | None = None

    def get(self, full: bool) -> Frame:
        event = self.event
        if full:
            if self.full is None:
                self.full = Frame(
                    frame("event:processed", self.unstructure(event), event.id), event.id
                )
            return self.full
        if self.meta is None:
            data = {
                "id": event.id,
                "event_type": event.event_type,
                "source": event.source,
                "timestamp": event.timestamp,
                "metadata": {"trace_id": event.metadata.trace_id},
            }
            self.meta = Frame(frame("event:processed", data, event.id), event.id)
        return self.meta


@define(eq=False)
class Hub:
    """The open streams of one kernel (kept on the stash) and the bus observer that feeds them."""

    ctx: PluginContext
    clients: set[Client] = field(factory=set)
    _ticker: asyncio.TimerHandle | None = None

    @property
    def stopping(self) -> bool:
        return self.ctx.lifecycle.status in ("draining", "stopped")

    def join(self, *, full: bool, types: frozenset[str], session_id: str | None) -> Client:
        if len(self.clients) >= self.ctx.settings.get("http.max_sse_clients"):
            raise Unavailable("too many event stream clients")
        buffer = ClientBuffer(self.ctx.settings.get("sse.client_buffer"))
        client = Client(buffer=buffer, full=full, types=types, session_id=session_id)
        self.clients.add(client)
        if self._ticker is None:
            self._tick()
        return client

    def _tick(self) -> None:
        """Every ``TICK_SEC`` while streams are open: let each look at its schedules."""
        for client in self.clients:
            client.buffer.nudge()
        self._ticker = (
            asyncio.get_running_loop().call_later(TICK_SEC, self._tick) if self.clients else None
        )

    def leave(self, client: Client) -> None:
        client.buffer.close()
        self.clients.discard(client)

    def observe(self, event: Event) -> None:
        """The bus observer: called inside every publish, so it only appends to buffers."""
        if not self.clients:
            return
        try:
            frames = _Frames(event, self.ctx.converter.unstructure)
            for client in self.clients:
                if client.wants(event):
                    client.buffer.push(frames.get(client.full))
            if self.stopping:  # gateway:stopping is published as the drain begins
                self.close_all()
        except Exception:  # a broken frame must never fail the publish
            log.exception("event stream: cannot forward event %s", event.id)

    def frames_of(self, client: Client, events: Iterable[Event]) -> list[Frame]:
        """The frames of ``events`` (a replay) that ``client`` wants."""
        unstructure = self.ctx.converter.unstructure
        return [_Frames(e, unstructure).get(client.full) for e in events if client.wants(e)]

    def close_all(self) -> None:
        for client in self.clients:
            client.buffer.close()


class EventStream:
    """The body of one ``/events/stream`` response: an async iterator of SSE chunks.

    Its client (one of at most ``http.max_sse_clients``, taken by :meth:`Hub.join`) leaves in
    ``aclose()``, which the server calls when the stream ends or the client goes away, and the
    kernel calls for a body it never sends (``HEAD``).
    """

    def __init__(
        self,
        hub: Hub,
        client: Client,
        *,
        last_event_id: str | None,
        snapshots: Callable[[], list[bytes]],
        runtime: Callable[[], bytes],
    ) -> None:
        self._hub, self._client = hub, client
        self._last_event_id = last_event_id
        self._snapshots, self._runtime = snapshots, runtime
        self._chunks = self._run()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            self._hub.leave(self._client)

    async def _run(self) -> AsyncIterator[bytes]:
        hub, client, buffer = self._hub, self._client, self._client.buffer
        settings = hub.ctx.settings
        try:
            replayed = await self._replay()
            buffer.discard({f.event_id for f in replayed if f.event_id})
            for start in range(0, len(replayed), CHUNK_FRAMES):
                yield b"".join(f.data for f in replayed[start : start + CHUNK_FRAMES])
            now = time.monotonic()
            snapshot_due = runtime_due = now
            heartbeat_due = now + settings.get("sse.heartbeat_sec")
            while True:
                if buffer.closed or hub.stopping:
                    while rest := buffer.take():
                        yield b"".join(f.data for f in rest)
                    yield frame("shutdown", {})
                    return
                chunk: list[bytes] = []
                now = time.monotonic()
                if now >= snapshot_due:
                    if client.full:
                        chunk += self._snapshots()
                    snapshot_due = now + settings.get("sse.snapshot_interval_ms") / 1000
                if now >= runtime_due:
                    chunk.append(self._runtime())
                    runtime_due = now + settings.get("sse.runtime_interval_ms") / 1000
                if now >= heartbeat_due:
                    chunk.append(KEEP_ALIVE)
                    heartbeat_due = now + settings.get("sse.heartbeat_sec")
                chunk += [f.data for f in buffer.take()]
                if chunk:
                    yield b"".join(chunk)
                    continue
                await buffer.wait()
        finally:
            hub.leave(client)

    async def _replay(self) -> list[Frame]:
        """The frames of the events recorded after ``Last-Event-ID`` that the client wants, up to
        ``sse.replay_max``; none when the id is unknown (the stream starts live). The store is
        read a page of ``sse.replay_max`` events at a time, at most ``REPLAY_PAGES`` pages, so a
        filtered client is not cut short by the events it does not want."""
        last, ctx = self._last_event_id, self._hub.ctx
        limit = ctx.settings.get("sse.replay_max")
        frames: list[Frame] = []
        for _ in range(REPLAY_PAGES if last and limit else 0):
            try:
                events = await ctx.bus.after(last, limit)
            except Exception as exc:  # noqa: BLE001 - the store is not open (phase 0) or closing: start live
                ctx.log.debug("event stream: no replay after %s: %s", last, exc)
                break
            frames += self._hub.frames_of(self._client, events or [])
            if not events or len(events) < limit or len(frames) >= limit:
                break
            last = events[-1].id
        return frames[:limit]
