"""HTTP overhead of the aman kernel, measured side by side with a bare Quart app.

Both servers run on the same Hypercorn, the same interpreter and the same machine, in one run:

- **aman**: ``aman serve --token T`` (all built-in plugins, SQLite store under a temporary runtime
  directory); the request is the authenticated JSON GET ``/runtime/status``, which goes through
  the kernel's live router (route match, token check, availability, handler, JSON encoding,
  metrics) like every API call.
- **bare Quart** (the anchor, ``bench/bare_quart.py``): one Quart route that checks the same bearer
  token with ``hmac.compare_digest`` and returns the same small JSON object, served by
  ``hypercorn.asyncio.serve`` the way ``kernel/cli.py`` serves aman.

Measured:

1. **Start to ready**: wall time from spawning the process to the first ``200`` from
   ``GET /health/ready`` (polled every 5 ms), median of ``--starts`` fresh processes per server,
   started alternately. Target: aman ≤ bare + 300 ms.
2. **Idle resident memory**: ``VmRSS`` of ``/proc/<pid>/status`` one second after ready (median
   over the same starts), reported beside the anchor's (no target).
3. **Throughput and latency** under a closed-loop load on loopback keep-alive connections: the
   same concurrency and duration for both, a warm-up per server first, then ``--rounds`` runs
   alternating A/B/A/B. The load generator is ``wrk`` (1 thread) when installed, otherwise a
   pure-Python asyncio keep-alive client (heavier: it competes with the server for CPU, so its
   absolute numbers are lower; the ratios are still side by side). Targets: aman's req/s at least
   0.85 of the anchor's; aman's p99 latency at most 1.3 of the anchor's. Figures are the medians
   of the per-round values.

This is a report, not a gate: it prints a table with PASS/FAIL per target and always exits 0
(unless it cannot run at all). ``--json PATH`` also writes every raw figure.

Usage (from the repository root, with aman installed in the running interpreter)::

    python bench/http_overhead.py                 # full run, about 100 s on 2 cores
    python bench/http_overhead.py --quick         # a smoke run, about 20 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKEN = "bench-0f3c9a7e5d1b4c2a"
PATH = "/runtime/status"
HOST = "127.0.0.1"

TARGET_THROUGHPUT = 0.85  # aman req/s >= 0.85 x bare
TARGET_P99 = 1.3  # aman p99 <= 1.3 x bare
TARGET_START_MS = 300.0  # aman start-to-ready <= bare + 300 ms

WRK_SCRIPT = """
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer %(token)s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "socket_errors": %%d, "non_2xx": %%d, '
    .. '"p50_us": %%d, "p99_us": %%d, "mean_us": %%.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


# --- the two servers -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    """The servers' environment: no ``AMAN_*`` settings, and bytecode caching on, as for any
    installed program (with ``PYTHONDONTWRITEBYTECODE``, which some shells set, every start would
    compile every module of an editable install from source again)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AMAN_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def aman_serve(
    port: int, runtime_dir: Path, token: str, *extra: str, launcher: list[str] | None = None
) -> list[str]:
    """The command line of ``aman serve`` on ``HOST:port`` with its own runtime directory, as
    every benchmark starts it (``extra``: more flags; ``launcher``: instead of ``aman``)."""
    return [
        *(launcher or aman_command()),
        "serve",
        "--bind",
        f"{HOST}:{port}",
        "--token",
        token,
        "--runtime-dir",
        str(runtime_dir),
        *extra,
    ]


def aman_command() -> list[str]:
    script = Path(sys.executable).with_name("aman")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "kernel.cli"]


