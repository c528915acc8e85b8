"""``GET /events/stream`` against a real ``aman serve`` (http-api §23, D13).

One server serves the module, with short schedules (snapshots and runtime every 250 ms, a
keep-alive every second) so that reads with a deadline finish quickly; the shutdown test has a
server of its own. Frames are read from httpx streaming responses until a condition holds.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.server

TOKEN = "stream-token"
DEADLINE_SEC = 5.0
CONFIG = """
[http]
max_sse_clients = 3

[sse]
heartbeat_sec = 1
snapshot_interval_ms = 250
runtime_interval_ms = 250
"""
SNAPSHOTS = ["metrics:updated", "agent_states:updated", "notification:updated", "runtime:updated"]
RUNTIME_READY = {"phase": 5, "ready": True, "live": True, "status": "ready"}
EVENT_FIELDS = {
    "id", "source", "event_type", "timestamp", "priority", "delivery", "dedup_key",
    "trust_level", "payload", "metadata",
}  # fmt: skip

Frame = dict[str, Any]


class SSE:
    """The frames of an open ``text/event-stream`` response, parsed as they arrive: dicts with
    ``event``, ``id`` and ``data`` (decoded JSON), or ``{"comment": text}`` for ``: text``."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.ended = False
        self._frames = self._parse(response.iter_lines())

    def _parse(self, lines: Iterator[str]) -> Iterator[Frame]:
        current: Frame = {}
        for line in lines:
            if line == "":
                if current:
                    yield current
                current = {}
            elif line.startswith(":"):
                yield {"comment": line[1:].strip()}
            else:
                key, _, value = line.partition(":")
                value = value.removeprefix(" ")
                current[key] = json.loads(value) if key == "data" else value
        self.ended = True

    def take(self, count: int) -> list[Frame]:
        return [next(self._frames) for _ in range(count)]

    def until(
        self, done: Callable[[Frame], bool], deadline_sec: float = DEADLINE_SEC
    ) -> list[Frame]:
        """Frames up to and including the first for which ``done`` is true. The server sends
        ``runtime:updated`` every 250 ms, so no read waits long past the deadline."""
        deadline = time.monotonic() + deadline_sec
        seen: list[Frame] = []
        for frame in self._frames:
            seen.append(frame)
            if done(frame):
                return seen
            if time.monotonic() > deadline:
                break
        pytest.fail(f"no matching frame within {deadline_sec} s (ended={self.ended}): {seen!r}")

    def rest(self) -> list[Frame]:
        """Every frame until the server closes the stream."""
        return list(self._frames)


def processed(event_id: str) -> Callable[[Frame], bool]:
    return lambda f: f.get("event") == "event:processed" and f.get("id") == event_id


def events_in(frames: list[Frame]) -> list[Frame]:
    return [f["data"] for f in frames if f.get("event") == "event:processed"]


@pytest.fixture(scope="module")
def server(module_aman, tmp_path_factory):
    config = tmp_path_factory.mktemp("stream") / "aman.toml"
    config.write_text(CONFIG)
    return module_aman("--config", str(config), token=TOKEN)


@contextlib.contextmanager
def open_stream(
    server, params: dict[str, str] | None = None, *, auth: bool = True, headers=None
) -> Iterator[SSE]:
    with (
        server.client(auth=auth, headers=headers or {}) as c,
        c.stream("GET", "/events/stream", params=params) as r,
    ):
        assert r.status_code == 200, r.read()
        yield SSE(r)


def push(server, event_type: str, payload: Any = None) -> str:
    with server.client() as c:
        r = c.post(
            "/events/push", json={"source": "test", "event_type": event_type, "payload": payload}
        )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def wait_for(check: Callable[[], bool], deadline_sec: float = DEADLINE_SEC) -> None:
    deadline = time.monotonic() + deadline_sec
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.02)


def sse_clients(c: httpx.Client) -> int:
    return int(c.get("/debug/metrics").json()["sse_clients"])


