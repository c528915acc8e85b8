"""Overload (http-api §5.1, §21): publishers far faster than a slow subscriber. The queue is
small, so backpressure rises to L3, where HTTP publishes of guaranteed events are refused with
503 and ``at_most_once`` ones are dropped; memory stays bounded by the queue size; every
acknowledged at-least-once event reaches the subscriber exactly once; and the level, the metrics
and the audit log come back to ``Normal``."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import httpx
import pytest

from .conftest import Sampler, metric, poll, records, rss_bytes, write_config

pytestmark = pytest.mark.server

QUEUE = 50
PAD = "x" * 128 * 1024  # 128 KiB per event: an unbounded queue would show in the RSS
PUBLISHERS = 4
PUBLISH_SEC = 4.0
LEVELS = ("Normal", "L1", "L2", "L3", "L4A", "L4B", "Critical")
REFUSED = re.compile(r"event bus backpressure \(level (L3|L4A|L4B|Critical)\); retry later")

SLOW = """
import asyncio, os, pathlib
from sdk import EventHandler, hookimpl

OUT = pathlib.Path(os.environ["OVERLOAD_OUT"])

@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="slow", handler=slow, event_types=("flood.test",))]

async def slow(event):
    await asyncio.sleep(0.05)  # 20 events a second at best
    with OUT.open("a") as out:
        out.write(f"{event.id} {event.delivery}\\n")
"""


class Publisher(threading.Thread):
    """Pushes ``flood.test`` events as fast as the server answers; every fifth is
    ``at_most_once``. Keeps the answers by kind."""

    def __init__(self, base_url: str, index: int, until: float) -> None:
        super().__init__(daemon=True)
        self._base_url, self._index, self._until = base_url, index, until
        self.acked: list[str] = []  # at-least-once, queued
        self.light: list[str] = []  # at-most-once, queued
        self.dropped: list[str] = []
        self.refusals: list[httpx.Response] = []
        self.offered = 0  # payload bytes sent

    def run(self) -> None:
        with httpx.Client(base_url=self._base_url, timeout=30) as client:
            n = 0
            while time.monotonic() < self._until:
                n += 1
                delivery = "at_most_once" if n % 5 == 0 else "at_least_once"
                body = {
                    "source": f"flood-{self._index}",
                    "event_type": "flood.test",
                    "payload": {"n": n, "pad": PAD},
                    "delivery": delivery,
                }
                resp = client.post("/events/push", json=body)
                self.offered += len(PAD)
                if resp.status_code == 503:
                    self.refusals.append(resp)
                    continue
                assert resp.status_code == 200, resp.text
                answer = resp.json()
                if answer["status"] == "dropped":
                    self.dropped.append(answer["id"])
                elif delivery == "at_most_once":
                    self.light.append(answer["id"])
                else:
                    self.acked.append(answer["id"])


def test_publishing_far_faster_than_a_subscriber_consumes(
    aman, entry_point_plugin, plugin_dir, tmp_path
):
    entry_point_plugin(plugin_dir, "slow_plugin", "slow", SLOW)
    out = tmp_path / "slow.txt"
    config = write_config(tmp_path / "aman.toml", {"event_bus": {"max_queue_size": QUEUE}})
    server = aman("--config", str(config), env={"OVERLOAD_OUT": str(out)}, pythonpath=plugin_dir)
    with server.client() as client:
        baseline = max(rss_bytes(server.pid) for _ in range(3))

        def sample() -> tuple[int, str, float, float]:
            debug = client.get("/debug/metrics").json()
            level = metric(client.get("/metrics").text, "backpressure_level")
            return rss_bytes(server.pid), debug["backpressure_level"], level, time.monotonic()

        until = time.monotonic() + PUBLISH_SEC
        publishers = [Publisher(server.base_url, i, until) for i in range(PUBLISHERS)]
        with Sampler(sample, interval=0.05) as sampler:
            for publisher in publishers:
                publisher.start()
            for publisher in publishers:
                publisher.join(PUBLISH_SEC + 30)
            acked = [i for p in publishers for i in p.acked]
            light = [i for p in publishers for i in p.light]
            poll(
                lambda: len(records(out)) >= len(acked) + len(light),
                deadline=30,
                what="the slow subscriber caught up",
            )
            poll(
                lambda: client.get("/debug/metrics").json()["backpressure_level"] == "Normal",
                deadline=10,
                what="the level back to Normal",
            )

        refusals = [r for p in publishers for r in p.refusals]
        dropped = [i for p in publishers for i in p.dropped]
        offered = sum(p.offered for p in publishers)
        rss = [s[0] for s in sampler.samples]
        levels = [s[1] for s in sampler.samples]
        gauges = {s[2] for s in sampler.samples}
        print(
            f"pushed: {len(acked)} acked, {len(light)} light, {len(dropped)} dropped, "
            f"{len(refusals)} refused, {offered >> 20} MiB offered; RSS baseline "
            f"{baseline >> 20} MiB, max {max(rss) >> 20} MiB; levels {sorted(set(levels), key=LEVELS.index)}"
        )

        # Backpressure rose to L3, where guaranteed HTTP publishes are refused ...
        assert max(LEVELS.index(level) for level in levels) >= LEVELS.index("L3")
        assert refusals, "no publish was refused"
        for resp in refusals:
            assert REFUSED.fullmatch(resp.json()["error"]), resp.text
            assert resp.headers["Retry-After"] == "1"
        assert dropped, "no at_most_once event was dropped"
        assert {0.6} <= gauges  # the backpressure_level gauge of L3
        # ... and came back down.
        debug = client.get("/debug/metrics").json()
        assert debug["backpressure_level"] == "Normal"
        assert debug["queue_depth_normal"] == debug["queue_depth_low"] == 0
        exposition = client.get("/metrics").text
        assert metric(exposition, "backpressure_level") == 0
        assert metric(exposition, "events_discarded_total") >= len(dropped)
        audit = client.get(
            "/audit-log", params={"action": "backpressure.apply", "limit": 1000}
        ).json()["items"]
        applied = [r["detail"] for r in reversed(audit)]  # oldest first, one a second at most
        assert applied[-1] == "Normal" and len(applied) >= 2, applied

    # Every acknowledged at-least-once event was delivered exactly once, no dropped one ever.
    received = Counter(fields[0] for fields in records(out))
    assert set(acked) <= set(received)
    assert all(received[i] == 1 for i in acked)
    assert set(received) <= set(acked) | set(light)
    # Memory stayed bounded by the queue: a queued event holds its payload and its JSON body;
    # twice that, plus room for the allocator, caches and the requests in flight. The
    # publishers offered far more than that, and while the queue was saturated the RSS stayed
    # flat instead of growing with what they kept offering.
    held = QUEUE * 2 * len(PAD)
    assert offered > 2 * held
    assert max(rss) < baseline + 2 * held + 24 * 2**20, f"RSS {max(rss) >> 20} MiB"
    saturated = next(t for _, level, _, t in sampler.samples if LEVELS.index(level) >= 3)
    plateau = [r for r, _, _, t in sampler.samples if saturated <= t <= until]
    assert len(plateau) >= 4, "too short a saturation to judge"
    half = len(plateau) // 2
    assert max(plateau[half:]) <= max(plateau[:half]) + held // 2, [r >> 20 for r in plateau]
    assert server.stop() == 0
