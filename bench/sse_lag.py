"""SSE delivery lag with 100 clients at 100 events/s, measured side by side with a minimal Quart SSE
app.

Both servers run as their own processes on the same Hypercorn and interpreter, in one run:

- **aman**: ``aman serve --token T`` (every built-in plugin, SQLite store in a temporary runtime
  directory, defaults: ``persistent`` bus, ``synchronous = FULL``). Clients read ``GET
  /events/stream`` with the token (full ``event:processed`` frames: the whole event, payload
  included; also aman's ``runtime:updated``/snapshot frames, which the clients skip). Events are
  published with ``POST /events/push`` ``{"source": "bench", "event_type": "bench.sse", "payload":
  {"seq": n, "sent": t}}`` (the endpoint's default delivery, ``at_least_once``: acknowledged after
  the commit; ``--delivery at_most_once`` to compare).
- **minimal Quart SSE** (the anchor, ``bench/sse_quart.py``): one bounded queue per client, a
  ``POST /publish`` taking the same JSON body that formats one frame and puts it into every
  client's queue; nothing stored.

The load, from this one process (asyncio, raw sockets): ``--clients`` (100) SSE clients, each on
its own HTTP/1.1 connection (bare ``asyncio.Protocol`` s: chunked bodies decoded, frames split on
blank lines), and one publisher that sends one event every 1/``--rate`` s (100/s) on a pool of
keep-alive connections, stamping ``sent = time.monotonic()`` into the payload just before the
request is written. A client's lag for an event is ``time.monotonic()`` when ``data_received``
got the bytes that completed the frame, minus ``sent`` (one clock, one process). Per round:
connect all clients, publish ``--warmup`` s (not counted in the lags), then ``--duration`` s;
wait until every client has every acknowledged event (at most 10 s more: a late frame is lag,
not a gap), disconnect. Gaps: for every client, the acknowledged events of the round (warm-up
included) that it never received; duplicates and ``lagged`` frames are counted too. Rounds
alternate A/B/A/B; figures are the medians over rounds of each round's p50/p99/max over all
(client, event) samples.

The output also gives each server's CPU use and this client process's CPU use during the rounds
(if the client is near one full core, it — not the server — bounds the figures), and, as the other
benchmarks do, how much CPU other processes used.

Target: aman's p99 lag <= 1.5 x the anchor's, and no gaps.

This is a report, not a gate: it prints a table with PASS/FAIL per target and exits 0.

Usage (from the repository root, with aman installed in the running interpreter)::

    python bench/sse_lag.py                # about 55 s on 2 cores
    python bench/sse_lag.py --quick        # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from http_overhead import (
    HOST,
    ForeignCpu,
    Server,
    aman_serve,
    busy_fraction,
    loadavg,
    machine,
    report_foreign,
    table,
)

HERE = Path(__file__).resolve().parent
TOKEN = "bench-0f3c9a7e5d1b4c2a"
TARGET_P99 = 1.5  # aman p99 lag <= 1.5 x the anchor's
SEQ_SENT = re.compile(rb'"seq":(\d+),"sent":([0-9.eE+-]+)')
POOL = 32  # publisher connections (enough that a slow answer does not hold up the next send)


# --- the clients -------------------------------------------------------------------------------


class Dechunker:
    """Incremental decoder of an HTTP/1.1 chunked body."""

    def __init__(self) -> None:
        self.buf = b""
        self.remaining = 0  # data bytes left in the current chunk
        self.skip = 0  # CRLF bytes left after it
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf, pos, out = self.buf + data, 0, []
        while pos < len(buf) and not self.done:
            if self.skip:
                n = min(self.skip, len(buf) - pos)
                pos += n
                self.skip -= n
            elif self.remaining:
                n = min(self.remaining, len(buf) - pos)
                out.append(buf[pos : pos + n])
                pos += n
                self.remaining -= n
                if not self.remaining:
                    self.skip = 2
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(buf[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                if size == 0:
                    self.done = True
                else:
                    self.remaining = size
        self.buf = buf[pos:]
        return b"".join(out)


@dataclass
class ClientStats:
    lags: array[float] = field(default_factory=lambda: array("d"))
    lag_seqs: array[int] = field(default_factory=lambda: array("q"))
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    lagged_frames: int = 0
    other_frames: int = 0
    error: str | None = None


class SseClient(asyncio.Protocol):
    """One SSE client as a bare protocol (no task or future per read: the client process must
    stay cheap next to the server). Each chunk of bytes is timed when ``data_received`` runs."""

    def __init__(self, port: int, stats: ClientStats, connected: asyncio.Future[None]) -> None:
        self.port, self.stats, self.connected = port, stats, connected
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.body = False
        self.chunked = False
        self.dechunk = Dechunker()
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            (
                f"GET /events/stream HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            if not head.startswith(b"HTTP/1.1 200"):
                self.fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                return
            self.body = True
            self.chunked = b"transfer-encoding: chunked" in head.lower()
        pending = self.pending + (self.dechunk.feed(data) if self.chunked else data)
        if b"\n\n" not in pending:
            self.pending = pending
            return
        *frames, self.pending = pending.split(b"\n\n")
        if not self.connected.done():
            self.connected.set_result(None)
        stats = self.stats
        for frame in frames:
            if b"event: event:processed" in frame:
                match = SEQ_SENT.search(frame)
                if match is None:
                    stats.other_frames += 1
                    continue
                seq = int(match.group(1))
                if seq in stats.seen:
                    stats.duplicates += 1
                    continue
                stats.seen.add(seq)
                stats.lags.append(now - float(match.group(2)))
                stats.lag_seqs.append(seq)
            elif b"event: lagged" in frame:
                stats.lagged_frames += 1
            else:
                stats.other_frames += 1

    def fail(self, error: str) -> None:
        self.stats.error = self.stats.error or error
        if not self.connected.done():
            self.connected.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.fail(f"stream closed: {exc}" if exc else "server closed the stream")

    closing = False

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


# --- the publisher -----------------------------------------------------------------------------


class Publisher:
    """Sends ``rate`` events/s on a pool of keep-alive connections, each stamped with its send
    time; records which were acknowledged (HTTP 200)."""

    def __init__(self, port: int, path: str, delivery: str | None) -> None:
        self.port, self.path, self.delivery = port, path, delivery
        self.acked: set[int] = set()
        self.failed = 0
        self.late = 0  # ticks that found no idle connection at once
        self.ack_ms: list[float] = []
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._conns: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        for _ in range(POOL):
            reader, writer = await asyncio.open_connection(HOST, self.port)
            self._conns.append(writer)
            self._idle.put_nowait((reader, writer))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for writer in self._conns:
            writer.close()

    async def run(self, first_seq: int, count: int, rate: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(count):
            due = start + k / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._idle.empty():
                self.late += 1
            conn = await self._idle.get()
            task = loop.create_task(self._send(conn, first_seq + k))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], seq: int
    ) -> None:
        reader, writer = conn
        sent = time.monotonic()
        body: dict[str, Any] = {
            "source": "bench",
            "event_type": "bench.sse",
            "payload": {"seq": seq, "sent": sent},
        }
        if self.delivery:
            body["delivery"] = self.delivery
        data = json.dumps(body, separators=(",", ":")).encode()
        writer.write(
            (
                f"POST {self.path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError):
            self.failed += 1
            return  # the connection is lost: the pool shrinks by one
        self.ack_ms.append((time.monotonic() - sent) * 1000)
        if head.startswith(b"HTTP/1.1 200"):
            self.acked.add(seq)
        else:
            self.failed += 1
        self._idle.put_nowait((reader, writer))


# --- one round ---------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


async def one_round(
    server: Server, path: str, delivery: str | None, args: argparse.Namespace, first_seq: int
) -> dict[str, Any]:
    assert server.proc is not None
    stats = [ClientStats() for _ in range(args.clients)]
    loop = asyncio.get_running_loop()
    connected: list[asyncio.Future[None]] = [loop.create_future() for _ in stats]
    protocols: list[SseClient] = []
    for s, ready in zip(stats, connected, strict=True):
        try:
            _, protocol = await loop.create_connection(
                lambda s=s, ready=ready: SseClient(server.port, s, ready), HOST, server.port
            )
            protocols.append(protocol)
        except OSError as exc:
            s.error = f"connect: {exc}"
            ready.set_result(None)
    await asyncio.wait_for(asyncio.gather(*connected), 30)
    errors = [s.error for s in stats if s.error]
    publisher = Publisher(server.port, path, delivery)
    await publisher.open()
    warm = round(args.warmup * args.rate)
    count = round(args.duration * args.rate)
    await publisher.run(first_seq, warm, args.rate)
    cpu_server0, cpu_own0, t0 = proc_cpu(server.proc.pid), own_cpu(), time.monotonic()
    await publisher.run(first_seq + warm, count, args.rate)
    sending = time.monotonic() - t0
    await publisher.close()
    wall = time.monotonic() - t0
    cpu_server, cpu_own = proc_cpu(server.proc.pid) - cpu_server0, own_cpu() - cpu_own0
    acked = publisher.acked
    deadline = time.monotonic() + 10  # stragglers: a late frame is lag, not a gap
    await asyncio.sleep(0.5)
    while time.monotonic() < deadline and any(not s.error and not acked <= s.seen for s in stats):
        await asyncio.sleep(0.05)
    for protocol in protocols:
        protocol.close()

    measured_from = first_seq + warm
    lags = sorted(
        lag
        for s in stats
        for lag, seq in zip(s.lags, s.lag_seqs, strict=True)
        if seq >= measured_from
    )
    gaps = [len(acked - s.seen) for s in stats]
    return {
        "clients": args.clients,
        "client_errors": errors + [s.error for s in stats if s.error and s.error not in errors],
        "published": warm + count,
        "publish_rate": (count - 1) / sending if count > 1 else float("nan"),
        "acked": len(acked),
        "publish_failed": publisher.failed,
        "publish_late": publisher.late,
        "ack_p50_ms": percentile(sorted(publisher.ack_ms), 50),
        "ack_p99_ms": percentile(sorted(publisher.ack_ms), 99),
        "samples": len(lags),
        "p50_ms": percentile(lags, 50) * 1000,
        "p99_ms": percentile(lags, 99) * 1000,
        "max_ms": (lags[-1] if lags else float("nan")) * 1000,
        "gaps_total": sum(gaps),
        "clients_with_gaps": sum(1 for g in gaps if g),
        "duplicates": sum(s.duplicates for s in stats),
        "lagged_frames": sum(s.lagged_frames for s in stats),
        "server_cpu": cpu_server / wall,
        "server_cpu_ms_per_event": cpu_server / count * 1000,
        "client_cpu": cpu_own / wall,
    }


# --- the run -----------------------------------------------------------------------------------


def make_servers(workdir: Path) -> tuple[Server, Server]:
    aman_dir, anchor_dir = workdir / "aman", workdir / "anchor"
    aman_dir.mkdir()
    anchor_dir.mkdir()

    def aman_cmd(port: int) -> list[str]:
        return aman_serve(port, aman_dir / "runtime", TOKEN, "--log-level", "warning")

    def anchor_cmd(port: int) -> list[str]:
        return [
            sys.executable,
            str(HERE / "sse_quart.py"),
            "--bind",
            f"{HOST}:{port}",
            "--token",
            TOKEN,
        ]

    return Server("aman", aman_cmd, aman_dir), Server("minimal Quart SSE", anchor_cmd, anchor_dir)


async def measure(
    aman: Server, anchor: Server, args: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    contenders = [
        ("aman", aman, "/events/push", args.delivery),
        ("anchor", anchor, "/publish", None),
    ]
    results: dict[str, list[dict[str, Any]]] = {"aman": [], "anchor": []}
    seq = 0
    for r in range(args.rounds):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for name, server, path, delivery in order:
            result = await one_round(server, path, delivery, args, seq)
            seq += result["published"]
            results[name].append(result)
        print(
            f"  round {r + 1}/{args.rounds}: "
            + ", ".join(
                f"{name} p50 {results[name][-1]['p50_ms']:.1f} ms p99"
                f" {results[name][-1]['p99_ms']:.1f} ms gaps {results[name][-1]['gaps_total']}"
                f" (server CPU {results[name][-1]['server_cpu']:.0%},"
                f" client CPU {results[name][-1]['client_cpu']:.0%})"
                for name, *_ in contenders
            ),
            flush=True,
        )
        for name, *_ in contenders:
            last = results[name][-1]
            if last["client_errors"]:
                print(
                    f"warning: {name}: client errors {last['client_errors'][:3]}", file=sys.stderr
                )
            if last["publish_failed"]:
                print(
                    f"warning: {name}: {last['publish_failed']} publishes failed", file=sys.stderr
                )
    return results


def report(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    def med(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in results[name]))

    def total(name: str, key: str) -> int:
        return int(sum(r[key] for r in results[name]))

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    p99_a, p99_b = med("aman", "p99_ms"), med("anchor", "p99_ms")
    rows = [
        ("", "minimal Quart", "aman", "aman vs anchor", "target", "result"),
        (
            "lag p50 (ms)",
            f"{med('anchor', 'p50_ms'):.1f}",
            f"{med('aman', 'p50_ms'):.1f}",
            f"{med('aman', 'p50_ms') / med('anchor', 'p50_ms'):.2f} x",
            "-",
            "-",
        ),
        (
            "lag p99 (ms)",
            f"{p99_b:.1f}",
            f"{p99_a:.1f}",
            f"{p99_a / p99_b:.2f} x",
            f"<= {TARGET_P99:.1f} x",
            verdict(p99_a / p99_b <= TARGET_P99),
        ),
        (
            "lag max (ms)",
            f"{med('anchor', 'max_ms'):.1f}",
            f"{med('aman', 'max_ms'):.1f}",
            "",
            "-",
            "-",
        ),
        (
            "gaps (missing events, all clients)",
            str(total("anchor", "gaps_total")),
            str(total("aman", "gaps_total")),
            "",
            "0 for aman",
            verdict(total("aman", "gaps_total") == 0),
        ),
        (
            "clients with gaps",
            str(total("anchor", "clients_with_gaps")),
            str(total("aman", "clients_with_gaps")),
            "",
            "-",
            "-",
        ),
        (
            "duplicates / lagged frames",
            f"{total('anchor', 'duplicates')} / -",
            f"{total('aman', 'duplicates')} / {total('aman', 'lagged_frames')}",
            "",
            "-",
            "-",
        ),
        (
            "publish ack p50 / p99 (ms)",
            f"{med('anchor', 'ack_p50_ms'):.1f} / {med('anchor', 'ack_p99_ms'):.1f}",
            f"{med('aman', 'ack_p50_ms'):.1f} / {med('aman', 'ack_p99_ms'):.1f}",
            "",
            "-",
            "-",
        ),
        (
            "publish rate achieved (events/s)",
            f"{med('anchor', 'publish_rate'):.1f}",
            f"{med('aman', 'publish_rate'):.1f}",
            "",
            "-",
            "-",
        ),
        (
            "server CPU per event (ms, all clients)",
            f"{med('anchor', 'server_cpu_ms_per_event'):.2f}",
            f"{med('aman', 'server_cpu_ms_per_event'):.2f}",
            f"{med('aman', 'server_cpu_ms_per_event') / med('anchor', 'server_cpu_ms_per_event'):.2f} x",
            "-",
            "-",
        ),
        (
            "server CPU (share of a core)",
            f"{med('anchor', 'server_cpu'):.0%}",
            f"{med('aman', 'server_cpu'):.0%}",
            "",
            "-",
            "-",
        ),
        (
            "client process CPU",
            f"{med('anchor', 'client_cpu'):.0%}",
            f"{med('aman', 'client_cpu'):.0%}",
            "",
            "-",
            "-",
        ),
        (
            "lag samples per round",
            f"{med('anchor', 'samples'):,.0f}",
            f"{med('aman', 'samples'):,.0f}",
            "",
            "-",
            "-",
        ),
    ]
    return table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (A/B/A/B)")
    parser.add_argument(
        "--delivery",
        choices=["at_least_once", "at_most_once"],
        default=None,
        help="delivery of aman's pushes (default: the endpoint's, at_least_once)",
    )
    parser.add_argument("--quick", action="store_true", help="2 s rounds, 1 round")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 2.0, 1

    m = machine()
    print(f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; {m['os']}; {m['stack']}")
    print(
        f"load: {args.clients} SSE clients and a publisher at {args.rate:g} events/s in this one"
        f" process; {args.warmup:g} s warm-up + {args.duration:g} s measured per round,"
        f" {args.rounds} rounds per server, alternating; aman delivery:"
        f" {args.delivery or 'at_least_once (default)'}"
    )
    before = loadavg()
    busy = busy_fraction()
    print(f"load average before: {before}; CPU busy over 1 s: {busy:.0%}")
    if busy > 0.2:
        print("warning: the machine is not idle; figures will be noisy", file=sys.stderr)

    foreign = ForeignCpu()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aman-bench-sse-") as tmp:
        aman, anchor = make_servers(Path(tmp))
        servers = [aman, anchor]
        try:
            for server in servers:
                server.start()
            results = asyncio.run(measure(aman, anchor, args))
        except Exception:
            for server in servers:
                print(f"--- {server.name} log ---\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            for server in servers:
                server.stop()
    wall = time.perf_counter() - began
    other = foreign.seconds()
    report_foreign(other, wall)
    client_cpu = max(r["client_cpu"] for rs in results.values() for r in rs)
    if client_cpu > 0.85:
        print(
            f"warning: the client process used up to {client_cpu:.0%} of a core: it may bound"
            " the figures",
            file=sys.stderr,
        )
    print()
    for line in report(results):
        print(line)
    if args.json:
        raw = {"machine": m, "settings": vars(args) | {"json": str(args.json)}, "results": results}
        args.json.write_text(json.dumps(raw, indent=2, default=str) + "\n")
        print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
