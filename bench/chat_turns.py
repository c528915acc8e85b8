"""Chat turns through the runtime with the ``echo`` provider, measured against the provider alone.

Issue 6: "With the ``echo`` provider: 50 concurrent sessions each sending 20 messages; report
turns/s, p95 time to first chunk on ``/events/stream``, and the runtime's added latency over the
provider's own (target: at most 10 ms p95 added per turn)."

What runs, in one invocation:

- **aman**: ``aman serve --token T --config aman.toml`` (every built-in plugin, SQLite store in a
  temporary runtime directory, the default ``echo`` provider and the default agent ``aman``). The
  ``aman.toml`` sets ``[agents.aman] queue_max_size`` to ``max(64, --sessions)``: the runtime runs
  one turn at a time per agent (http-api §11.3) and the default queue of 5 waiting turns would
  answer most of 50 concurrent sends with ``409 agent aman queue is full``; a user who expects 50
  sessions at once on one agent configures the queue the same way.
- **The client** (this process, one event loop): one ``httpx.AsyncClient`` per session (one
  keep-alive connection each, as separate users would have; a single client's shared connection
  pool was itself the bottleneck at 50 concurrent requests: about 45 turns/s against about 100
  with a client per session or raw sockets, in a side experiment with 50 agents) for the chat API
  (http-api §11.5), and one ``GET /events/stream`` connection with the token, filtered to
  ``types=agent:reply_stream_start,agent:reply_chunk,agent:reply_ready`` (§23). Frames are
  matched to the turn in flight by ``payload.session_id`` (a session sends its next message only
  after the reply, so it has at most one turn in flight; the stream events' ``message_id`` is not
  the reply message's id, §5.2). Times are ``time.perf_counter()`` in this process: *send* is
  taken just before the ``POST /chat/session/{id}/send`` request, *first chunk* and *ready* when
  the stream frame has been read.
- **The anchor** (the provider's own latency, same process, same run): the echo provider built
  directly (``builtin_plugins.llm_echo.EchoProvider`` from an ``sdk.ProviderConfig``), timed over
  ``stream(LlmRequest(...))`` to the last piece, for the same messages as each measured turn (a
  system prompt — the agent's, from ``GET /soul/system-prompt`` — then the session's user and
  assistant messages up to the turn's user message), after each pass.

Passes:

1. **Warm-up**: ``--warmup`` (10) turns on a session of their own, not counted.
2. **Sequential** (the target): one session, ``--sequential`` (200) turns one after another, so
   no turn ever waits behind another. Per turn, *added latency* = send→ready through the runtime
   minus the provider's own time for that turn. Target: p95 added ≤ 10 ms. For reference, the
   same number of ``GET /health/live`` round trips through the same kind of client is timed
   first (the client's floor: what any request costs before the runtime does anything), and the
   medians of the first and last tenth of the turns show how a turn's cost grows with the
   session's length.
3. **Concurrent** (the issue's load): ``--sessions`` (50) sessions created up front, each sending
   ``--messages`` (20) messages one after another (send, wait for its ``agent:reply_ready``,
   send the next), all sessions at once. Reported: turns/s (completed turns ÷ wall time from the
   first send to the last reply), p50/p95/p99 send→first chunk and send→ready. With one agent
   these include the wait in the agent's queue (up to ``sessions − 1`` turns ahead), so they are
   not "added latency per turn"; they are reported, not judged.

The output also gives the server's and this client's CPU use per pass (the server's CPU per turn
bounds turns/s), and, as the other benchmarks do, the load average and how much CPU other
processes used. ``--profile PATH`` runs the server under ``cProfile`` (written to PATH when it
stops; slower, for finding where a turn's time goes; the main thread only).

This is a report, not a gate: it prints PASS/FAIL against the target and exits 0.

Usage (from the repository root, with aman installed in the running interpreter)::

    python bench/chat_turns.py                 # about 40 s on 2 cores
    python bench/chat_turns.py --quick         # smoke run: 10 sessions x 5 messages, 50 sequential
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from http_overhead import (
    HOST,
    ForeignCpu,
    Server,
    aman_command,
    aman_serve,
    busy_fraction,
    loadavg,
    machine,
    report_foreign,
    table,
)
from sse_lag import own_cpu, percentile, proc_cpu

from builtin_plugins.llm_echo import EchoProvider
from sdk import ChatMessage, LlmRequest, ProviderConfig

TOKEN = "bench-0f3c9a7e5d1b4c2a"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
AGENT = "aman"
STREAM_TYPES = ("agent:reply_stream_start", "agent:reply_chunk", "agent:reply_ready")
TARGET_ADDED_P95_MS = 10.0  # sequential turns: send->ready minus the provider's own time, p95
QUEUE_MAX_SIZE = 64
TURN_TIMEOUT_SEC = 60.0
FALLBACK_PROMPT = "You are a helpful assistant."  # the turn's prompt without a soul (§12)
NAN = float("nan")


# --- one turn --------------------------------------------------------------------------------


@dataclass
class Turn:
    """One message and its reply; times are ``perf_counter()`` seconds, NaN until seen."""

    session_id: str
    text: str
    history: list[ChatMessage]  # the session's messages (shared), this turn's user message last
    position: int  # len(history) right after this turn's user message
    sent: float = NAN
    answered: float = NAN  # the send's HTTP answer
    started: float = NAN  # agent:reply_stream_start
    first_chunk: float = NAN  # first agent:reply_chunk
    ready: float = NAN  # agent:reply_ready
    queued: bool = False  # the send said the turn waits behind another
    reply: str = ""
    provider_ms: float = NAN
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def ms(self, attr: str) -> float:
        """Milliseconds from the send to ``attr``."""
        return (getattr(self, attr) - self.sent) * 1000

    @property
    def index(self) -> int:
        """The turn's place in its session, from 0."""
        return (self.position - 1) // 2

    @property
    def added_ms(self) -> float:
        return self.ms("ready") - self.provider_ms


