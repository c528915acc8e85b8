"""Durable at-least-once publishing by 64 concurrent publishers, measured side by side with one
SQLite commit per event on the same disk.

Both run in this one process, on one event loop, against SQLite files in the same temporary
directory (``--dir``, default the system temporary directory; the output names its file system),
alternately, for the same time per round:

- **aman**: a kernel built in-process like the tests build it (``kernel.app.create_kernel`` with
  every built-in plugin + ``create_app``, ``async with app.test_app()``, ``await
  kernel.boot_task``) with the defaults that matter here: ``event_bus.mode = "persistent"``,
  ``storage.synchronous = "full"`` (SQLite in WAL mode, ``synchronous = FULL``),
  ``event_bus.max_queue_size = 10000``. 64 publisher tasks each call
  ``kernel.bus.publish(type, {"n": i}, source="bench", delivery="at_least_once")`` in a loop until
  the round's time is up; an event counts once its publish returned ``queued``, i.e. after the
  store's writer thread committed its outbox row, event-store record and dedup row (group commit:
  concurrent publishers share one transaction and one fsync). Two variants, each its own round:
  **no subscriber** (type ``bench.none``), and **1 subscriber** (type ``bench.sub``, one inline
  plugin ``EventHandler`` that only counts; its completions and outbox clean-up are written
  behind by the bus, on the same writer thread).
- **one commit per event** (the anchor): the same 64 tasks; each builds a small event (uuid4 id,
  type, source, payload, time) as JSON, hands it to one dedicated writer thread (FIFO queue, the
  same thread model as aman's store) that runs ``BEGIN IMMEDIATE; INSERT INTO events (id, body)
  VALUES (?, ?); COMMIT`` for that one event on its own connection (``journal_mode = WAL``,
  ``synchronous = FULL``, like aman's), then resolves the task's future; the task then publishes
  its next event.

Per round: ``gc.collect()``, then ``--duration`` seconds of publishing; the clock stops when the
last in-flight publish is acknowledged; rate = acknowledged events / elapsed. After an aman round,
outside the clock, the bench waits until the subscriber has handled every event and the bus's
write-behind is flushed (reported as "delivered/s" = events / time to the last delivery). Figures
are medians over ``--rounds`` rounds (A/B/C order rotating). Targets: aman >= 10,000 acknowledged
events/s and >= 3 x the anchor (checked for both variants).

This is a report, not a gate: it prints a table with PASS/FAIL per target and exits 0.

Usage (from the repository root, with aman installed in the running interpreter)::

    python bench/durable_publish.py              # about 35-45 s on 2 cores
    python bench/durable_publish.py --quick      # smoke run
    python bench/durable_publish.py --dir /var/tmp --profile /tmp/durable.prof
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from http_overhead import ForeignCpu, busy_fraction, loadavg, machine, report_foreign, table

from sdk import EventHandler, hookimpl

PUBLISHERS = 64
TARGET_RATE = 10_000.0  # aman acknowledged events/s
TARGET_RATIO = 3.0  # aman >= 3 x one commit per event
SUB_TYPE = "bench.sub"
NONE_TYPE = "bench.none"


class CountPlugin:
    """The inline plugin: one handler of ``bench.sub`` that only counts."""

    name = "bench"

    def __init__(self) -> None:
        self.count = 0

    @hookimpl
    def register_event_handlers(self) -> list[EventHandler]:
        async def handle(event: Any) -> None:
            self.count += 1

        return [EventHandler(name="count", handler=handle, event_types=(SUB_TYPE,))]


async def publishers(
    publish_one: Callable[[int], Awaitable[bool]], seconds: float
) -> tuple[int, float]:
    """``PUBLISHERS`` tasks publishing until ``seconds`` are up: (acknowledged, elapsed)."""
    acked = 0
    gc.collect()
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def one(k: int) -> None:
        nonlocal acked
        i = 0
        while time.perf_counter() < deadline:
            if await publish_one(k * 1_000_000 + i):
                acked += 1
            i += 1

    await asyncio.gather(*(one(k) for k in range(PUBLISHERS)))
    return acked, time.perf_counter() - t0


# --- aman ------------------------------------------------------------------------------------


async def aman_round(
    kernel: Any, plugin: CountPlugin, event_type: str, seconds: float
) -> dict[str, float]:
    bus = kernel.bus
    plugin.count = 0

    async def publish_one(i: int) -> bool:
        result = await bus.publish(event_type, {"n": i}, source="bench", delivery="at_least_once")
        return bool(result.status == "queued")

    commits0 = kernel.store.commits
    t0 = time.perf_counter()
    acked, elapsed = await publishers(publish_one, seconds)
    commits = kernel.store.commits - commits0
    if event_type == SUB_TYPE:
        while plugin.count < acked:
            await asyncio.sleep(0.001)
    delivered = time.perf_counter() - t0
    while bus.pending():
        await asyncio.sleep(0.005)
    await bus.flush()
    return {
        "rate": acked / elapsed,
        "delivered_rate": acked / delivered if event_type == SUB_TYPE else 0.0,
        "acked": acked,
        "commits": commits,
        "backpressure_normal": float(bus.level == "Normal"),  # 1.0: no level was reached
    }


# --- the anchor: one commit per event ----------------------------------------------------------


class OneCommitWriter:
    """One writer thread; one ``BEGIN IMMEDIATE; INSERT; COMMIT`` per event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.jobs: queue.SimpleQueue[tuple[str, str, asyncio.Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self.commits = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="bench-one-commit", daemon=True)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        conn = self._connect()
        conn.execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        conn.close()
        self.thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    async def stop(self) -> None:
        self.jobs.put(None)
        await asyncio.to_thread(self.thread.join)

    def _run(self) -> None:
        conn = self._connect()
        assert self.loop is not None
        while (job := self.jobs.get()) is not None:
            event_id, body, future = job
            error: BaseException | None = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO events (id, body) VALUES (?, ?)", (event_id, body))
                conn.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as exc:
                error = exc
            self.loop.call_soon_threadsafe(_settle, future, error)
        conn.close()

    async def publish(self, event_type: str, payload: Any, source: str) -> bool:
        event_id = str(uuid.uuid4())
        body = json.dumps(
            {
                "id": event_id,
                "event_type": event_type,
                "source": source,
                "payload": payload,
                "timestamp": time.time_ns() // 1_000_000,
            },
            separators=(",", ":"),
        )
        assert self.loop is not None
        future: asyncio.Future[None] = self.loop.create_future()
        self.jobs.put((event_id, body, future))
        await future
        return True


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def anchor_round(writer: OneCommitWriter, seconds: float) -> dict[str, float]:
    async def publish_one(i: int) -> bool:
        return await writer.publish("bench.none", {"n": i}, "bench")

    commits0 = writer.commits
    acked, elapsed = await publishers(publish_one, seconds)
    return {"rate": acked / elapsed, "acked": acked, "commits": writer.commits - commits0}


# --- the run -----------------------------------------------------------------------------------


def filesystem(path: Path) -> str:
    try:
        out = (
            subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True)
            .stdout.splitlines()[-1]
            .split()
        )
        return f"{out[1]} on {out[0]} (mounted at {out[-1]})"
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, list[dict[str, float]]]:
    from kernel.app import create_app, create_kernel
    from kernel.config import Config

    plugin = CountPlugin()
    config = Config(cli={"runtime.dir": str(workdir / "runtime")}, env={}, cwd=workdir)
    assert config.get("event_bus.mode") == "persistent"
    assert config.get("storage.synchronous") == "full"
    kernel = create_kernel([plugin], config=config)
    app = create_app(kernel)
    results: dict[str, list[dict[str, float]]] = {
        "aman, no subscriber": [],
        "aman, 1 subscriber": [],
        "one commit per event": [],
    }
    async with app.test_app():
        assert kernel.boot_task is not None
        await kernel.boot_task
        if not args.keep_builtin_subscribers:
            bus, dropped = kernel.bus, []
            for name in [p for p in kernel.bus._subs if p != CountPlugin.name]:  # the bus's table
                dropped += [s.name for s in bus._subs[name]]
                bus.unsubscribe(name)
            if dropped:
                print(f"  built-in subscribers unsubscribed for the run: {', '.join(dropped)}")
        writer = OneCommitWriter(workdir / "anchor.db")
        writer.start()
        try:
            contenders: list[tuple[str, Callable[[float], Awaitable[dict[str, float]]]]] = [
                ("aman, no subscriber", lambda s: aman_round(kernel, plugin, NONE_TYPE, s)),
                ("one commit per event", lambda s: anchor_round(writer, s)),
                ("aman, 1 subscriber", lambda s: aman_round(kernel, plugin, SUB_TYPE, s)),
            ]
            for _, go in contenders:  # one short uncounted round each
                await go(min(1.0, args.duration))
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await aman_round(kernel, plugin, SUB_TYPE, args.duration)
                profiler.disable()
                profiler.dump_stats(args.profile)
                print(f"  cProfile of one aman round (1 subscriber): {args.profile}", flush=True)
            for r in range(args.rounds):
                order = contenders[r % 3 :] + contenders[: r % 3]
                for name, go in order:
                    results[name].append(await go(args.duration))
                print(
                    f"  round {r + 1}/{args.rounds}: "
                    + ", ".join(
                        f"{name} {results[name][-1]['rate']:,.0f}/s"
                        f" ({results[name][-1]['acked'] / max(1, results[name][-1]['commits']):.1f}"
                        " events/commit)"
                        for name, _ in contenders
                    ),
                    flush=True,
                )
        finally:
            await writer.stop()
    return results