def test_snapshots_at_once_then_live_events_and_keep_alives(server) -> None:
    with open_stream(server) as sse:
        headers = sse.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-store"
        first = sse.take(4)
        assert [f["event"] for f in first] == SNAPSHOTS
        metrics = first[0]["data"]
        assert set(metrics) == {
            "queue_depth", "throughput", "discarded", "duplicate", "subscription_count",
            "retry_queue_depth", "dlq_depth", "inflight_pipelines", "inflight_skills",
            "backpressure_level", "plugin_health",
        }  # fmt: skip
        assert set(metrics["queue_depth"]) == {"high", "normal", "low"}
        assert {"name": "stream", "status": "Running"} in metrics["plugin_health"]
        assert first[1]["data"] == {"agents": [{
            "agent_id": "aman", "system_state": "ready", "status": "Idle",
            "active_session_id": None, "pending_turns": 0}]}
        assert first[2]["data"] == {"unread_count": 0}
        assert first[3]["data"] == RUNTIME_READY

        event_id = push(server, "stream.live", {"n": 1})
        event = sse.until(processed(event_id))[-1]["data"]
        assert set(event) == EVENT_FIELDS
        assert (event["id"], event["event_type"], event["source"]) == (
            event_id,
            "stream.live",
            "test",
        )
        assert event["payload"] == {"n": 1}
        assert event["trust_level"] == "untrusted"

        # Then on schedule: snapshots again, and a keep-alive every second.
        later = sse.until(lambda f: f.get("comment") == "keep-alive", deadline_sec=3)
        assert {"metrics:updated", "runtime:updated"} <= {f.get("event") for f in later}


def test_payloads_need_the_token(server) -> None:
    """D13: no token → event metadata, runtime:updated and keep-alives only; ``?token=`` → all."""
    with (
        open_stream(server, auth=False) as anonymous,
        open_stream(server, {"token": TOKEN}, auth=False) as browser,
    ):
        assert anonymous.take(1)[0]["event"] == "runtime:updated"  # no other snapshot
        assert [f["event"] for f in browser.take(4)] == SNAPSHOTS
        event_id = push(server, "stream.secret", {"password": "hunter2"})

        seen = anonymous.until(processed(event_id))
        assert {f.get("event") for f in seen} <= {"runtime:updated", "event:processed", None}
        meta = seen[-1]["data"]
        assert set(meta) == {"id", "event_type", "source", "timestamp", "metadata"}
        assert (meta["id"], meta["event_type"], meta["source"]) == (
            event_id,
            "stream.secret",
            "test",
        )
        assert isinstance(meta["timestamp"], int)
        assert set(meta["metadata"]) == {"trace_id"}
        assert "hunter2" not in json.dumps(seen)

        full = browser.until(processed(event_id))[-1]["data"]
        assert full["payload"] == {"password": "hunter2"}
        assert full["metadata"]["trace_id"] == meta["metadata"]["trace_id"]


def test_a_wrong_token_is_401_before_the_stream(server) -> None:
    wrong: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"token": "nope"}, {}),
        ({}, {"Authorization": "Bearer nope"}),
        ({}, {"x-aman-token": "nope"}),
        ({"token": TOKEN}, {"Authorization": "Bearer nope"}),  # Bearer first, as everywhere
    ]
    with server.client(auth=False) as c:
        for params, headers in wrong:
            r = c.get("/events/stream", params=params, headers=headers, timeout=3)
            assert r.status_code == 401, (params, headers)
            assert r.json() == {"error": "missing or invalid API token"}
            assert r.headers["www-authenticate"] == 'Bearer realm="aman"'