@dataclass
class Server:
    name: str
    command: Callable[[int], list[str]]
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path | None = None

    def spawn(self) -> float:
        """Start the process; the perf_counter time of the spawn."""
        self.port = free_port()
        self.log = self.cwd / f"{self.name.replace(' ', '-')}.log"
        started = time.perf_counter()
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                self.command(self.port),
                cwd=self.cwd,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        return started

    def wait_ready(self, started: float, deadline_sec: float = 30.0) -> float:
        """Poll ``/health/ready`` every 5 ms; seconds from spawn to the first 200."""
        assert self.proc is not None
        request = (
            f"GET /health/ready HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        )
        while time.perf_counter() - started < deadline_sec:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                    sock.sendall(request)
                    head = sock.recv(64)
                if head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} not ready within {deadline_sec} s: {self.tail()}")

    def start(self) -> float:
        return self.wait_ready(self.spawn())

    def rss_kib(self) -> int:
        assert self.proc is not None
        return proc_status(self.proc.pid)["VmRSS"]

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])


def proc_status(pid: int) -> dict[str, int]:
    """The numeric fields of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ... in KiB;
    ``Threads``, ...) by name."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        first = value.split()[:1]
        if first and first[0].isdigit():
            out[name] = int(first[0])
    return out


def make_servers(workdir: Path) -> tuple[Server, Server]:
    aman_dir = workdir / "aman"
    bare_dir = workdir / "bare"
    aman_dir.mkdir()
    bare_dir.mkdir()

    def aman_cmd(port: int) -> list[str]:
        return aman_serve(port, aman_dir / "runtime", TOKEN)

    def bare_cmd(port: int) -> list[str]:
        return [
            sys.executable,
            str(HERE / "bare_quart.py"),
            "--bind",
            f"{HOST}:{port}",
            "--token",
            TOKEN,
        ]

    # cwd is a fresh directory, so no ./aman.toml of the caller is read.
    return Server("aman", aman_cmd, aman_dir), Server("bare Quart", bare_cmd, bare_dir)


# --- load generators -----------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk_load(port: int, connections: int, seconds: float, script: Path) -> Load:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://{HOST}:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in reversed(out.splitlines()) if line.startswith("{"))
    data = json.loads(line)
    return Load(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["socket_errors"] + data["non_2xx"],
    )


async def _python_load(port: int, connections: int, seconds: float) -> Load:
    request = (
        f"GET {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return Load(len(latencies), elapsed, pct(50), pct(99), errors)


def python_load(port: int, connections: int, seconds: float) -> Load:
    return asyncio.run(_python_load(port, connections, seconds))


# --- the run -------------------------------------------------------------------------------


@dataclass
class Results:
    client: str
    machine: dict[str, str]
    settings: dict[str, object]
    start_ms: dict[str, list[float]] = field(default_factory=dict)
    idle_rss_kib: dict[str, list[int]] = field(default_factory=dict)
    loaded_rss_kib: dict[str, int] = field(default_factory=dict)
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    loadavg_before: str = ""
    busy_before: float = 0.0
    wall_sec: float = 0.0
    foreign_cpu_sec: float = 0.0
    loadavg_after: str = ""


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        versions = (
            f"Quart {version('quart')}, Hypercorn {version('hypercorn')}, aman {version('aman')}"
        )
    except PackageNotFoundError:
        versions = "?"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "stack": versions,
    }


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of CPU time not idle over ``seconds`` (from /proc/stat): is the machine quiet?"""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, IndexError, ValueError):
        return 0.0
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


