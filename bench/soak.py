"""Soak: a steady mixed load on a real ``aman serve`` for ``--minutes``, sampling memory, file
descriptors, threads, database size, errors and queue depths, to find leaks and drift.

Issue 7, part 5: "a documented 2-hour mixed-load run (chat with ``echo``, pushes, cron, SSE
clients, plugin install/uninstall cycles) with memory and file-descriptor counts sampled; a
5-minute version in ``bench/`` that anyone can run." ``--minutes 5`` (the default) is that
version, ``--minutes 120`` the documented 2-hour run (docs/operations.md, "Soak runs").

The server: ``aman serve --token T --runtime-dir <tmp> --log-level warning`` in an empty
temporary directory (no ``./aman.toml``): every built-in plugin, the default ``echo`` provider and
agent ``aman``, the SQLite store with its defaults (WAL, ``synchronous = FULL``).

The load, at a moderate, fixed rate (a soak looks for leaks and drift, not for the maximum), from
this one process (asyncio, one ``httpx.AsyncClient`` per actor):

- **chat**: ``--sessions`` (4) users, each with a session of its own (http-api §11.5), sends one
  message every ``--chat-every`` (2) s, waits for its ``agent:reply_ready`` on the monitor stream
  (below) and checks the reply is the echo provider's (``echo: <text>``); after
  ``--session-turns`` (50) turns it closes the session and creates a new one;
- **pushes**: ``POST /events/push`` with ``delivery: at_least_once`` at ``--push-rate`` (10) per
  second (§5); a push is acknowledged when it answers 200 with ``status: queued``;
- **cron** (§19): ``soak-tick`` fires every second (``*/1 * * * * *``, six fields), ``soak-prompt``
  every minute (``0 * * * * *``) with a prompt, so each minute also runs a turn of agent ``aman``
  in the job's own background session;
- **SSE** (§23): ``--sse-clients`` (4) ``GET /events/stream`` with the token; the first, the
  *monitor*, parses every frame (turn replies, pushes, cron ticks, ``lagged`` frames); the others
  count frames and reconnect every ``--sse-reconnect`` (60) s;
- **plugins** (§7, §24): every ``--plugin-every`` (30) s the ``examples/notes`` plugin (packed by
  ``aman plugin pack``) is installed, its route called (``POST /api/v1/notes/items``, then ``GET
  /api/v1/notes/items/{id}``) and uninstalled.

Every ``--interval`` s (5 s up to 15 minutes, else 10 s) a sample: the server's ``VmRSS``,
``VmHWM`` and ``Threads`` (``/proc/<pid>/status``), its open fds (``/proc/<pid>/fd``), its CPU
share since the last sample, the sizes of ``aman.db`` and ``aman.db-wal``, the requests and
failures so far, and ``GET /debug/metrics`` (queue depths, retry, overflow, DLQ, backpressure
level, SSE clients, events accepted).

Verdicts (targets, documented in bench/README.md):

- **memory**: the slope of a least-squares line through ``VmRSS`` over the second half of the run
  below 20 MiB/h (the first half holds the warm-up: caches, pools, first imports);
- **fds**: the fitted change of the fd count over the second half within ±5;
- **errors**: no 5xx and no transport error; and no other failed request either (4xx);
- **pushes**: every at-least-once push acknowledged (``queued``);
- **work done**: every chat turn got its reply, every plugin cycle completed, and the cron job
  fired at least 90 % of the seconds it was registered.

The anchor of a soak is the run itself: drift is the ratio of the last tenth of the run to the
first tenth (medians of the samples) for RSS, fds, threads and database size, and of the request
times (push acknowledgement, send → reply) in those tenths. Also reported: the growth of the
database (db + wal, MiB/h over the second half). At the end the server is stopped with
``SIGTERM``; its exit code, the warning and error lines of its log and the rows of its database's
largest tables (what the disk grows with) are reported.

This is a report, not a gate: it prints PASS/FAIL per target and exits 0.

Usage (from the repository root, with aman installed in the running interpreter)::

    python bench/soak.py                    # 5 minutes
    python bench/soak.py --minutes 120      # the 2-hour soak
    python bench/soak.py --quick            # 1 minute: a smoke run, not a soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from http_overhead import (
    HOST,
    ForeignCpu,
    Server,
    aman_serve,
    busy_fraction,
    loadavg,
    machine,
    proc_status,
    report_foreign,
    table,
)
from plugin_install import pack_plugin
from sse_lag import own_cpu, percentile, proc_cpu

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-0f3c9a7e5d1b4c2a"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
PLUGIN = "notes"
TICK_JOB, PROMPT_JOB = "soak-tick", "soak-prompt"
TURN_TIMEOUT_SEC = 30.0
# The server closes a keep-alive connection after 5 s idle (kernel/cli.py); httpx keeps idle
# connections for 5 s too, so a request sent about 5 s after the previous one on the same
# connection can race the server's close ("Server disconnected without sending a response").
# Idle connections are dropped earlier on this side, as a client of such a server should.
LIMITS = httpx.Limits(keepalive_expiry=4.0)
MiB = 1024 * 1024

TARGET_RSS_SLOPE_MIB_H = 20.0  # VmRSS over the second half, least-squares slope
TARGET_FD_DELTA = 5  # fitted change of the fd count over the second half, either way
TARGET_CRON_SHARE = 0.9  # soak-tick events seen / seconds the job was registered


# --- requests and their outcomes -------------------------------------------------------------


@dataclass
class Outcomes:
    """Every request of the run by kind: answers by status class, transport errors, times."""

    status: dict[str, Counter[str]] = field(default_factory=dict)
    times: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (t, ms)
    failures: list[str] = field(default_factory=list)  # the first few, for the report

    def record(self, kind: str, t: float, ms: float, outcome: str, detail: str = "") -> None:
        self.status.setdefault(kind, Counter())[outcome] += 1
        if outcome == "2xx":
            self.times.setdefault(kind, []).append((t, ms))
        elif len(self.failures) < 20:
            self.failures.append(f"{kind}: {outcome} {detail}"[:200])

    def total(self, *outcomes: str) -> int:
        return sum(c[o] for c in self.status.values() for o in outcomes)


class Api:
    """One actor's HTTP client; every request is timed and its outcome recorded."""

    def __init__(self, base: str, outcomes: Outcomes, began: float) -> None:
        self.client = httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=30.0, limits=LIMITS)
        self.outcomes, self.began = outcomes, began

    async def call(self, kind: str, method: str, url: str, **kwargs: Any) -> httpx.Response | None:
        """The response when it is 2xx; otherwise None, the failure recorded."""
        t0 = time.monotonic()
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.outcomes.record(kind, t0 - self.began, 0.0, "transport", repr(exc))
            return None
        ms = (time.monotonic() - t0) * 1000
        outcome = f"{response.status_code // 100}xx"
        self.outcomes.record(kind, t0 - self.began, ms, outcome, response.text[:120])
        return response if outcome == "2xx" else None

    async def aclose(self) -> None:
        await self.client.aclose()