def test_filters_apply_to_event_frames_only(server) -> None:
    with (
        open_stream(server, {"types": "f.one, f.three"}) as by_type,
        open_stream(server, {"session_id": "s1"}) as by_session,
    ):
        assert [f["event"] for f in by_type.take(4)] == SNAPSHOTS  # snapshots are not filtered
        assert [f["event"] for f in by_session.take(4)] == SNAPSHOTS
        push(server, "f.one", {"session_id": "s2"})
        push(server, "f.two", {"session_id": "s1"})
        last = push(server, "f.three", {"session_id": "s1"})

        typed = events_in(by_type.until(processed(last)))
        assert [e["event_type"] for e in typed] == ["f.one", "f.three"]
        in_session = events_in(by_session.until(processed(last)))
        assert [e["event_type"] for e in in_session] == ["f.two", "f.three"]


def test_resume_with_last_event_id(server) -> None:
    ids = [push(server, "resume.test", {"n": n}) for n in range(3)]
    params = {"types": "resume.test"}

    with open_stream(server, params, headers={"Last-Event-ID": ids[0]}) as sse:
        first = sse.take(3)
        assert [(f["event"], f.get("id")) for f in first[:2]] == [
            ("event:processed", ids[1]),
            ("event:processed", ids[2]),
        ]
        assert first[1]["data"]["payload"] == {"n": 2}
        assert first[2]["event"] == "metrics:updated"  # then the snapshots

    with open_stream(server, {**params, "last_event_id": ids[1]}) as sse:
        first = sse.take(2)
        assert first[0]["id"] == ids[2]
        assert first[1]["event"] == "metrics:updated"

    unknown = "01900000-0000-7000-8000-000000000000"
    with open_stream(server, params, headers={"Last-Event-ID": unknown}) as sse:
        assert sse.take(1)[0]["event"] == "metrics:updated"  # live from here


def test_max_clients_and_the_sse_clients_gauge(server) -> None:
    with server.client() as c, contextlib.ExitStack() as stack:
        wait_for(lambda: sse_clients(c) == 0)  # streams of earlier tests are gone
        r = c.head("/events/stream", timeout=3)
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-type"].startswith("text/event-stream")
        assert sse_clients(c) == 0  # HEAD holds no slot

        streams = [stack.enter_context(open_stream(server)) for _ in range(3)]
        for sse in streams:
            sse.take(1)
        assert sse_clients(c) == 3
        assert "\nsse_clients 3.0\n" in c.get("/metrics").text

        r = c.get("/events/stream", timeout=3)
        assert r.status_code == 503
        assert r.json() == {"error": "too many event stream clients"}
        assert r.headers["retry-after"] == "1"

        stack.close()  # the clients go away
        wait_for(lambda: sse_clients(c) == 0)
        with open_stream(server) as sse:
            assert sse.take(1)[0]["event"] == "metrics:updated"


def test_shutdown_ends_every_stream_with_a_shutdown_frame(aman, tmp_path) -> None:
    config = tmp_path / "stream.toml"
    config.write_text(CONFIG)
    server = aman("--config", str(config), token=TOKEN)
    connected: list[str] = []

    def read(auth: bool) -> tuple[list[Frame], bool]:
        with open_stream(server, auth=auth) as sse:
            sse.take(1)
            connected.append("yes")
            return sse.rest(), sse.ended

    with ThreadPoolExecutor(2) as pool:
        readers = [pool.submit(read, True), pool.submit(read, False)]
        wait_for(lambda: len(connected) == 2)
        with server.client() as c:
            r = c.post("/agent/shutdown", headers={"x-aman-confirm": "yes"})
        assert r.json() == {"ok": True, "status": "stopped"}
        (full, full_ended), (anonymous, anonymous_ended) = (f.result(10) for f in readers)

    for frames, ended in ((full, full_ended), (anonymous, anonymous_ended)):
        assert ended  # the server closed the stream
        assert frames[-1] == {"event": "shutdown", "data": {}}
    # Events accepted before the drain began are still delivered, before the goodbye.
    assert "gateway:stopping" in [e["event_type"] for e in events_in(full)]
    assert server.wait_exit() == 0