def report(results: dict[str, list[dict[str, float]]]) -> list[str]:
    def med(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in results[name]))

    anchor = med("one commit per event", "rate")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    rows = [("", "acked events/s", "events/commit", "vs anchor", "target", "result")]
    rows.append(
        (
            "one commit per event (anchor)",
            f"{anchor:,.0f}",
            f"{med('one commit per event', 'acked') / max(1, med('one commit per event', 'commits')):.1f}",
            "1.00 x",
            "-",
            "-",
        )
    )
    for name in ("aman, no subscriber", "aman, 1 subscriber"):
        rate = med(name, "rate")
        per_commit = statistics.median(r["acked"] / max(1, r["commits"]) for r in results[name])
        rows.append(
            (
                name,
                f"{rate:,.0f}",
                f"{per_commit:.1f}",
                f"{rate / anchor:.2f} x",
                f">= {TARGET_RATE:,.0f}/s, >= {TARGET_RATIO:.0f} x",
                f"{verdict(rate >= TARGET_RATE)}, {verdict(rate / anchor >= TARGET_RATIO)}",
            )
        )
    delivered = med("aman, 1 subscriber", "delivered_rate")
    rows.append(("aman, 1 subscriber: delivered/s", f"{delivered:,.0f}", "", "", "-", "-"))
    return table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--duration", type=float, default=2.5, help="seconds of publishing per round"
    )
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds per contender")
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files go")
    parser.add_argument(
        "--keep-builtin-subscribers",
        action="store_true",
        help="leave the built-in plugins' event handlers subscribed (they then get every event)",
    )
    parser.add_argument("--quick", action="store_true", help="1 s rounds, 1 round")
    parser.add_argument("--profile", type=Path, help="cProfile one extra aman round to this file")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 1.0, 1
    logging.basicConfig(stream=sys.stderr, level="WARNING")

    base = args.dir or Path(tempfile.gettempdir())
    m = machine()
    print(f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; {m['os']}; {m['stack']}")
    print(f"SQLite {sqlite3.sqlite_version}; files under {base}: {filesystem(base)}")
    print(
        f"work: {PUBLISHERS} concurrent publishers, at_least_once, {args.duration:g} s per round;"
        f" 1 uncounted round each, then {args.rounds} rounds, rotating order"
    )
    before = loadavg()
    busy = busy_fraction()
    print(f"load average before: {before}; CPU busy over 1 s: {busy:.0%}")
    if busy > 0.2:
        print("warning: the machine is not idle; figures will be noisy", file=sys.stderr)

    foreign = ForeignCpu()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aman-bench-durable-", dir=base) as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    wall = time.perf_counter() - began
    other = foreign.seconds()
    report_foreign(other, wall)
    print()
    for line in report(results):
        print(line)
    if args.json:
        raw = {
            "machine": m,
            "dir": str(base),
            "filesystem": filesystem(base),
            "duration_sec": args.duration,
            "rounds": args.rounds,
            "results": results,
            "foreign_cpu_sec": round(other, 1),
            "wall_sec": round(wall, 1),
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