# --- the event streams -----------------------------------------------------------------------


@dataclass
class Seen:
    """What the monitor stream saw."""

    pushes: set[int] = field(default_factory=set)
    ticks: int = 0
    prompt_messages: int = 0  # message_received from the prompt cron job
    replies: Counter[str] = field(default_factory=Counter)  # agent:reply_ready per session
    frames: int = 0
    lagged: int = 0  # frames the server dropped for the stream clients (all of them)
    connects: int = 0


class Monitor:
    """The first stream client: resolves the chat users' waits and counts what it sees."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen
        self.waiting: dict[str, asyncio.Future[str]] = {}  # session id -> the reply

    def frame(self, name: str, data: str) -> None:
        if name == "lagged":
            self.seen.lagged += int(json.loads(data)["dropped"])
        if name != "event:processed":
            return
        event = json.loads(data)
        kind, payload = event["event_type"], event.get("payload") or {}
        if kind == "soak.push":
            self.seen.pushes.add(int(payload["seq"]))
        elif kind == "cron_tick" and event["source"] == TICK_JOB:
            self.seen.ticks += 1
        elif kind == "message_received" and event["source"] == f"cron:{PROMPT_JOB}":
            self.seen.prompt_messages += 1
        elif kind == "agent:reply_ready":
            session = str(payload.get("session_id"))
            self.seen.replies[session] += 1
            waiter = self.waiting.pop(session, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(str(payload.get("reply")))


async def stream_client(
    api: Api, seen: Seen, stop: asyncio.Event, monitor: Monitor | None, reconnect_sec: float
) -> None:
    """Read ``/events/stream`` until ``stop``; without a monitor, count frames and reconnect
    every ``reconnect_sec``; after a lost stream, reconnect (the loss is recorded)."""
    while not stop.is_set():
        t0 = time.monotonic()
        ok = False
        try:
            async with api.client.stream(
                "GET", "/events/stream", timeout=httpx.Timeout(30.0, read=None)
            ) as response:
                ok = response.status_code == 200
                ms = (time.monotonic() - t0) * 1000
                outcome = f"{response.status_code // 100}xx"
                api.outcomes.record("sse.connect", t0 - api.began, ms, outcome)
                if ok:
                    seen.connects += 1
                    await read_frames(response, seen, stop, monitor, t0 + reconnect_sec)
        except httpx.HTTPError as exc:
            ok = False
            if not stop.is_set():
                api.outcomes.record("sse.read", t0 - api.began, 0.0, "transport", repr(exc))
        if not ok:
            await asyncio.sleep(1.0)


async def read_frames(
    response: httpx.Response,
    seen: Seen,
    stop: asyncio.Event,
    monitor: Monitor | None,
    until: float,
) -> None:
    """Frames until ``stop`` (or ``until``, for a reader); the server sends a ``runtime:updated``
    frame every second, so both are noticed within about a second."""
    name, data = "", ""
    async for line in response.aiter_lines():
        if stop.is_set() or (monitor is None and time.monotonic() >= until):
            return
        if line:
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            continue
        seen.frames += 1
        if monitor is not None:
            monitor.frame(name, data)
        elif name == "lagged":
            seen.lagged += int(json.loads(data)["dropped"])
        name, data = "", ""
    if not stop.is_set():
        raise httpx.ReadError("the server closed the stream")


# --- the actors --------------------------------------------------------------------------------


@dataclass
class Work:
    """Work asked for and done, by actor."""

    turns_sent: int = 0
    turns_lost: int = 0  # no agent:reply_ready within TURN_TIMEOUT_SEC
    reply_mismatches: int = 0  # a reply other than the echo provider's
    turn_ms: list[tuple[float, float]] = field(default_factory=list)  # (t, send -> reply)
    sessions: int = 0
    pushes_sent: int = 0
    pushes_acked: int = 0  # 200 with status "queued"
    pushes_late: int = 0  # pushes sent more than one period behind their schedule
    plugin_cycles: int = 0
    plugin_cycles_ok: int = 0
    plugin_cycle_ms: list[float] = field(default_factory=list)


async def every(period: float, offset: float, stop: asyncio.Event) -> AsyncIterator[float]:
    """Yield at ``offset``, ``offset + period``, ... (a fixed schedule from now) until ``stop``,
    each time how late the tick is (seconds); a late tick is yielded at once, and the missed ones
    are not caught up."""
    due = time.monotonic() + offset
    while not stop.is_set():
        delay = due - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                pass
        now = time.monotonic()
        yield now - due
        due = max(due + period, now)


async def chat_user(
    api: Api, k: int, monitor: Monitor, work: Work, args: argparse.Namespace, stop: asyncio.Event
) -> None:
    """One user: a session, one message every ``--chat-every`` s, a new session after
    ``--session-turns`` turns (the old one closed)."""
    session, turns = "", 0
    offset = k * args.chat_every / args.sessions
    async for _ in every(args.chat_every, offset, stop):
        if not session or turns >= args.session_turns:
            if session:
                await api.call("chat.close", "POST", f"/chat/session/{session}/close")
            created = await api.call("chat.create", "POST", "/chat/session/create", json={})
            if created is None:
                continue
            session, turns = str(created.json()["id"]), 0
            work.sessions += 1
        text = f"soak user {k} turn {turns}"
        waiter = asyncio.get_running_loop().create_future()
        monitor.waiting[session] = waiter
        t0 = time.monotonic()
        sent = await api.call(
            "chat.send", "POST", f"/chat/session/{session}/send", json={"text": text}
        )
        turns += 1
        if sent is None:
            monitor.waiting.pop(session, None)
            continue
        work.turns_sent += 1
        try:
            reply = await asyncio.wait_for(waiter, TURN_TIMEOUT_SEC)
        except TimeoutError:
            work.turns_lost += 1
            monitor.waiting.pop(session, None)
            continue
        work.turn_ms.append((t0 - api.began, (time.monotonic() - t0) * 1000))
        work.reply_mismatches += reply != f"echo: {text}"


async def pusher(api: Api, work: Work, rate: float, stop: asyncio.Event) -> None:
    seq = 0
    async for late in every(1 / rate, 0.0, stop):
        work.pushes_late += late > 1 / rate
        body = {
            "source": "soak",
            "event_type": "soak.push",
            "payload": {"seq": seq},
            "delivery": "at_least_once",
        }
        work.pushes_sent += 1
        answer = await api.call("push", "POST", "/events/push", json=body)
        work.pushes_acked += answer is not None and answer.json().get("status") == "queued"
        seq += 1


async def plugin_cycler(
    api: Api, archive: bytes, work: Work, period: float, stop: asyncio.Event
) -> None:
    """Install the notes plugin, call its routes, uninstall it; every ``period`` s."""
    leftover = False  # a previous cycle's uninstall failed
    async for _ in every(period, period / 3, stop):
        work.plugin_cycles += 1
        t0 = time.monotonic()
        installed = await api.call(
            "plugin.install",
            "POST",
            "/plugin/install",
            content=archive,
            headers={"Content-Type": "application/gzip"},
        )
        fetched = None
        if installed is not None:
            text = f"soak cycle {work.plugin_cycles}"
            item = await api.call(
                "plugin.call", "POST", f"/api/v1/{PLUGIN}/items", json={"text": text}
            )
            if item is not None:
                fetched = await api.call(
                    "plugin.call", "GET", f"/api/v1/{PLUGIN}/items/{item.json()['id']}"
                )
        removed = None
        if installed is not None or leftover:
            removed = await api.call(
                "plugin.uninstall",
                "POST",
                f"/plugin/{PLUGIN}/uninstall",
                headers={"x-aman-confirm": "yes"},
            )
            leftover = removed is None
        if fetched is not None and removed is not None:
            work.plugin_cycles_ok += 1
            work.plugin_cycle_ms.append((time.monotonic() - t0) * 1000)


# --- samples -----------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss_mib: float
    hwm_mib: float
    fds: int
    threads: int
    cpu: float  # server CPU since the previous sample, share of one core
    db_mib: float
    wal_mib: float
    requests: int  # so far, every kind
    failed: int  # so far: non-2xx answers and transport errors
    queued: int  # events waiting, all priorities
    retry: int
    overflow: int
    dlq: int
    backpressure: str
    sse_clients: int
    accepted: int  # events accepted by the bus since start


def file_mib(path: Path) -> float:
    try:
        return path.stat().st_size / MiB
    except FileNotFoundError:
        return 0.0


async def sampler(
    api: Api,
    server: Server,
    runtime: Path,
    samples: list[Sample],
    interval: float,
    stop: asyncio.Event,
) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    cpu0, t0 = proc_cpu(pid), time.monotonic()
    async for _ in every(interval, 0.0, stop):
        metrics = await api.call("debug.metrics", "GET", "/debug/metrics")
        m = metrics.json() if metrics is not None else {}
        status, cpu, now = proc_status(pid), proc_cpu(pid), time.monotonic()
        samples.append(
            Sample(
                t=now - api.began,
                rss_mib=status["VmRSS"] / 1024,
                hwm_mib=status["VmHWM"] / 1024,
                fds=len(os.listdir(f"/proc/{pid}/fd")),
                threads=status["Threads"],
                cpu=(cpu - cpu0) / max(1e-9, now - t0),
                db_mib=file_mib(runtime / "aman.db"),
                wal_mib=file_mib(runtime / "aman.db-wal"),
                requests=api.outcomes.total("2xx", "3xx", "4xx", "5xx", "transport"),
                failed=api.outcomes.total("3xx", "4xx", "5xx", "transport"),
                queued=sum(m.get(f"queue_depth_{p}", 0) for p in ("high", "normal", "low")),
                retry=m.get("retry_queue_depth", -1),
                overflow=m.get("overflow_depth", -1),
                dlq=m.get("dlq_depth", -1),
                backpressure=m.get("backpressure_level", "?"),
                sse_clients=m.get("sse_clients", -1),
                accepted=m.get("throughput", -1),
            )
        )
        cpu0, t0 = cpu, now
        if len(samples) % max(1, round(60 / interval)) == 0:
            s = samples[-1]
            print(
                f"  {s.t / 60:5.1f} min: RSS {s.rss_mib:.1f} MiB, fds {s.fds}, threads"
                f" {s.threads}, db {s.db_mib:.1f} + wal {s.wal_mib:.1f} MiB, requests"
                f" {s.requests}, failed {s.failed}, queued {s.queued}",
                flush=True,
            )


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the load saw, for the report."""

    outcomes: Outcomes
    seen: Seen
    work: Work
    samples: list[Sample]
    cron_seconds: float  # how long the every-second cron job was registered
    prompt_replies: int  # replies in the prompt cron job's session
    wall_sec: float
    client_cpu_sec: float = 0.0


