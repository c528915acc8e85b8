"""In-memory event dispatch to 10 subscribers, measured side by side with a bare asyncio fan-out.

Both run in this one process, on one event loop, alternately (A/B/A/B), with the same work:

- **aman**: a kernel built in-process like the tests build it (``kernel.app.create_kernel`` with
  every built-in plugin + ``create_app``, ``async with app.test_app()``, then ``await
  kernel.boot_task``), with ``event_bus.mode = "in_memory"`` and ``event_bus.max_queue_size =
  10_000_000`` (so a burst never reaches a backpressure level), and one inline plugin that
  registers 10 ``EventHandler`` s for the event type ``bench.tick``; each handler is an
  ``async def`` that only counts. One publisher task calls ``kernel.bus.publish("bench.tick",
  {"n": i}, source="bench")`` (``at_most_once``, priority ``normal``) N times; the clock stops when
  all 10 x N deliveries are counted. The bus does its full pipeline: validation, backpressure,
  dedup check, the event-store record (written behind, grouped, on the store's writer thread),
  observers (SSE hub, metrics), the priority queues, the dispatcher, one queue and worker task
  per subscriber with per-delivery bookkeeping.
- **bare asyncio** (the anchor): a publisher that puts N ``(rank, seq, event)`` tuples (the event
  is a small dict: id, type, source, payload) into one ``asyncio.PriorityQueue``; a dispatcher
  task that takes each and ``put_nowait`` s it into 10 per-subscriber ``asyncio.Queue`` s; 10
  worker tasks that ``await queue.get()`` and call the same counting function. No persistence,
  no filters, no bookkeeping.

Per round: ``gc.collect()``, then time from the first publish to the last delivery. Before each
aman round ends, the bus's write-behind records are flushed (not timed), so no store work spills
into the next round. Figures: the median over ``--rounds`` of events/s (N / seconds) for each,
and their ratio. Targets: aman >= 50,000 events/s and >= 0.4 x the anchor.

This is a report, not a gate: it prints a table with PASS/FAIL per target and exits 0.

Usage (from the repository root, with aman installed in the running interpreter)::

    python bench/bus_dispatch.py               # about 20-30 s on 2 cores
    python bench/bus_dispatch.py --quick       # smoke run
    python bench/bus_dispatch.py --profile /tmp/bus.prof   # also cProfile one aman round
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from http_overhead import ForeignCpu, busy_fraction, loadavg, machine, report_foreign, table

from sdk import EventHandler, hookimpl

SUBSCRIBERS = 10
EVENT_TYPE = "bench.tick"
TARGET_RATE = 50_000.0  # aman events/s
TARGET_RATIO = 0.4  # aman >= 0.4 x the anchor


class Tally:
    """The trivial work of every subscriber: count, and say when all deliveries are in."""

    def __init__(self, subscribers: int) -> None:
        self.counts = [0] * subscribers
        self.total = 0
        self.target = 0
        self.done: asyncio.Event | None = None

    def reset(self, target: int) -> asyncio.Event:
        self.counts = [0] * len(self.counts)
        self.total = 0
        self.target = target
        self.done = asyncio.Event()
        return self.done

    def hit(self, i: int) -> None:
        self.counts[i] += 1
        self.total += 1
        if self.total == self.target:
            assert self.done is not None
            self.done.set()


class FanoutPlugin:
    """The inline plugin: 10 handlers of ``bench.tick`` that only count."""

    name = "bench"

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    @hookimpl
    def register_event_handlers(self) -> list[EventHandler]:
        def make(i: int) -> Callable[[Any], Awaitable[None]]:
            hit = self.tally.hit

            async def handle(event: Any) -> None:
                hit(i)

            return handle

        return [
            EventHandler(name=f"h{i}", handler=make(i), event_types=(EVENT_TYPE,))
            for i in range(SUBSCRIBERS)
        ]


def only_bench_subscribers(kernel: Any, *, keep: bool) -> list[str]:
    """Unsubscribe the built-in plugins' event handlers (e.g. ``skills``, ``workflows``, which
    take every event), so that exactly the bench's subscribers do the work; their names."""
    if keep:
        return []
    bus = kernel.bus
    names = []
    for plugin in [p for p in bus._subs if p != FanoutPlugin.name]:  # the bus's own table
        names += [s.name for s in bus._subs[plugin]]
        bus.unsubscribe(plugin)
    return names


# --- the two contenders ----------------------------------------------------------------------


async def aman_round(kernel: Any, tally: Tally, n: int) -> float:
    done = tally.reset(n * SUBSCRIBERS)
    publish = kernel.bus.publish
    gc.collect()
    t0 = time.perf_counter()
    for i in range(n):
        await publish(EVENT_TYPE, {"n": i}, source="bench")
    await done.wait()
    elapsed = time.perf_counter() - t0
    await kernel.bus.flush()  # the event-store records, outside the clock
    assert tally.counts == [n] * SUBSCRIBERS, tally.counts
    return elapsed