class Stream:
    """The one ``/events/stream`` connection: marks the turn in flight of each session."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self.inflight: dict[str, Turn] = {}
        self.lagged = 0  # frames the server dropped for this client (``lagged`` frames)
        self.stray = 0  # frames of a session with no turn in flight
        self.connected = asyncio.Event()

    async def run(self) -> None:
        params = {"types": ",".join(STREAM_TYPES)}
        async with self._client.stream("GET", "/events/stream", params=params) as response:
            response.raise_for_status()
            self.connected.set()
            name, data = "", ""
            async for line in response.aiter_lines():
                if not line:
                    self._frame(name, data)
                    name, data = "", ""
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()

    def _frame(self, name: str, data: str) -> None:
        now = time.perf_counter()
        if name == "lagged":
            self.lagged += int(json.loads(data)["dropped"])
        if name != "event:processed":
            return
        event = json.loads(data)
        payload = event["payload"]
        turn = self.inflight.get(payload.get("session_id"))
        if turn is None:
            self.stray += 1
            return
        kind = event["event_type"]
        if kind == "agent:reply_stream_start" and math.isnan(turn.started):
            turn.started = now
        elif kind == "agent:reply_chunk" and math.isnan(turn.first_chunk):
            turn.first_chunk = now
        elif kind == "agent:reply_ready":
            turn.ready, turn.reply = now, payload["reply"]
            del self.inflight[turn.session_id]
            turn.done.set()


@dataclass
class Chat:
    """The chat API of one server, seen from this process; every user (session) has a client
    of its own."""

    base: str
    stream: Stream
    queue_full: int = 0  # 409 "queue is full" answers (the send is retried)
    lost: int = 0  # turns whose reply_ready never came within TURN_TIMEOUT_SEC

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, headers=HEADERS, timeout=30.0)

    @staticmethod
    async def create(client: httpx.AsyncClient) -> str:
        response = await client.post("/chat/session/create", json={})
        response.raise_for_status()
        return str(response.json()["id"])

    @staticmethod
    async def round_trips(client: httpx.AsyncClient, count: int) -> list[float]:
        """Milliseconds of ``count`` ``GET /health/live`` one after another: what a trivial
        request costs through this client, the floor under every send."""
        times = []
        for _ in range(count):
            began = time.perf_counter()
            (await client.get("/health/live")).raise_for_status()
            times.append((time.perf_counter() - began) * 1000)
        return sorted(times)

    @staticmethod
    async def system_prompt(client: httpx.AsyncClient) -> str:
        response = await client.get("/soul/system-prompt", params={"agent_id": AGENT})
        if response.status_code == 404:
            return FALLBACK_PROMPT
        response.raise_for_status()
        return str(response.json()["system_prompt"])

    async def turn(
        self, client: httpx.AsyncClient, session_id: str, text: str, history: list[ChatMessage]
    ) -> Turn:
        """Send ``text`` and wait for its reply on the stream (http-api §11.5 send, §23)."""
        history.append(ChatMessage(role="user", content=text))
        turn = Turn(session_id, text, history, len(history))
        self.stream.inflight[session_id] = turn
        turn.sent = time.perf_counter()
        while True:
            response = await client.post(f"/chat/session/{session_id}/send", json={"text": text})
            if response.status_code == 409 and "queue is full" in response.text:
                self.queue_full += 1
                await asyncio.sleep(0.01)
                continue
            if response.status_code != 200:
                raise RuntimeError(f"send answered {response.status_code}: {response.text}")
            break
        turn.answered = time.perf_counter()
        turn.queued = bool(response.json()["queued"])
        try:
            await asyncio.wait_for(turn.done.wait(), TURN_TIMEOUT_SEC)
        except TimeoutError:
            self.lost += 1
            self.stream.inflight.pop(session_id, None)
        history.append(ChatMessage(role="assistant", content=turn.reply))
        return turn

    async def session(
        self, client: httpx.AsyncClient, session_id: str, texts: Sequence[str]
    ) -> list[Turn]:
        history: list[ChatMessage] = []
        return [await self.turn(client, session_id, text, history) for text in texts]


def texts(session: int, count: int) -> list[str]:
    """The messages of one session: distinct, 8 words, so the echo reply streams as 9 chunks."""
    return [f"hello from session {session} message {m} of {count}" for m in range(1, count + 1)]


# --- the anchor: the echo provider alone -------------------------------------------------------


async def provider_times(turns: Sequence[Turn], prompt: str) -> int:
    """Time the echo provider alone, to its last piece, on each turn's messages; answer how
    many of the runtime's replies differ from the provider's."""
    mismatches = 0
    provider = EchoProvider(ProviderConfig(name="echo", type="echo", model="echo"))
    system = ChatMessage(role="system", content=prompt)
    for turn in turns:
        request = LlmRequest(
            model="echo", messages=[system, *turn.history[: turn.position]], max_tokens=4096
        )
        began = time.perf_counter()
        pieces = [delta.text async for delta in provider.stream(request)]
        turn.provider_ms = (time.perf_counter() - began) * 1000
        mismatches += "".join(pieces) != turn.reply
    return mismatches


# --- the passes ------------------------------------------------------------------------------


@dataclass
class Pass:
    """One pass's turns and what it cost."""

    name: str
    sessions: int
    messages: int
    turns: list[Turn]
    wall_sec: float
    server_cpu_sec: float
    client_cpu_sec: float
    queue_full: int
    lost: int
    mismatches: int = 0  # replies that differ from the provider's own
    floor_ms: list[float] = field(default_factory=list)  # GET /health/live round trips

    def complete(self) -> list[Turn]:
        return [t for t in self.turns if not math.isnan(t.ready)]

    def values(self, figure: str) -> list[float]:
        turns = self.complete()
        if figure == "added":
            return sorted(t.added_ms for t in turns)
        if figure == "provider":
            return sorted(t.provider_ms * 1000 for t in turns)  # microseconds
        return sorted(t.ms(figure) for t in turns)

    def by_position(self, tenth: int) -> dict[str, float]:
        """Medians over the ``tenth``-th tenth (0-9) of every session's turns: the cost of a
        turn as the session grows."""
        size = max(1, self.messages // 10)
        turns = [t for t in self.complete() if tenth * size <= t.index < (tenth + 1) * size]
        return {
            "ready": percentile(sorted(t.ms("ready") for t in turns), 50),
            "context": percentile(sorted((t.first_chunk - t.started) * 1000 for t in turns), 50),
        }

    def summary(self) -> dict[str, Any]:
        done = len(self.complete())
        figures = ("answered", "started", "first_chunk", "ready", "provider", "added")
        return {
            "sessions": self.sessions,
            "messages": self.messages,
            "turns_completed": done,
            "turns_lost": self.lost,
            "queue_full_answers": self.queue_full,
            "reply_mismatches": self.mismatches,
            "queued_sends": sum(t.queued for t in self.turns),
            "wall_sec": self.wall_sec,
            "turns_per_sec": done / self.wall_sec,
            "server_cpu_ms_per_turn": self.server_cpu_sec / max(1, done) * 1000,
            "server_cpu_share": self.server_cpu_sec / self.wall_sec,
            "client_cpu_share": self.client_cpu_sec / self.wall_sec,
            **{f"floor_p{p}": percentile(self.floor_ms, p) for p in (50, 95, 99, 100)},
            "first_tenth_p50": self.by_position(0),
            "last_tenth_p50": self.by_position(9),
            **{
                f"{figure}_p{p}": percentile(self.values(figure), p)
                for figure in figures
                for p in (50, 95, 99, 100)
            },
        }


async def run_pass(
    chat: Chat, server: Server, name: str, sessions: int, messages: int, prompt: str
) -> Pass:
    """``sessions`` sessions (created first, each by its own client, not timed) each sending
    ``messages`` messages in turn, all sessions at once; then the provider alone on every turn's
    messages."""
    assert server.proc is not None
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(chat.client()) for _ in range(sessions)]
        ids = [await chat.create(client) for client in clients]
        queue_full, lost = chat.queue_full, chat.lost
        cpu_server, cpu_own, began = proc_cpu(server.proc.pid), own_cpu(), time.perf_counter()
        per_session = await asyncio.gather(
            *(
                chat.session(client, sid, texts(k, messages))
                for k, (client, sid) in enumerate(zip(clients, ids, strict=True))
            )
        )
        wall = time.perf_counter() - began
    result = Pass(
        name=name,
        sessions=sessions,
        messages=messages,
        turns=[t for turns in per_session for t in turns],
        wall_sec=wall,
        server_cpu_sec=proc_cpu(server.proc.pid) - cpu_server,
        client_cpu_sec=own_cpu() - cpu_own,
        queue_full=chat.queue_full - queue_full,
        lost=chat.lost - lost,
    )
    result.mismatches = await provider_times(result.complete(), prompt)
    return result