async def soak(server: Server, runtime: Path, archive: bytes, args: argparse.Namespace) -> Run:
    base = f"http://{HOST}:{server.port}"
    outcomes, seen, work = Outcomes(), Seen(), Work()
    samples: list[Sample] = []
    stop = asyncio.Event()
    began = time.monotonic()
    apis: list[Api] = []

    def api() -> Api:
        apis.append(Api(base, outcomes, began))
        return apis[-1]

    setup = api()
    for job, expression, extra in (
        (TICK_JOB, "*/1 * * * * *", {}),
        (PROMPT_JOB, "0 * * * * *", {"prompt": "soak: the minute prompt"}),
    ):
        body = {"id": job, "expression": expression, **extra}
        if await setup.call("cron.add", "POST", "/cron/add", json=body) is None:
            raise RuntimeError(f"cron/add {job} failed: {outcomes.failures[-1:]}")
    cron_added = time.monotonic()

    # The streams stop after the load, so the monitor sees the replies of the last turns.
    monitor, streams_stop = Monitor(seen), asyncio.Event()
    streams = [
        stream_client(api(), seen, streams_stop, monitor, 0.0),
        *(
            stream_client(api(), seen, streams_stop, None, args.sse_reconnect)
            for _ in range(args.sse_clients - 1)
        ),
    ]
    load = [
        *(chat_user(api(), k, monitor, work, args, stop) for k in range(args.sessions)),
        pusher(api(), work, args.push_rate, stop),
        plugin_cycler(api(), archive, work, args.plugin_every, stop),
        sampler(api(), server, runtime, samples, args.interval, stop),
    ]
    stream_tasks = [asyncio.ensure_future(c) for c in streams]
    load_tasks = [asyncio.ensure_future(c) for c in load]
    await asyncio.sleep(args.minutes * 60)
    stop.set()
    cron_seconds = time.monotonic() - cron_added
    await finish(load_tasks, TURN_TIMEOUT_SEC + 5)
    streams_stop.set()
    await finish(stream_tasks, 5.0)
    cron = await setup.call("cron", "GET", "/cron")
    jobs = cron.json()["items"] if cron is not None else []
    prompt_session = next((j["session_id"] for j in jobs if j["id"] == PROMPT_JOB), None)
    for a in apis:
        await a.aclose()
    return Run(
        outcomes=outcomes,
        seen=seen,
        work=work,
        samples=samples,
        cron_seconds=cron_seconds,
        prompt_replies=seen.replies.get(str(prompt_session), 0),
        wall_sec=time.monotonic() - began,
    )


