"""Installing a small plugin over HTTP, and refusing a gzip bomb, side by side with an anchor.

Both servers run on the same Hypercorn, the same interpreter and the same machine, in one run:

- **aman**: ``aman serve --token T`` (all built-in plugins, temporary runtime directory). A small
  plugin made by ``aman plugin new`` + ``aman plugin pack`` is installed with
  ``POST /plugin/install`` (raw body, ``Content-Type: application/gzip``) and removed with
  ``POST /plugin/{name}/uninstall``, ``--cycles`` times; only the install request is timed.
- **bare upload** (the anchor, ``bench/bare_upload.py``, served like ``bench/bare_quart.py``):
  ``POST /upload`` reads the same bytes and extracts them with ``tarfile`` alone
  (``extractall(tmp, filter="data")`` into a fresh temporary directory, then removed).

The uploads alternate A/B, one uncounted warm-up of each first. Figures: median and p95 of the
request time; target: aman's median at most 2 x the anchor's.

Gzip bombs (aman only; refused with 400, time to the answer and the server's ``VmRSS`` /
``VmHWM`` before and after, from ``/proc/<pid>/status``):

- **one 1 GiB member** of zeros (its header alone exceeds ``plugins.max_member_bytes``);
- **64 members of 16 MiB** of zeros (each within ``plugins.max_member_bytes``; the stream must be
  cut after ``plugins.max_unpacked_bytes``, 64 MiB by default, of output).

Each is about 1 MiB compressed and built without holding the zeros in memory (one compressed
gzip member of zeros, repeated: a multi-member gzip stream is a valid ``.tar.gz``). As a
reference for the second, the time to gunzip 64 MiB of the same bytes in this process.

This is a report, not a gate: it prints PASS/FAIL per target and exits 0.

Usage (from the repository root, with aman installed in the running interpreter)::

    python bench/plugin_install.py            # about 20 s on 2 cores
    python bench/plugin_install.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from http_overhead import (
    HERE,
    HOST,
    ForeignCpu,
    Server,
    aman_command,
    aman_serve,
    busy_fraction,
    loadavg,
    machine,
    proc_status,
    report_foreign,
)

TOKEN = "bench-0f3c9a7e5d1b4c2a"
PLUGIN = "bench-hello"
TARGET_RATIO = 2.0  # aman install median <= 2 x upload + tarfile extract
MiB = 1024 * 1024
GiB = 1024 * MiB


# --- archives ------------------------------------------------------------------------------


def build_plugin(workdir: Path) -> bytes:
    """The archive of a fresh ``aman plugin new`` scaffold, packed by ``aman plugin pack``."""
    subprocess.run(
        [*aman_command(), "plugin", "new", PLUGIN, "--dir", str(workdir)],
        check=True,
        capture_output=True,
    )
    return pack_plugin(workdir / PLUGIN, workdir / f"{PLUGIN}.tar.gz")


def pack_plugin(plugin_dir: Path, out: Path) -> bytes:
    """The archive of the plugin folder ``plugin_dir`` (the one holding ``plugin.toml``), packed
    by ``aman plugin pack`` into ``out``."""
    subprocess.run(
        [*aman_command(), "plugin", "pack", str(plugin_dir), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def _zeros_gz(size: int, chunk: int = 4 * MiB) -> bytes:
    """``size`` zero bytes as one gzip member, compressed chunk by chunk."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    block = bytes(chunk)
    parts = [comp.compress(block) for _ in range(size // chunk)]
    parts.append(comp.compress(bytes(size % chunk)))
    parts.append(comp.flush())
    return b"".join(parts)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def build_bomb(members: int, member_size: int) -> bytes:
    """A ``.tar.gz`` of ``members`` files of ``member_size`` zeros each (``member_size`` a
    multiple of 512), as concatenated gzip members; the zeros are compressed once."""
    assert member_size % 512 == 0
    zeros = _zeros_gz(member_size)
    parts = [_gz(_header("bomb/plugin.toml", 0))]
    for i in range(members):
        parts.append(_gz(_header(f"bomb/zeros-{i:03d}.bin", member_size)))
        parts.append(zeros)
    parts.append(_gz(bytes(1024)))  # end-of-archive blocks
    return b"".join(parts)


# --- measuring -----------------------------------------------------------------------------


def proc_mem(pid: int) -> dict[str, int]:
    status = proc_status(pid)
    return {"VmRSS": status["VmRSS"], "VmHWM": status["VmHWM"]}


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def install_cycle(client: httpx.Client, port: int, archive: bytes) -> float:
    base = f"http://{HOST}:{port}"
    t0 = time.perf_counter()
    resp = client.post(
        f"{base}/plugin/install", content=archive, headers={"Content-Type": "application/gzip"}
    )
    elapsed = time.perf_counter() - t0
    body = resp.json()
    if resp.status_code != 200 or body.get("plugin_name") != PLUGIN:
        raise RuntimeError(f"install answered {resp.status_code}: {body}")
    resp = client.post(f"{base}/plugin/{PLUGIN}/uninstall")
    if resp.status_code != 200:
        raise RuntimeError(f"uninstall answered {resp.status_code}: {resp.text}")
    return elapsed


def upload(client: httpx.Client, port: int, archive: bytes) -> float:
    t0 = time.perf_counter()
    resp = client.post(
        f"http://{HOST}:{port}/upload",
        content=archive,
        headers={"Content-Type": "application/gzip"},
    )
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        raise RuntimeError(f"upload answered {resp.status_code}: {resp.text}")
    return elapsed


def bomb(client: httpx.Client, server: Server, data: bytes) -> dict[str, Any]:
    assert server.proc is not None
    before = proc_mem(server.proc.pid)
    t0 = time.perf_counter()
    resp = client.post(
        f"http://{HOST}:{server.port}/plugin/install",
        content=data,
        headers={"Content-Type": "application/gzip"},
    )
    elapsed = time.perf_counter() - t0
    after = proc_mem(server.proc.pid)
    try:
        error = resp.json().get("error", resp.text)
    except ValueError:
        error = resp.text
    return {
        "status": resp.status_code,
        "ms": elapsed * 1000,
        "error": str(error)[:120],
        "compressed": len(data),
        "before": before,
        "after": after,
    }


def gunzip_ms(data: bytes, limit: int) -> float:
    """Reference: gunzip ``limit`` bytes of ``data`` in this process, in 64 KiB reads."""
    t0 = time.perf_counter()
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
        done = 0
        while done < limit and (chunk := gz.read(65536)):
            done += len(chunk)
    return (time.perf_counter() - t0) * 1000


# --- the run -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aman plugin install vs upload + tarfile")
    parser.add_argument("--cycles", type=int, default=20, help="measured uploads per server")
    parser.add_argument("--quick", action="store_true", help="5 cycles")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.cycles = 5

    m = machine()
    print(f"machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; {m['os']}; {m['stack']}")
    busy = busy_fraction()
    print(f"load average before: {loadavg()}; CPU busy over 1 s: {busy:.0%}")
    foreign = ForeignCpu()
    began = time.perf_counter()
    results: dict[str, Any] = {"machine": m, "cycles": args.cycles}

    with tempfile.TemporaryDirectory(prefix="aman-bench-") as tmp:
        workdir = Path(tmp)
        archive = build_plugin(workdir)
        bomb_one = build_bomb(1, GiB)
        bomb_many = build_bomb(64, 16 * MiB)
        print(
            f"plugin archive: {len(archive)} bytes; bombs: {len(bomb_one)} and"
            f" {len(bomb_many)} bytes compressed, 1 GiB each unpacked"
        )
        for name in ("aman", "bare"):
            (workdir / name).mkdir()
        aman = Server(
            "aman",
            lambda port: aman_serve(port, workdir / "aman" / "runtime", TOKEN),
            workdir / "aman",
        )
        bare = Server(
            "bare upload",
            lambda port: [
                sys.executable,
                str(HERE / "bare_upload.py"),
                "--bind",
                f"{HOST}:{port}",
                "--token",
                TOKEN,
            ],
            workdir / "bare",
        )
        servers = [aman, bare]
        times: dict[str, list[float]] = {"aman": [], "bare": []}
        try:
            for server in servers:
                server.start()
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(headers=headers, timeout=120) as client:
                install_cycle(client, aman.port, archive)  # warm-up, uncounted
                upload(client, bare.port, archive)
                for i in range(args.cycles):
                    if i % 2 == 0:
                        times["aman"].append(install_cycle(client, aman.port, archive))
                        times["bare"].append(upload(client, bare.port, archive))
                    else:
                        times["bare"].append(upload(client, bare.port, archive))
                        times["aman"].append(install_cycle(client, aman.port, archive))
                assert aman.proc is not None
                results["idle_mem_kib"] = proc_mem(aman.proc.pid)
                results["bombs"] = {
                    "one 1 GiB member": bomb(client, aman, bomb_one),
                    "64 x 16 MiB members": bomb(client, aman, bomb_many),
                }
                # the server still works after the bombs
                results["after_bombs_ms"] = install_cycle(client, aman.port, archive) * 1000
        except Exception:
            for server in servers:
                print(f"--- {server.name} log ---\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            for server in servers:
                server.stop()
        results["gunzip_64MiB_ms"] = gunzip_ms(bomb_many, 64 * MiB)

    wall = time.perf_counter() - began
    other = foreign.seconds()
    report_foreign(other, wall)

    a_ms = [t * 1000 for t in times["aman"]]
    b_ms = [t * 1000 for t in times["bare"]]
    a50, b50 = statistics.median(a_ms), statistics.median(b_ms)
    ratio = a50 / b50
    results.update(aman_ms=a_ms, bare_ms=b_ms, ratio=ratio, other_cpu_sec=other, wall_sec=wall)
    print()
    print(f"install of a {len(archive)}-byte plugin, {args.cycles} uploads each, alternating:")
    print(f"  {'':22} {'median ms':>10} {'p95 ms':>8} {'min ms':>8}")
    print(f"  {'bare upload + tarfile':22} {b50:10.2f} {pct(b_ms, 95):8.2f} {min(b_ms):8.2f}")
    print(f"  {'aman /plugin/install':22} {a50:10.2f} {pct(a_ms, 95):8.2f} {min(a_ms):8.2f}")
    print(
        f"  ratio {ratio:.2f} x (target <= {TARGET_RATIO:.0f} x):"
        f" {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}"
    )
    print()
    print("gzip bombs posted to aman (1 GiB of zeros each; plugins.max_unpacked_bytes = 64 MiB):")
    print(
        f"  reference: gunzip of 64 MiB of the second bomb in-process:"
        f" {results['gunzip_64MiB_ms']:.0f} ms"
    )
    idle = results["idle_mem_kib"]
    print(
        f"  server before the bombs: VmRSS {idle['VmRSS'] / 1024:.1f} MiB,"
        f" VmHWM {idle['VmHWM'] / 1024:.1f} MiB"
    )
    for name, b in results["bombs"].items():
        ok = b["status"] == 400
        print(
            f"  {name:20} {b['compressed'] / MiB:.2f} MiB: {b['status']} in {b['ms']:.0f} ms;"
            f" VmRSS {b['before']['VmRSS'] / 1024:.1f} -> {b['after']['VmRSS'] / 1024:.1f} MiB,"
            f" VmHWM {b['before']['VmHWM'] / 1024:.1f} -> {b['after']['VmHWM'] / 1024:.1f} MiB"
            f" ({'PASS' if ok else 'FAIL'}: refused with 400)"
        )
        print(f"  {'':20} error: {b['error']}")
    print(f"  install after the bombs: {results['after_bombs_ms']:.1f} ms (server still serves)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