async def measure(server: Server, args: argparse.Namespace) -> list[Pass]:
    base = f"http://{HOST}:{server.port}"
    timeout = httpx.Timeout(30.0, read=None)  # the stream waits as long as it takes
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=timeout) as events:
        stream = Stream(events)
        reader = asyncio.get_running_loop().create_task(stream.run())
        connected = asyncio.get_running_loop().create_task(stream.connected.wait())
        await asyncio.wait([reader, connected], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not stream.connected.is_set():
            connected.cancel()
            await reader  # raises why it could not connect
            raise RuntimeError("the event stream did not connect within 30 s")
        chat = Chat(base, stream)
        try:
            async with chat.client() as client:
                prompt = await chat.system_prompt(client)
                floor = await chat.round_trips(client, args.sequential)
            await run_pass(chat, server, "warm-up", 1, args.warmup, prompt)
            print(f"  sequential: 1 session, {args.sequential} turns ...", flush=True)
            sequential = await run_pass(chat, server, "sequential", 1, args.sequential, prompt)
            print(
                f"  concurrent: {args.sessions} sessions x {args.messages} messages ...", flush=True
            )
            concurrent = await run_pass(
                chat, server, "concurrent", args.sessions, args.messages, prompt
            )
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if stream.lagged or stream.stray:
            print(
                f"warning: the stream dropped {stream.lagged} frames (lagged) and carried"
                f" {stream.stray} frames of no turn in flight",
                file=sys.stderr,
            )
        sequential.floor_ms = floor
        return [sequential, concurrent]


# --- the report ------------------------------------------------------------------------------


def report(sequential: Pass, concurrent: Pass, queue_max_size: int) -> list[str]:
    seq, con = sequential.summary(), concurrent.summary()

    def row(label: str, s: dict[str, Any], figure: str, unit: str = "ms") -> tuple[str, ...]:
        fmt = "{:.0f}" if unit == "us" else "{:.2f}"
        cells = [fmt.format(s[f"{figure}_p{p}"]) for p in (50, 95, 99, 100)]
        return (f"{label} ({unit})", *cells)

    added = seq["added_p95"]
    verdict = "PASS" if added <= TARGET_ADDED_P95_MS else "FAIL"
    head = ("", "p50", "p95", "p99", "max")
    lines = [
        f"# sequential: 1 session, {seq['turns_completed']} turns one at a time (no queueing)",
        *table(
            [
                head,
                row("send answered (HTTP 200)", seq, "answered"),
                row("send -> reply_stream_start", seq, "started"),
                row("send -> first chunk", seq, "first_chunk"),
                row("send -> reply_ready", seq, "ready"),
                row("echo provider alone (anchor)", seq, "provider", "us"),
                row("added = ready - provider", seq, "added"),
                row("GET /health/live, same client (floor)", seq, "floor"),
            ]
        ),
        f"turns/s {seq['turns_per_sec']:.1f}; server CPU {seq['server_cpu_ms_per_turn']:.2f} ms"
        f" per turn ({seq['server_cpu_share']:.0%} of a core); client CPU"
        f" {seq['client_cpu_share']:.0%} of a core",
        f"as the session grows (medians, first vs last tenth of its turns): send -> reply_ready"
        f" {seq['first_tenth_p50']['ready']:.2f} -> {seq['last_tenth_p50']['ready']:.2f} ms;"
        f" reply_stream_start -> first chunk {seq['first_tenth_p50']['context']:.2f} ->"
        f" {seq['last_tenth_p50']['context']:.2f} ms",
        f"target p95 added <= {TARGET_ADDED_P95_MS:g} ms per turn: {verdict} ({added:.2f} ms)",
        "",
        f"# concurrent: {con['sessions']} sessions x {con['messages']} messages, all at once, one"
        f" agent (queue_max_size {queue_max_size}): times include the wait in the agent's queue",
        *table(
            [
                head,
                row("send answered (HTTP 200)", con, "answered"),
                row("send -> first chunk", con, "first_chunk"),
                row("send -> reply_ready", con, "ready"),
                row("echo provider alone (anchor)", con, "provider", "us"),
                row("ready - provider (incl. queue)", con, "added"),
            ]
        ),
        f"turns/s {con['turns_per_sec']:.1f} ({con['turns_completed']} turns in"
        f" {con['wall_sec']:.2f} s); server CPU {con['server_cpu_ms_per_turn']:.2f} ms per turn"
        f" ({con['server_cpu_share']:.0%} of a core); client CPU {con['client_cpu_share']:.0%} of"
        f" a core",
        f"sends answered queued: {con['queued_sends']} of {len(concurrent.turns)}; 409 queue"
        f" full: {con['queue_full_answers']}; turns lost: {con['turns_lost']}; replies not the"
        f" provider's: {seq['reply_mismatches'] + con['reply_mismatches']}",
    ]
    return lines


# --- the run ---------------------------------------------------------------------------------


def make_server(
    workdir: Path, queue_max_size: int, profile: Path | None, synchronous: str
) -> Server:
    """``aman serve`` in ``workdir`` (so no caller's ./aman.toml), with a config that gives the
    agent room for every session's turn (http-api §11.3)."""
    config = workdir / "aman.toml"
    config.write_text(
        f'[storage]\nsynchronous = "{synchronous}"\n\n'
        f"[agents.{AGENT}]\nqueue_max_size = {queue_max_size}\n"
    )
    launcher = (
        [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "kernel.cli"]
        if profile
        else aman_command()
    )

    def command(port: int) -> list[str]:
        return aman_serve(
            port,
            workdir / "runtime",
            TOKEN,
            "--config",
            str(config),
            "--log-level",
            "warning",
            launcher=launcher,
        )

    return Server("aman", command, workdir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=50, help="concurrent sessions")
    parser.add_argument("--messages", type=int, default=20, help="messages per session")
    parser.add_argument("--sequential", type=int, default=200, help="turns of the sequential pass")
    parser.add_argument("--warmup", type=int, default=10, help="uncounted turns first")
    parser.add_argument(
        "--quick", action="store_true", help="10 sessions x 5 messages, 50 sequential turns"
    )
    parser.add_argument("--profile", type=Path, help="run the server under cProfile, to PATH")
    parser.add_argument(
        "--synchronous",
        choices=("full", "normal"),
        default="full",
        help="storage.synchronous of the server (full, the default, fsyncs every commit)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.messages, args.sequential, args.warmup = 10, 5, 50, 5
    queue_max_size = min(1000, max(QUEUE_MAX_SIZE, args.sessions))

    m = machine()
    print(f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; {m['os']}; {m['stack']}")
    print(
        f"load: aman serve with the echo provider, one agent ({AGENT}, queue_max_size"
        f" {queue_max_size}), storage.synchronous = {args.synchronous}; client in this process (an httpx client per session, one"
        " /events/stream); anchor: the echo provider alone, in this process"
    )
    if importlib.util.find_spec("sniffio") is None:
        print(
            "note: sniffio is not installed, so httpcore tries to import it again on every request"
            " (encode/httpcore#1103): the client's floor below is higher than it could be"
        )
    busy = busy_fraction()
    print(f"load average before: {loadavg()}; CPU busy over 1 s: {busy:.0%}")
    if busy > 0.2:
        print("warning: the machine is not idle; figures will be noisy", file=sys.stderr)

    foreign = ForeignCpu()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aman-bench-chat-") as tmp:
        server = make_server(Path(tmp), queue_max_size, args.profile, args.synchronous)
        try:
            server.start()
            sequential, concurrent = asyncio.run(measure(server, args))
        except Exception:
            print(f"--- {server.name} log ---\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    wall = time.perf_counter() - began
    report_foreign(foreign.seconds(), wall)
    if args.profile:
        print(f"cProfile of the server: {args.profile}")
    print()
    for line in report(sequential, concurrent, queue_max_size):
        print(line)
    if args.json:
        raw = {
            "machine": m,
            "settings": vars(args) | {"queue_max_size": queue_max_size},
            "results": {
                p.name: {
                    "summary": p.summary(),
                    "turns_ms": [
                        {
                            "session": t.session_id,
                            "index": t.index,
                            "answered": t.ms("answered"),
                            "started": t.ms("started"),
                            "first_chunk": t.ms("first_chunk"),
                            "ready": t.ms("ready"),
                            "provider": t.provider_ms,
                            "queued": t.queued,
                        }
                        for t in p.turns
                    ],
                }
                for p in (sequential, concurrent)
            },
        }
        args.json.write_text(json.dumps(raw, indent=2, default=str) + "\n")
        print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