class ForeignCpu:
    """CPU time used on the machine during the run by processes other than this benchmark and
    its children (servers and load generator, all reaped before :meth:`seconds`): a check that
    nothing else competed for the cores."""

    def __init__(self) -> None:
        self._busy0 = self._busy()
        self._own0 = self._own()

    @staticmethod
    def _busy() -> float:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0.0
        idle = fields[3] + fields[4]
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def seconds(self) -> float:
        return max(0.0, (self._busy() - self._busy0) - (self._own() - self._own0))


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as aligned lines, with a rule under the first (header) row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def report_foreign(other_sec: float, wall_sec: float, loadavg_after: str | None = None) -> float:
    """Print the load average and the CPU other processes used during the run (a warning when
    it was more than a tenth of a core); return that share of one core."""
    share = other_sec / wall_sec
    print(
        f"load average after: {loadavg_after or loadavg()}; other processes used"
        f" {other_sec:.1f} CPU-s in {wall_sec:.0f} s ({share:.0%} of one core)"
    )
    if share > 0.1:
        print("warning: other processes competed for the CPU; figures are noisy", file=sys.stderr)
    return share


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def measure_starts(
    servers: Sequence[Server], starts: int, idle_sec: float, results: Results
) -> None:
    for server in servers:  # one uncounted start each: page cache, bytecode, runtime dir
        server.start()
        server.stop()
    for server in servers:
        results.start_ms[server.name] = []
        results.idle_rss_kib[server.name] = []
    for i in range(starts):
        order = servers if i % 2 == 0 else list(reversed(servers))
        for server in order:
            elapsed = server.start()
            time.sleep(idle_sec)
            results.start_ms[server.name].append(round(elapsed * 1000, 1))
            results.idle_rss_kib[server.name].append(server.rss_kib())
            code = server.stop()
            if code != 0:
                print(f"warning: {server.name} exited with {code} on SIGTERM", file=sys.stderr)
        print(
            f"  start {i + 1}/{starts}: "
            + ", ".join(f"{s.name} {results.start_ms[s.name][-1]:.0f} ms" for s in servers),
            flush=True,
        )