class BareBus:
    """The anchor: one PriorityQueue, a dispatcher task, 10 queues and 10 worker tasks."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.inbox: asyncio.PriorityQueue[tuple[int, int, dict[str, Any]]] = asyncio.PriorityQueue()
        self.queues: list[asyncio.Queue[dict[str, Any]]] = [
            asyncio.Queue() for _ in range(SUBSCRIBERS)
        ]
        self.tasks: list[asyncio.Task[None]] = []
        self.seq = 0

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._dispatch())] + [
            asyncio.create_task(self._work(i, q)) for i, q in enumerate(self.queues)
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def publish(self, event_type: str, payload: Any, source: str) -> None:
        self.seq += 1
        event = {"id": self.seq, "event_type": event_type, "source": source, "payload": payload}
        await self.inbox.put((1, self.seq, event))

    async def _dispatch(self) -> None:
        while True:
            _, _, event = await self.inbox.get()
            for queue in self.queues:
                queue.put_nowait(event)

    async def _work(self, i: int, queue: asyncio.Queue[dict[str, Any]]) -> None:
        hit = self.tally.hit
        while True:
            await queue.get()
            hit(i)


async def bare_round(bare: BareBus, tally: Tally, n: int) -> float:
    done = tally.reset(n * SUBSCRIBERS)
    publish = bare.publish
    gc.collect()
    t0 = time.perf_counter()
    for i in range(n):
        await publish(EVENT_TYPE, {"n": i}, source="bench")
    await done.wait()
    elapsed = time.perf_counter() - t0
    assert tally.counts == [n] * SUBSCRIBERS, tally.counts
    return elapsed


# --- the run -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    from kernel.app import create_app, create_kernel
    from kernel.config import Config

    tally = Tally(SUBSCRIBERS)
    config = Config(
        cli={
            "runtime.dir": str(workdir / "runtime"),
            "event_bus.mode": "in_memory",
            "event_bus.max_queue_size": 10_000_000,
        },
        env={},
        cwd=workdir,
    )
    kernel = create_kernel([FanoutPlugin(tally)], config=config)
    app = create_app(kernel)
    rates: dict[str, list[float]] = {"aman": [], "bare": []}
    async with app.test_app():
        assert kernel.boot_task is not None
        await kernel.boot_task
        dropped = only_bench_subscribers(kernel, keep=args.keep_builtin_subscribers)
        if dropped:
            print(f"  built-in subscribers unsubscribed for the run: {', '.join(dropped)}")
        subs = [s for s in kernel.bus.subscribers() if s.startswith("plugin:bench/")]
        assert len(subs) == SUBSCRIBERS, kernel.bus.subscribers()
        others = [s for s in kernel.bus.subscribers() if not s.startswith("plugin:bench/")]
        if others:
            print(f"  other subscribers of every event kept: {', '.join(others)}")
        bare = BareBus(tally)
        bare.start()
        try:
            warm = max(1000, args.events // 5)  # one uncounted round each
            await aman_round(kernel, tally, warm)
            await bare_round(bare, tally, warm)
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await aman_round(kernel, tally, args.events)
                profiler.disable()
                profiler.dump_stats(args.profile)
                print(f"  cProfile of one aman round: {args.profile}", flush=True)
            contenders: list[tuple[str, Callable[[], Awaitable[float]]]] = [
                ("aman", lambda: aman_round(kernel, tally, args.events)),
                ("bare", lambda: bare_round(bare, tally, args.events)),
            ]
            for r in range(args.rounds):
                order = contenders if r % 2 == 0 else contenders[::-1]
                for name, go in order:
                    rates[name].append(args.events / await go())
                print(
                    f"  round {r + 1}/{args.rounds}: aman {rates['aman'][-1]:,.0f} events/s,"
                    f" bare {rates['bare'][-1]:,.0f} events/s",
                    flush=True,
                )
        finally:
            await bare.stop()
    return rates


def report(rates: dict[str, list[float]]) -> list[str]:
    aman, bare = statistics.median(rates["aman"]), statistics.median(rates["bare"])
    ratio = aman / bare

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    rows = [
        ("", "bare asyncio", "aman", "aman vs bare", "target", "result"),
        (
            "events/s (10 subscribers)",
            f"{bare:,.0f}",
            f"{aman:,.0f}",
            f"{ratio:.2f} x",
            f">= {TARGET_RATE:,.0f}/s",
            verdict(aman >= TARGET_RATE),
        ),
        (
            "ratio",
            "",
            "",
            f"{ratio:.2f} x",
            f">= {TARGET_RATIO:.2f} x",
            verdict(ratio >= TARGET_RATIO),
        ),
        (
            "deliveries/s",
            f"{bare * SUBSCRIBERS:,.0f}",
            f"{aman * SUBSCRIBERS:,.0f}",
            "",
            "-",
            "-",
        ),
        ("us per event", f"{1e6 / bare:.1f}", f"{1e6 / aman:.1f}", "", "-", "-"),
    ]
    return table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per round (N)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per contender")
    parser.add_argument(
        "--keep-builtin-subscribers",
        action="store_true",
        help="leave the built-in plugins' event handlers subscribed (they then get every event)",
    )
    parser.add_argument("--quick", action="store_true", help="N = 5000, 2 rounds")
    parser.add_argument("--profile", type=Path, help="cProfile one extra aman round to this file")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.rounds = 5000, 2
    logging.basicConfig(stream=sys.stderr, level="WARNING")

    m = machine()
    print(f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; {m['os']}; {m['stack']}")
    print(
        f"work: {args.events:,} at_most_once events per round to {SUBSCRIBERS} counting"
        f" subscribers; 1 uncounted round each, then {args.rounds} rounds, alternating"
    )
    before = loadavg()
    busy = busy_fraction()
    print(f"load average before: {before}; CPU busy over 1 s: {busy:.0%}")
    if busy > 0.2:
        print("warning: the machine is not idle; figures will be noisy", file=sys.stderr)

    foreign = ForeignCpu()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aman-bench-bus-") as tmp:
        rates = asyncio.run(run(args, Path(tmp)))
    wall = time.perf_counter() - began
    other = foreign.seconds()
    report_foreign(other, wall)
    print()
    for line in report(rates):
        print(line)
    if args.json:
        raw = {
            "machine": m,
            "events": args.events,
            "rounds": args.rounds,
            "rates": rates,
            "foreign_cpu_sec": round(other, 1),
            "wall_sec": round(wall, 1),
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