async def finish(tasks: Sequence[asyncio.Future[None]], timeout: float) -> None:
    """Wait for ``tasks`` to end by themselves (cancel them after ``timeout``); re-raise the first
    one that failed."""
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if (exc := task.exception()) is not None:
            raise exc


# --- the report --------------------------------------------------------------------------------


def slope_per_hour(samples: Sequence[Sample], attr: str) -> float:
    if len(samples) < 2:
        return float("nan")
    fit = statistics.linear_regression([s.t for s in samples], [getattr(s, attr) for s in samples])
    return fit.slope * 3600


def tenths(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """The samples of the first and of the last tenth of the run (at least one each)."""
    end = samples[-1].t
    first = [s for s in samples if s.t <= end / 10] or list(samples[:1])
    last = [s for s in samples if s.t >= end * 0.9] or list(samples[-1:])
    return first, last


def med(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def second_half(samples: Sequence[Sample]) -> list[Sample]:
    return [s for s in samples if s.t >= samples[-1].t / 2]


def judge(run: Run) -> list[tuple[str, str, str, bool]]:
    """(what, value, target, ok) for every verdict."""
    outcomes, work, seen = run.outcomes, run.work, run.seen
    half = second_half(run.samples)
    rss_slope = slope_per_hour(half, "rss_mib")
    fd_change = slope_per_hour(half, "fds") * (half[-1].t - half[0].t) / 3600
    expected_ticks = int(run.cron_seconds)
    hard = outcomes.total("5xx", "transport")
    other = outcomes.total("3xx", "4xx")
    return [
        (
            "RSS slope, second half",
            f"{rss_slope:+.1f} MiB/h",
            f"< {TARGET_RSS_SLOPE_MIB_H:g} MiB/h",
            rss_slope < TARGET_RSS_SLOPE_MIB_H,
        ),
        (
            "fds, fitted change over the second half",
            f"{fd_change:+.1f} (range {min(s.fds for s in half)}-{max(s.fds for s in half)})",
            f"within +-{TARGET_FD_DELTA}",
            abs(fd_change) <= TARGET_FD_DELTA,
        ),
        ("5xx answers and transport errors", str(hard), "0", hard == 0),
        ("other failed requests (3xx/4xx)", str(other), "0", other == 0),
        (
            "at-least-once pushes acknowledged",
            f"{work.pushes_acked} of {work.pushes_sent}",
            "all",
            work.pushes_acked == work.pushes_sent > 0,
        ),
        (
            "chat turns answered (echo reply)",
            f"{work.turns_sent - work.turns_lost - work.reply_mismatches} of {work.turns_sent}",
            "all",
            work.turns_lost == work.reply_mismatches == 0 and work.turns_sent > 0,
        ),
        (
            "plugin cycles completed",
            f"{work.plugin_cycles_ok} of {work.plugin_cycles}",
            "all",
            work.plugin_cycles_ok == work.plugin_cycles > 0,
        ),
        (
            "cron ticks seen (every second)",
            f"{seen.ticks} of {expected_ticks}",
            f">= {TARGET_CRON_SHARE:.0%}",
            seen.ticks >= TARGET_CRON_SHARE * expected_ticks,
        ),
    ]


def sample_rows(samples: Sequence[Sample], max_rows: int = 30) -> Sequence[Sequence[str]]:
    stride = max(1, -(-len(samples) // max_rows))
    shown = list(samples[::stride])
    if shown[-1] is not samples[-1]:
        shown.append(samples[-1])
    head = (
        "t (s)",
        "RSS MiB",
        "HWM",
        "fds",
        "thr",
        "CPU",
        "db MiB",
        "wal MiB",
        "requests",
        "failed",
        "queued",
        "retry",
        "ovfl",
        "dlq",
        "bp",
        "sse",
        "accepted",
    )
    return [head] + [
        (
            f"{s.t:.0f}",
            f"{s.rss_mib:.1f}",
            f"{s.hwm_mib:.1f}",
            str(s.fds),
            str(s.threads),
            f"{s.cpu:.0%}",
            f"{s.db_mib:.2f}",
            f"{s.wal_mib:.2f}",
            str(s.requests),
            str(s.failed),
            str(s.queued),
            str(s.retry),
            str(s.overflow),
            str(s.dlq),
            s.backpressure,
            str(s.sse_clients),
            str(s.accepted),
        )
        for s in shown
    ]


def report(run: Run, args: argparse.Namespace, ending: Ending) -> list[str]:
    samples, outcomes, work, seen = run.samples, run.outcomes, run.work, run.seen
    lines = [f"# samples (every {args.interval:g} s; at most 30 rows shown, --json has all)"]
    lines += table(sample_rows(samples))

    first, last = tenths(samples)
    end = samples[-1].t

    def in_tenth(values: Sequence[tuple[float, float]], lo: float, hi: float) -> list[float]:
        return sorted(ms for t, ms in values if lo <= t <= hi)

    drift = [("", "first tenth", "last tenth", "last / first")]
    for label, attr in (
        ("RSS (MiB)", "rss_mib"),
        ("fds", "fds"),
        ("threads", "threads"),
        ("db + wal (MiB)", None),
    ):

        def value(group: Sequence[Sample], attr: str | None = attr) -> float:
            return med([s.db_mib + s.wal_mib if attr is None else getattr(s, attr) for s in group])

        a, b = value(first), value(last)
        drift.append((label, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f} x" if a else "-"))
    for label, values in (
        ("push acknowledged p50 (ms)", outcomes.times.get("push", [])),
        ("chat send -> reply p50 (ms)", work.turn_ms),
    ):
        a = percentile(in_tenth(values, 0, end / 10), 50)
        b = percentile(in_tenth(values, end * 0.9, end), 50)
        drift.append((label, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f} x"))
    lines += ["", "# drift: the run against its own first tenth (medians)", *table(drift)]

    kinds = [("request", "count", "2xx", "4xx", "5xx", "transport", "p50 ms", "p95 ms", "max ms")]
    for kind in sorted(outcomes.status):
        c = outcomes.status[kind]
        ms = sorted(v for _, v in outcomes.times.get(kind, []))
        kinds.append(
            (
                kind,
                str(sum(c.values())),
                str(c["2xx"]),
                str(c["4xx"]),
                str(c["5xx"]),
                str(c["transport"]),
                f"{percentile(ms, 50):.1f}",
                f"{percentile(ms, 95):.1f}",
                f"{ms[-1]:.1f}" if ms else "-",
            )
        )
    lines += ["", "# requests", *table(kinds)]
    if outcomes.failures:
        lines += ["failures (first 20):", *(f"  {f}" for f in outcomes.failures)]

    turns = sorted(ms for _, ms in work.turn_ms)
    wall = run.wall_sec
    db_slope = slope_per_hour(
        [replace(s, db_mib=s.db_mib + s.wal_mib) for s in second_half(samples)], "db_mib"
    )
    lines += [
        "",
        f"chat: {work.turns_sent} turns in {work.sessions} sessions ({work.turns_sent / wall:.2f}/s),"
        f" send -> reply p50 {percentile(turns, 50):.1f} ms, p95 {percentile(turns, 95):.1f} ms;"
        f" lost {work.turns_lost}, wrong replies {work.reply_mismatches}",
        f"pushes: {work.pushes_sent} sent ({work.pushes_sent / wall:.1f}/s, {work.pushes_late} late),"
        f" {work.pushes_acked} acknowledged queued, {len(seen.pushes)} seen on the monitor stream",
        f"cron: {seen.ticks} ticks of {TICK_JOB} in {run.cron_seconds:.0f} s;"
        f" {PROMPT_JOB}: {seen.prompt_messages} prompts, {run.prompt_replies} replies",
        f"sse: {args.sse_clients} clients, {seen.connects} connections, {seen.frames} frames"
        f" read, {seen.lagged} frames dropped for slow clients (lagged)",
        f"plugins: {work.plugin_cycles_ok} of {work.plugin_cycles} install -> call -> uninstall"
        f" cycles, p50 {med(work.plugin_cycle_ms):.0f} ms",
        f"server: CPU {med([s.cpu for s in samples]):.0%} of a core (median), VmHWM"
        f" {samples[-1].hwm_mib:.1f} MiB; SIGTERM exit code {ending.exit_code}",
        f"database: db + wal {samples[-1].db_mib + samples[-1].wal_mib:.1f} MiB at the end,"
        f" {db_slope:+.1f} MiB/h over the second half; most rows: "
        + ", ".join(f"{name} {rows:,}" for name, rows in ending.tables[:6]),
        f"client (this process): CPU {run.client_cpu_sec / wall:.0%} of a core",
        f"server log (--log-level warning): {ending.levels['WARNING']} warning,"
        f" {ending.levels['ERROR']} error, {ending.levels['CRITICAL']} critical lines",
        *(f"  {line[:160]}" for line in ending.log_lines),
    ]
    verdicts = [("verdict", "value", "target", "result")]
    verdicts += [(w, v, t, "PASS" if ok else "FAIL") for w, v, t, ok in judge(run)]
    lines += ["", "# verdicts", *table(verdicts)]
    return lines


@dataclass
class Ending:
    """What is known once the server has stopped."""

    exit_code: int | None
    levels: Counter[str]  # log lines per level (the server logs warnings and worse)
    log_lines: list[str]  # the first few of them
    tables: list[tuple[str, int]]  # rows per table, most first


def ending(server: Server, runtime: Path, exit_code: int | None) -> Ending:
    levels: Counter[str] = Counter()
    first: list[str] = []
    if server.log is not None and server.log.exists():
        for line in server.log.read_text(errors="replace").splitlines():
            level = next((lv for lv in ("WARNING", "ERROR", "CRITICAL") if lv in line), None)
            if level is not None:
                levels[level] += 1
                if len(first) < 10:
                    first.append(line)
    return Ending(exit_code, levels, first, table_rows(runtime / "aman.db"))


def table_rows(db: Path) -> list[tuple[str, int]]:
    """Rows per table of the stopped server's database, most first: what the disk grows with."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        names = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith("sqlite_")
        ]
        rows = [(n, conn.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0]) for n in names]
    return sorted(rows, key=lambda r: -r[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load")
    parser.add_argument(
        "--interval", type=float, help="seconds between samples (5, or 10 > 15 min)"
    )
    parser.add_argument("--sessions", type=int, default=4, help="chat users, one session each")
    parser.add_argument(
        "--chat-every", type=float, default=2.0, help="seconds between a user's messages"
    )
    parser.add_argument("--session-turns", type=int, default=50, help="turns before a new session")
    parser.add_argument(
        "--push-rate", type=float, default=10.0, help="at-least-once pushes per second"
    )
    parser.add_argument("--sse-clients", type=int, default=4, help="event stream clients (>= 1)")
    parser.add_argument("--sse-reconnect", type=float, default=60.0, help="seconds per connection")
    parser.add_argument("--plugin-every", type=float, default=30.0, help="seconds per plugin cycle")
    parser.add_argument("--quick", action="store_true", help="1 minute: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the raw samples and figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    if args.interval is None:
        args.interval = 5.0 if args.minutes <= 15 else 10.0
    args.sse_clients = max(1, args.sse_clients)

    m = machine()
    print(f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; {m['os']}; {m['stack']}")
    print(
        f"load for {args.minutes:g} min: {args.sessions} chat users (a message every"
        f" {args.chat_every:g} s, new session every {args.session_turns} turns),"
        f" {args.push_rate:g} pushes/s at_least_once, cron every 1 s and every minute (prompt),"
        f" {args.sse_clients} SSE clients, notes plugin install/call/uninstall every"
        f" {args.plugin_every:g} s; a sample every {args.interval:g} s"
    )
    busy = busy_fraction()
    print(f"load average before: {loadavg()}; CPU busy over 1 s: {busy:.0%}")
    if busy > 0.2:
        print("warning: the machine is not idle; figures will be noisy", file=sys.stderr)

    foreign = ForeignCpu()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aman-bench-soak-") as tmp:
        workdir = Path(tmp)
        archive = pack_plugin(ROOT / "examples" / PLUGIN, workdir / f"{PLUGIN}.tar.gz")
        runtime = workdir / "runtime"

        def command(port: int) -> list[str]:
            return aman_serve(port, runtime, TOKEN, "--log-level", "warning")

        server = Server("aman", command, workdir)
        try:
            server.start()
            cpu0 = own_cpu()
            run = asyncio.run(soak(server, runtime, archive, args))
            run.client_cpu_sec = own_cpu() - cpu0
        except Exception:
            print(f"--- {server.name} log ---\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            exit_code = server.stop()
        end = ending(server, runtime, exit_code)
    wall = time.perf_counter() - began
    report_foreign(foreign.seconds(), wall)
    print()
    for line in report(run, args, end):
        print(line)
    if args.json:
        raw = {
            "machine": m,
            "settings": vars(args) | {"json": str(args.json)},
            "samples": [asdict(s) for s in run.samples],
            "requests": {k: dict(c) for k, c in run.outcomes.status.items()},
            "failures": run.outcomes.failures,
            "work": {k: v for k, v in asdict(run.work).items() if k != "turn_ms"},
            "verdicts": [
                {"what": w, "value": v, "target": t, "pass": ok} for w, v, t, ok in judge(run)
            ],
            "ending": asdict(end),
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