def measure_load(
    servers: Sequence[Server],
    run: Callable[[int, float], Load],
    warmup: float,
    duration: float,
    rounds: int,
    results: Results,
) -> None:
    for server in servers:
        server.start()
    try:
        for server in servers:
            run(server.port, warmup)
            results.rounds[server.name] = []
        for i in range(rounds):
            for server in servers:  # A/B/A/B
                load = run(server.port, duration)
                results.rounds[server.name].append(
                    {
                        "rps": round(load.rps, 1),
                        "p50_ms": round(load.p50_ms, 3),
                        "p99_ms": round(load.p99_ms, 3),
                        "requests": load.requests,
                        "errors": load.errors,
                    }
                )
                if load.errors:
                    print(
                        f"warning: {server.name}: {load.errors} errors in round {i + 1}",
                        file=sys.stderr,
                    )
            print(
                f"  round {i + 1}/{rounds}: "
                + ", ".join(
                    f"{s.name} {results.rounds[s.name][-1]['rps']:.0f} req/s"
                    f" p99 {results.rounds[s.name][-1]['p99_ms']:.2f} ms"
                    for s in servers
                ),
                flush=True,
            )
        for server in servers:
            results.loaded_rss_kib[server.name] = server.rss_kib()
    finally:
        for server in servers:
            server.stop()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def report(results: Results, aman: str, bare: str) -> list[str]:
    def per_round(name: str, key: str) -> float:
        return median([r[key] for r in results.rounds[name]])

    rps_a, rps_b = per_round(aman, "rps"), per_round(bare, "rps")
    p50_a, p50_b = per_round(aman, "p50_ms"), per_round(bare, "p50_ms")
    p99_a, p99_b = per_round(aman, "p99_ms"), per_round(bare, "p99_ms")
    start_a, start_b = median(results.start_ms[aman]), median(results.start_ms[bare])
    rss_a, rss_b = (
        median(results.idle_rss_kib[aman]) / 1024,
        median(results.idle_rss_kib[bare]) / 1024,
    )
    loaded_a = results.loaded_rss_kib[aman] / 1024
    loaded_b = results.loaded_rss_kib[bare] / 1024

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    rows = [
        ("", "bare Quart", "aman", "aman vs bare", "target", "result"),
        (
            "throughput (req/s)",
            f"{rps_b:.0f}",
            f"{rps_a:.0f}",
            f"{rps_a / rps_b:.2f} x",
            f">= {TARGET_THROUGHPUT:.2f} x",
            verdict(rps_a / rps_b >= TARGET_THROUGHPUT),
        ),
        ("p50 latency (ms)", f"{p50_b:.2f}", f"{p50_a:.2f}", f"{p50_a / p50_b:.2f} x", "-", "-"),
        (
            "p99 latency (ms)",
            f"{p99_b:.2f}",
            f"{p99_a:.2f}",
            f"{p99_a / p99_b:.2f} x",
            f"<= {TARGET_P99:.2f} x",
            verdict(p99_a / p99_b <= TARGET_P99),
        ),
        (
            "start to ready (ms)",
            f"{start_b:.0f}",
            f"{start_a:.0f}",
            f"{start_a - start_b:+.0f} ms",
            f"<= +{TARGET_START_MS:.0f} ms",
            verdict(start_a - start_b <= TARGET_START_MS),
        ),
        (
            "idle RSS (MiB)",
            f"{rss_b:.1f}",
            f"{rss_a:.1f}",
            f"{rss_a / rss_b:.2f} x",
            "reported",
            "-",
        ),
        (
            "RSS after load (MiB)",
            f"{loaded_b:.1f}",
            f"{loaded_a:.1f}",
            f"{loaded_a / loaded_b:.2f} x",
            "reported",
            "-",
        ),
    ]
    return table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="aman vs bare Quart: HTTP overhead, start time, memory"
    )
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=7.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per server")
    parser.add_argument("--rounds", type=int, default=4, help="measured runs per server (A/B/A/B)")
    parser.add_argument("--starts", type=int, default=5, help="measured starts per server")
    parser.add_argument("--idle", type=float, default=1.0, help="seconds after ready before RSS")
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 round, 2 starts")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds, args.starts, args.idle = 2.0, 1.0, 1, 2, 0.5

    wrk = shutil.which("wrk")
    if args.client == "wrk" and not wrk:
        print("wrk is not installed; use --client python or install it (apt-get install wrk)")
        return 1
    use_wrk = bool(wrk) and args.client != "python"
    client = (
        f"wrk ({subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split()[1]},"
        f" 1 thread, {args.connections} connections)"
        if use_wrk
        else f"python asyncio keep-alive client ({args.connections} connections; wrk not used)"
    )

    results = Results(
        client=client,
        machine=machine(),
        settings={
            "request": f"GET {PATH} with Authorization: Bearer",
            "connections": args.connections,
            "duration_sec": args.duration,
            "warmup_sec": args.warmup,
            "rounds": args.rounds,
            "starts": args.starts,
            "idle_sec": args.idle,
        },
        loadavg_before=loadavg(),
    )
    m = results.machine
    print(f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; {m['os']}; {m['stack']}")
    print(f"client:  {client}")
    busy = busy_fraction()
    results.busy_before = round(busy, 3)
    print(f"load average before: {results.loadavg_before}; CPU busy over 1 s: {busy:.0%}")
    if busy > 0.2:
        print("warning: the machine is not idle; figures will be noisy", file=sys.stderr)

    foreign = ForeignCpu()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aman-bench-") as tmp:
        workdir = Path(tmp)
        aman, bare = make_servers(workdir)
        servers = [aman, bare]
        try:
            script = workdir / "auth.lua"
            script.write_text(WRK_SCRIPT % {"token": TOKEN})

            def run(port: int, seconds: float) -> Load:
                if use_wrk:
                    return wrk_load(port, args.connections, seconds, script)
                return python_load(port, args.connections, seconds)

            print(
                f"start to ready and idle RSS ({args.starts} starts each, alternating):", flush=True
            )
            measure_starts(servers, args.starts, args.idle, results)
            print(
                f"load: {args.warmup:g} s warm-up each, then {args.rounds} x {args.duration:g} s"
                " per server, A/B/A/B:",
                flush=True,
            )
            measure_load(servers, run, args.warmup, args.duration, args.rounds, results)
        except Exception:
            for server in servers:
                print(f"--- {server.name} log ---\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            for server in servers:
                server.stop()

    results.loadavg_after = loadavg()
    results.wall_sec = round(time.perf_counter() - began, 1)
    results.foreign_cpu_sec = round(foreign.seconds(), 1)
    report_foreign(results.foreign_cpu_sec, results.wall_sec, results.loadavg_after)
    print()
    for line in report(results, aman.name, bare.name):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2) + "\n")
        print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
