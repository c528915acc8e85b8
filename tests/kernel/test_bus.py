"""The event bus (http-api §5.1): priorities, isolation, retries, DLQ, durability, dedup, TTL and
backpressure, observed through subscribers, the store and the bus's own counters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdk import EventHandler, Forbidden, Invalid, Unavailable, hookimpl
from sdk.testing import wait_for

FAST = {"event_bus.retry_backoff_ms": [1]}



class Sink:
    """A subscriber plugin: records events; ``gate`` holds it; ``fail`` makes it raise."""

    def __init__(self, name: str, *, types: tuple[str, ...] = ("t.test",), fail: int = 0) -> None:
        self.name = name
        self.types = types
        self.fail = fail  # raise on this many calls
        self.seen: list[Any] = []
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    @hookimpl
    def register_event_handlers(self) -> list[EventHandler]:
        return [EventHandler(name="h", handler=self.handle, event_types=self.types)]

    async def handle(self, event) -> None:
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise ValueError(f"boom {self.calls}")
        self.seen.append(event.payload)


@pytest.fixture(name="bus_of")
def _bus_of(make_kernel, serve_kernel):
    async def start(*plugins, **settings):
        kernel = make_kernel(*plugins, settings={**FAST, **settings})
        await serve_kernel(kernel)
        return kernel

    return start


async def test_strict_priority_per_subscriber(bus_of):
    sink = Sink("sink")
    kernel = await bus_of(sink)
    sink.gate.clear()
    await kernel.bus.publish("t.test", "first")
    await sink.entered.wait()
    for n, priority in enumerate(["low", "normal", "high", "low", "high", "normal"]):
        await kernel.bus.publish("t.test", f"{priority}{n}", priority=priority)
    sink.gate.set()
    await wait_for(lambda: len(sink.seen) == 7)
    assert sink.seen == ["first", "high2", "high4", "normal1", "normal5", "low0", "low3"]


async def test_a_slow_or_failing_subscriber_never_delays_the_others(bus_of):
    slow, failing, fast = Sink("slow"), Sink("failing", fail=100), Sink("fast")
    kernel = await bus_of(slow, failing, fast, **{"plugins.quarantine_after_failures": 100})
    slow.gate.clear()
    for n in range(50):
        await kernel.bus.publish("t.test", n)
    await wait_for(lambda: len(fast.seen) == 50)
    assert fast.seen == list(range(50))
    assert slow.seen == []
    slow.gate.set()
    await wait_for(lambda: len(slow.seen) == 50)
    assert kernel.bus.stats()["delivery_failure_count"] == 50  # at_most_once: one attempt each


async def test_guaranteed_delivery_retries_then_succeeds(bus_of):
    sink = Sink("sink", fail=2)
    kernel = await bus_of(sink)
    await kernel.bus.publish("t.test", "x", delivery="at_least_once")
    await wait_for(lambda: sink.seen == ["x"])
    assert sink.calls == 3
    assert kernel.bus.dead_letters.depth == 0
    await wait_for(lambda: kernel.bus.pending() == 0)
    await kernel.bus.flush()
    rows = await kernel.store.fetchall("SELECT count(*) FROM bus_pending")
    assert rows[0][0] == 0  # done: the outbox row is gone


async def test_exhausted_retries_dead_letter_the_event_for_that_subscriber_only(bus_of):
    bad, good = Sink("bad", fail=100), Sink("good")
    kernel = await bus_of(bad, good)
    seen: list[str] = []
    kernel.bus.observers.append(lambda e: seen.append(e.event_type))
    result = await kernel.bus.publish("t.test", {"k": 1}, delivery="at_least_once")
    await wait_for(lambda: kernel.bus.dead_letters.depth == 1)
    assert bad.calls == 5  # retry_max_attempts
    assert good.seen == [{"k": 1}]
    entry = await kernel.bus.dead_letters.get(result.id)
    assert entry.reason == "DeliveryFailed: plugin:bad: ValueError: boom 5"
    assert entry.failed_subscribers == ["plugin:bad"]
    assert entry.original_retry_count == 4
    assert entry.event["metadata"]["retry_count"] == 4
    assert entry.state == "dead"
    await wait_for(lambda: "dlq:enqueued" in seen)


async def test_manual_redelivery_reaches_only_the_failed_subscriber(bus_of):
    bad, good = Sink("bad", fail=5), Sink("good")
    kernel = await bus_of(bad, good)
    result = await kernel.bus.publish("t.test", "again", delivery="at_least_once")
    await wait_for(lambda: kernel.bus.dead_letters.depth == 1)
    entry = await kernel.bus.dead_letters.start_retry(result.id, operator="ops", reason="fixed")
    assert entry.retry_count == 1 and entry.state == "retrying"
    assert await kernel.bus.redeliver(entry) == ["plugin:bad"]
    await wait_for(lambda: bad.seen == ["again"])
    assert good.seen == ["again"]  # not redelivered to the subscriber that had it
    from sdk import NotFound

    async def gone() -> bool:
        try:
            await kernel.bus.dead_letters.get(result.id)
        except NotFound:
            return True
        return False

    deadline = asyncio.get_running_loop().time() + 5
    while not await gone():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert kernel.bus.dead_letters.depth == 0


async def test_a_failed_redelivery_returns_the_entry_with_its_count(bus_of):
    bad = Sink("bad", fail=100)
    kernel = await bus_of(bad)
    result = await kernel.bus.publish("t.test", "x", delivery="at_least_once")
    await wait_for(lambda: kernel.bus.dead_letters.depth == 1)
    entry = await kernel.bus.dead_letters.start_retry(result.id, operator="ops", reason="try")
    await kernel.bus.redeliver(entry)
    await wait_for(lambda: kernel.bus.dead_letters.depth == 1)
    entry = await kernel.bus.dead_letters.get(result.id)
    assert (entry.state, entry.retry_count, entry.failed_subscribers) == ("dead", 1, ["plugin:bad"])
    assert [h["operator"] for h in entry.retry_history] == ["ops"]


async def test_acknowledged_events_survive_a_stop_and_are_replayed(
    make_kernel, serve_kernel, tmp_path
):
    done, stuck = Sink("done"), Sink("stuck")
    first = make_kernel(done, stuck, settings={**FAST, "runtime.drain_timeout_sec": 1})
    await serve_kernel(first)
    stuck.gate.clear()
    ids = [(await first.bus.publish("t.test", n, delivery="at_least_once")).id for n in range(3)]
    await wait_for(lambda: len(done.seen) == 3)
    await first.bus.flush()
    await first.lifecycle.shutdown()  # the drain gives up on the stuck subscriber

    again_done, again_stuck = Sink("done"), Sink("stuck")
    second = make_kernel(again_done, again_stuck, settings=FAST)
    await serve_kernel(second)
    await wait_for(lambda: len(again_stuck.seen) == 3)
    assert again_stuck.seen == [0, 1, 2]
    assert again_done.seen == []  # completion is recorded per subscriber
    for event_id in ids:
        assert (await second.bus.get_event(event_id)) is not None


async def test_exactly_once_interrupted_deliveries_are_dead_lettered(make_kernel, serve_kernel):
    stuck = Sink("stuck")
    first = make_kernel(stuck, settings={**FAST, "runtime.drain_timeout_sec": 1})
    await serve_kernel(first)
    stuck.gate.clear()
    result = await first.bus.publish("t.test", "once", delivery="exactly_once")
    await stuck.entered.wait()
    await first.lifecycle.shutdown()

    again = Sink("stuck")
    second = make_kernel(again, settings=FAST)
    await serve_kernel(second)
    await wait_for(lambda: second.bus.dead_letters.depth == 1)
    entry = await second.bus.dead_letters.get(result.id)
    assert entry.reason == "InterruptedDelivery: plugin:stuck"
    assert again.seen == []


async def test_dedup_answers_the_original_id_and_survives_restart(make_kernel, serve_kernel):
    sink = Sink("sink")
    first = make_kernel(sink, settings=FAST)
    await serve_kernel(first)
    original = await first.bus.publish("t.test", 1, delivery="at_least_once", dedup_key="k1")
    duplicate = await first.bus.publish("t.test", 2, delivery="at_least_once", dedup_key="k1")
    assert (duplicate.status, duplicate.id) == ("duplicate", original.id)
    await wait_for(lambda: sink.seen == [1])
    assert first.bus.stats()["duplicate_count"] == 1
    await first.lifecycle.shutdown()

    second = make_kernel(Sink("sink"), settings=FAST)
    await serve_kernel(second)
    again = await second.bus.publish("t.test", 3, delivery="at_most_once", dedup_key="k1")
    assert (again.status, again.id) == ("duplicate", original.id)


async def test_dedup_window_ends(bus_of):
    kernel = await bus_of(**{"event_bus.dedup_window_ms": 0})
    a = await kernel.bus.publish("t.test", 1, dedup_key="same")
    b = await kernel.bus.publish("t.test", 2, dedup_key="same")
    assert (a.status, b.status) == ("queued", "queued") and a.id != b.id


async def test_expired_events_are_not_delivered(bus_of):
    blocker, late = Sink("blocker"), Sink("late")
    kernel = await bus_of(blocker, late, **{"event_bus.dead_letter_expired": True})
    blocker.gate.clear()
    late.gate.clear()
    await kernel.bus.publish("t.test", "hold")
    await late.entered.wait()
    short = await kernel.bus.publish("t.test", "short", delivery="at_least_once", ttl_ms=1)
    await asyncio.sleep(0.01)  # let the 1 ms TTL pass (a real clock, not a synchronisation)
    late.gate.set()
    blocker.gate.set()
    await wait_for(lambda: kernel.bus.stats()["expired_count"] == 1)
    await wait_for(lambda: kernel.bus.pending() == 0)
    assert "short" not in late.seen and "short" not in blocker.seen
    entry = await kernel.bus.dead_letters.get(short.id)
    assert entry.reason == "Expired"


async def test_validation_and_trust(bus_of):
    kernel = await bus_of()
    with pytest.raises(Invalid, match="source cannot be empty"):
        await kernel.bus.publish("t.test", source=" ")
    with pytest.raises(Invalid, match="event_type must be 1-128"):
        await kernel.bus.publish(" padded ")
    with pytest.raises(Invalid, match="invalid value for 'priority'"):
        await kernel.bus.publish("t.test", priority="urgent")
    with pytest.raises(Forbidden):
        await kernel.bus.publish("config_changed", {}, trust_level="sandboxed")


async def test_backpressure_levels_and_their_effects(bus_of):
    blocker = Sink("blocker", types=())  # every event
    kernel = await bus_of(blocker, **{"event_bus.max_queue_size": 100})
    blocker.gate.clear()
    bus = kernel.bus
    registry = kernel.metrics.registry

    async def fill_to(level: str) -> None:
        while bus.level != level:
            await bus.publish("t.fill", None, delivery="at_least_once")

    await bus.publish("t.fill", "hold")
    await blocker.entered.wait()
    await fill_to("L1")  # 80 %
    assert registry.get_sample_value("backpressure_level") == 0.2
    assert (await bus.publish("idle", {})).status == "dropped"
    lowered = await bus.publish("t.amo", "lowered", priority="high")
    assert lowered.status == "queued" and (await bus.get_event(lowered.id)).priority == "normal"
    await fill_to("L2")  # 90 %
    assert (await bus.publish("t.amo", "dropped")).status == "dropped"
    await fill_to("L3")  # 95 %
    with pytest.raises(Unavailable, match=r"event bus backpressure \(level L3\); retry later"):
        await bus.publish("t.http", "refused", delivery="at_least_once", from_http=True)
    await fill_to("L4A")  # 98 %: internal guaranteed events go to the overflow store
    overflowed = await bus.publish("t.over", "overflowed", delivery="at_least_once")
    assert overflowed.status == "queued" and bus.stats()["overflow_depth"] == 1
    assert bus.stats()["discarded_count"] == 2
    page = await kernel.audit.query(action="backpressure.apply")
    assert "L1" in [r.detail for r in page.items]
    blocker.gate.set()
    await wait_for(lambda: bus.pending() == 0 and bus.stats()["overflow_depth"] == 0)
    assert bus.level == "Normal"
    assert "overflowed" in blocker.seen  # admitted from the overflow store once usage fell
    assert "refused" not in blocker.seen and "dropped" not in blocker.seen


async def test_critical_refuses_low_priority_and_a_full_overflow_refuses_internal_ones(bus_of):
    blocker = Sink("blocker", types=())
    kernel = await bus_of(
        blocker, **{"event_bus.max_queue_size": 16, "event_bus.overflow_max_events": 0}
    )
    blocker.gate.clear()
    bus = kernel.bus
    await bus.publish("t.test", "hold")
    await blocker.entered.wait()
    while bus.level != "Critical":
        await bus.publish("t.test", "fill", delivery="at_least_once")
    assert (await bus.publish("t.low", None, priority="low")).status == "dropped"
    with pytest.raises(Unavailable, match=r"^event bus is full; retry later$"):
        await bus.publish("t.low", None, priority="low", delivery="at_least_once")
    with pytest.raises(Unavailable, match="overflow store full"):
        await bus.publish("t.normal", None, delivery="at_least_once")
    assert kernel.metrics.registry.get_sample_value("backpressure_level") == 1.0
    blocker.gate.set()
    await wait_for(lambda: bus.level == "Normal")


async def test_guaranteed_events_a_subscriber_never_got_stay_owed(bus_of):
    stuck = Sink("stuck")
    kernel = await bus_of(stuck)
    stuck.gate.clear()
    for n in range(3):
        await kernel.bus.publish("t.test", n, delivery="at_least_once")
    await stuck.entered.wait()
    # Handed to the subscriber (no longer in the bus queues); targets are fixed at dispatch.
    await wait_for(lambda: not any(kernel.bus.stats()["queue_depth"].values()))
    await kernel.plugins.disable("stuck", operator="t")
    await kernel.bus.flush()
    rows = await kernel.store.fetchall("SELECT count(*) FROM bus_pending")
    assert rows[0][0] == 3  # replayed at the next start


async def test_event_store_queries(bus_of):
    kernel = await bus_of()
    root = await kernel.bus.publish("t.root", {"n": 0}, delivery="at_least_once")
    child = await kernel.bus.publish(
        "t.child", {"n": 1}, trace_id=root.trace_id, parent_event_id=root.id, source="s2"
    )
    trace = await kernel.bus.trace(root.trace_id)
    assert [e.id for e in trace] == [root.id, child.id]
    recent = await kernel.bus.recent(2)
    assert [e.id for e in recent] == [child.id, root.id]
    assert [e.id for e in await kernel.bus.recent(10, source="s2")] == [child.id]
    assert [e.id for e in await kernel.bus.recent(10, event_type="t.root")] == [root.id]
    event = await kernel.bus.get_event(root.id)
    assert event is not None and event.delivery == "at_least_once" and event.dedup_key == root.id
    assert event.metadata.max_retries == 4
    after = await kernel.bus.after(root.id, 10)
    assert after is not None and [e.id for e in after] == [child.id]
    assert await kernel.bus.after("unknown", 10) is None


async def test_event_store_is_bounded(bus_of):
    kernel = await bus_of(**{"event_bus.event_store_max_events": 100})
    for n in range(600):
        await kernel.bus.publish("t.test", n)
    await kernel.bus.flush()
    await kernel.bus.publish("t.test", "last", delivery="at_least_once")  # a synchronous record
    rows = await kernel.store.fetchall("SELECT count(*) FROM bus_events")
    assert rows[0][0] <= 100 + 512  # pruned every 512 records down to the newest 100
    newest = await kernel.bus.recent(1)
    assert newest[0].payload == "last"


async def test_unsubscribing_releases_what_the_subscriber_held(bus_of):
    blocker = Sink("blocker")
    kernel = await bus_of(blocker, **{"event_bus.max_queue_size": 20})
    blocker.gate.clear()
    for n in range(17):
        await kernel.bus.publish("t.test", n)
    assert kernel.bus.level == "L1"
    await kernel.plugins.disable("blocker", operator="t")
    await wait_for(lambda: kernel.bus.pending() == 0)
    assert kernel.bus.level == "Normal"


async def test_bus_metrics_are_live(bus_of):
    sink = Sink("sink")
    kernel = await bus_of(sink)
    await kernel.bus.publish("t.test", 1)
    await wait_for(lambda: sink.seen == [1])
    value = kernel.metrics.registry.get_sample_value
    assert value("event_throughput_total") >= 1
    assert "plugin:sink" in kernel.bus.subscribers()
    assert value("subscription_count") == len(kernel.bus.subscribers())
    assert value("event_bus_queue_depth", {"priority": "normal"}) == 0
    assert value("dlq_depth") == 0
    assert value("events_discarded_total") == 0


async def test_the_dedup_window_only_holds_explicit_keys_and_forgets_old_ones(bus_of):
    kernel = await bus_of(**{"event_bus.dedup_window_ms": 50})
    for n in range(20):
        await kernel.bus.publish("t.test", n, delivery="at_least_once")  # default keys
    assert kernel.bus._dedup == {}
    await kernel.bus.publish("t.test", "a", dedup_key="old")
    await asyncio.sleep(0.06)  # let the 50 ms window pass (real time, not synchronisation)
    await kernel.bus.publish("t.test", "b", dedup_key="new")
    assert list(kernel.bus._dedup) == ["new"]
    await kernel.bus.flush()
    rows = await kernel.store.fetchall("SELECT key FROM bus_dedup")
    assert [r[0] for r in rows] == ["new"]


@pytest.mark.parametrize("delivery", ["at_least_once", "at_most_once"])
async def test_a_publisher_writes_its_rows_with_the_event(bus_of, delivery):
    sink = Sink("sink")
    seen_rows: list[list[Any]] = []

    async def handle(event) -> None:  # the rows exist before a subscriber sees the event
        rows = await kernel.store.fetchall("SELECT id FROM notes WHERE event_id = ?", (event.id,))
        seen_rows.append([r["id"] for r in rows])

    sink.handle = handle
    kernel = await bus_of(sink)
    await kernel.store.write(lambda c: c.execute("CREATE TABLE notes (id TEXT, event_id TEXT)"))

    result = await kernel.bus.publish(
        "t.test", {}, delivery=delivery,
        also=lambda conn, event_id: conn.execute("INSERT INTO notes VALUES ('n1', ?)", (event_id,)),
    )
    await wait_for(lambda: seen_rows)
    assert seen_rows == [["n1"]]
    rows = await kernel.store.fetchall("SELECT event_id FROM notes")
    assert [r["event_id"] for r in rows] == [result.id]


async def test_rows_that_fail_to_write_refuse_the_guaranteed_event(bus_of):
    sink = Sink("sink")
    kernel = await bus_of(sink)

    def broken(conn, event_id):
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(Exception, match="no_such_table"):
        await kernel.bus.publish("t.test", {"n": 1}, delivery="at_least_once", also=broken)
    await kernel.bus.publish("t.test", {"n": 2}, delivery="at_least_once")
    await wait_for(lambda: sink.seen)
    assert sink.seen == [{"n": 2}]  # the refused event was never accepted
