"""The stream plugin in-process: the per-client buffer, the bus observer, the refusals and the
``[sse]`` keys. The streaming itself is tested against a real server (``test_serve_stream.py``)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from builtin_plugins.stream import HUB, hub_of
from builtin_plugins.stream.hub import ClientBuffer, EventStream, Frame
from sdk import ConfigError, Unavailable, hookimpl


def frames(n: int) -> list[Frame]:
    return [Frame(f"event: x\nid: {i}\ndata: {i}\n\n".encode(), str(i)) for i in range(n)]


def test_buffer_drops_the_oldest_frames_and_reports_them_in_a_lagged_frame():
    buffer = ClientBuffer(16)
    for item in frames(20):
        buffer.push(item)
    assert len(buffer) == 16 and buffer.dropped == 4

    taken = buffer.take(limit=5)
    assert taken[0].data == b'event: lagged\ndata: {"dropped":4}\n\n'
    assert [f.event_id for f in taken[1:]] == ["4", "5", "6", "7"]  # the oldest ones went
    assert buffer.dropped == 0
    assert [f.event_id for f in buffer.take(limit=100)] == [str(i) for i in range(8, 20)]
    assert buffer.take() == []


def test_buffer_forgets_replayed_frames():
    buffer = ClientBuffer(16)
    for item in frames(4):
        buffer.push(item)
    buffer.discard({"1", "2"})
    assert [f.event_id for f in buffer.take()] == ["0", "3"]


async def test_buffer_wait_wakes_on_a_frame_a_nudge_and_close():
    buffer = ClientBuffer(16)
    waiter = asyncio.create_task(buffer.wait())
    await asyncio.sleep(0)
    assert not waiter.done()  # nothing to do: it waits
    buffer.nudge()  # the hub's tick
    await asyncio.wait_for(waiter, 1)
    assert buffer.take() == []

    waiter = asyncio.create_task(buffer.wait())
    await asyncio.sleep(0)
    buffer.push(frames(1)[0])
    await asyncio.wait_for(waiter, 1)
    assert len(buffer.take()) == 1

    waiter = asyncio.create_task(buffer.wait())
    await asyncio.sleep(0)
    buffer.close()
    await asyncio.wait_for(waiter, 1)
    buffer.push(frames(1)[0])  # closed: ignored
    assert buffer.take() == []


async def test_a_client_that_does_not_read_never_slows_the_bus(make_kernel, serve_kernel):
    kernel = make_kernel(settings={"sse.client_buffer": 16, "http.token": "t"})
    await serve_kernel(kernel)
    hub = hub_of(kernel.plugins.records["stream"].ctx)
    full = hub.join(full=True, types=frozenset(), session_id=None)
    meta = hub.join(full=False, types=frozenset({"slow.test"}), session_id=None)

    started = time.monotonic()
    for n in range(500):
        await kernel.bus.publish("slow.test", {"n": n})
    assert time.monotonic() - started < 5

    for client in (full, meta):
        assert len(client.buffer) == 16 and client.buffer.dropped >= 484
        taken = client.buffer.take(limit=100)
        assert taken[0].data.startswith(b"event: lagged\n")
        last = json.loads(taken[-1].data.decode().split("data: ", 1)[1])
        assert last["id"] == taken[-1].event_id
    assert last == {  # the metadata-only client: no payload
        "id": last["id"],
        "event_type": "slow.test",
        "source": "gateway",
        "timestamp": last["timestamp"],
        "metadata": {"trace_id": last["metadata"]["trace_id"]},
    }
    hub.leave(full)
    hub.leave(meta)
    assert hub.clients == set()


async def test_a_wrong_token_is_401_and_counted(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(settings={"http.token": "t"}))
    for path in ("/events/stream?token=x", "/events/stream?token="):
        r = await client.get(path)
        assert r.status_code == 401
        assert await r.get_json() == {"error": "missing or invalid API token"}
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert "http_auth_failures_total 2.0" in text


async def test_head_answers_the_headers_and_holds_no_slot(make_kernel, serve_kernel):
    kernel = make_kernel()
    client = await serve_kernel(kernel)
    r = await client.head("/events/stream")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert await r.get_data() == b""
    assert kernel.stash[HUB].clients == set()
    assert (await (await client.get("/debug/metrics")).get_json())["sse_clients"] == 0


async def test_refused_while_draining_and_once_stopped(make_kernel, serve_kernel):
    entered, release = asyncio.Event(), asyncio.Event()

    class Slow:
        """Holds the shutdown in its on_shutdown, so the runtime stays ``draining``."""

        name = "slow"

        @hookimpl
        async def on_shutdown(self) -> None:
            entered.set()
            await release.wait()

    kernel = make_kernel(Slow())
    client = await serve_kernel(kernel)
    stream = hub_of(kernel.plugins.records["stream"].ctx)
    open_client = stream.join(full=True, types=frozenset(), session_id=None)

    shutdown = asyncio.create_task(kernel.lifecycle.shutdown())
    await asyncio.wait_for(entered.wait(), 5)
    assert open_client.buffer.closed  # told to say goodbye as the drain began
    r = await client.get("/events/stream")
    assert r.status_code == 503
    assert await r.get_json() == {"error": "runtime is draining"}
    assert r.headers["retry-after"] == "1"

    release.set()
    await asyncio.wait_for(shutdown, 5)
    r = await client.get("/events/stream")
    assert r.status_code == 503
    assert await r.get_json() == {"error": "runtime is stopped"}
    assert "retry-after" not in r.headers


async def test_a_stream_ends_with_a_shutdown_frame_after_what_was_waiting(make_kernel):
    kernel = make_kernel()
    hub = hub_of(kernel.plugins.records["stream"].ctx)
    client = hub.join(full=True, types=frozenset(), session_id=None)
    stream = EventStream(
        hub, client, last_event_id=None, snapshots=lambda: [b"S"], runtime=lambda: b"R"
    )
    assert await stream.__anext__() == b"SR"  # snapshots at once (status "new": not stopping)
    client.buffer.push(Frame(b"E", "1"))
    client.buffer.close()
    assert [chunk async for chunk in stream] == [b"E", b"event: shutdown\ndata: {}\n\n"]
    await stream.aclose()
    assert hub.clients == set()


async def test_aclose_gives_the_slot_back_even_unstarted(make_kernel):
    kernel = make_kernel(settings={"http.max_sse_clients": 1})
    hub = hub_of(kernel.plugins.records["stream"].ctx)
    client = hub.join(full=True, types=frozenset(), session_id=None)
    stream = EventStream(hub, client, last_event_id=None, snapshots=list, runtime=bytes)
    with pytest.raises(Unavailable, match="too many event stream clients"):
        hub.join(full=True, types=frozenset(), session_id=None)
    await stream.aclose()
    assert hub.clients == set()
    hub.leave(hub.join(full=False, types=frozenset(), session_id=None))


def test_sse_keys_are_declared_with_their_ranges(make_kernel):
    kernel = make_kernel()
    assert {k: kernel.config.get(k) for k in ("sse.heartbeat_sec", "sse.client_buffer")} == {
        "sse.heartbeat_sec": 15,
        "sse.client_buffer": 256,
    }
    assert kernel.config.get("sse.snapshot_interval_ms") == 2000
    assert kernel.config.get("sse.runtime_interval_ms") == 1000
    assert kernel.config.get("sse.replay_max") == 1000
    with pytest.raises(ConfigError, match=r"sse\.client_buffer"):
        make_kernel(settings={"sse.client_buffer": 15})


async def test_a_filtered_replay_looks_past_the_events_it_does_not_want(make_kernel, serve_kernel):
    kernel = make_kernel(settings={"sse.replay_max": 5})
    await serve_kernel(kernel)
    anchor = await kernel.bus.publish("noise", {})
    for _ in range(12):
        await kernel.bus.publish("noise", {})
    wanted = [(await kernel.bus.publish("m.match", {"n": n})).id for n in range(3)]
    hub = hub_of(kernel.plugins.records["stream"].ctx)
    client = hub.join(full=True, types=frozenset({"m.match"}), session_id=None)
    stream = EventStream(hub, client, last_event_id=anchor.id, snapshots=list, runtime=bytes)
    replayed = await stream.__anext__()
    await stream.aclose()
    assert [line.split(": ", 1)[1] for line in replayed.decode().splitlines() if line.startswith("id: ")] == wanted
