"""The ``aman`` command: ``serve`` (the server in the foreground, contract D18) and ``plugin
new | pack | install`` (authoring, ``kernel/authoring.py``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import sys
from http import HTTPStatus
from pathlib import Path

import h11
import hypercorn.protocol
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Response as StreamResponse
from hypercorn.protocol.h11 import H11Protocol

from sdk import ConfigError

from . import authoring
from .app import Kernel, KernelApp, create_app, create_kernel
from .plugins import BUILTINS
from .store import RuntimeLock

__all__ = ["main"]

log = logging.getLogger("aman")

#: A request head (request line and headers) must arrive within this many seconds of the
#: connection opening or of the previous response; the same limit closes idle keep-alive
#: connections. A client that trickles its headers is disconnected (decided here).
HEAD_TIMEOUT_SEC = 5.0
#: A request head larger than this is answered 431 (decided here).
MAX_HEAD_BYTES = 16 * 1024
_PROTOCOL_ERRORS = {
    400: "malformed HTTP request",
    431: "request header fields too large",
    501: "unsupported transfer encoding",
}


class _Http11(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol as http-api §1.1 and D4 want it.

    - HTTP/1.1 only: an ``Upgrade`` (h2c, WebSocket) and the HTTP/2 preface are not acted on; the
      request is served as plain HTTP/1.1 (RFC 9110 §7.8), so it passes the router's checks,
      the token included, like any other.
    - The errors Hypercorn answers itself, before the app sees a request (a malformed request
      line, header or chunked body, a head over ``MAX_HEAD_BYTES``), are JSON like every other
      error, not empty bodies. A request with both ``Content-Length`` and ``Transfer-Encoding``
      is one of them.
    - An answer given before the request body was read to its end (a 401, a 413) says
      ``Connection: close``: the connection cannot be reused, and a client that is not told
      would send its next request into a closing connection.
    """

    async def stream_send(self, event: StreamEvent) -> None:
        if (
            isinstance(event, StreamResponse)
            and event.status_code >= 200
            and self.connection.their_state is not h11.DONE
            and all(name.lower() != b"connection" for name, _ in event.headers)
        ):
            event = dataclasses.replace(event, headers=[*event.headers, (b"connection", b"close")])
        await super().stream_send(event)

    async def _check_protocol(self, event: h11.Request) -> None:
        """Never switch to HTTP/2 (an h2c upgrade, the prior-knowledge preface)."""

    async def _create_stream(self, request: h11.Request) -> None:
        names = {name for name, _ in request.headers}
        if {b"content-length", b"transfer-encoding"} <= names:
            # Two framings: which one ends the body is what request smuggling plays on. Refused
            # (RFC 9112 §6.3 allows it) and the connection closed.
            await self._send_error_response(400)
            await self.send(Closed())
            return
        plain = h11.Request(
            method=request.method,
            target=request.target,
            headers=[(k, v) for k, v in request.headers if k != b"upgrade"],
            http_version=request.http_version,
        )
        await super()._create_stream(plain)

    async def _send_error_response(self, status_code: int) -> None:
        message = _PROTOCOL_ERRORS.get(status_code) or HTTPStatus(status_code).phrase.lower()
        body = json.dumps({"error": message}).encode()
        headers = [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aman", description="aman: an event-driven agent runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server in the foreground")
    serve.add_argument(
        "--config", type=Path, help="aman.toml to read (default: ./aman.toml if present)"
    )
    serve.add_argument("--bind", help="HOST:PORT to listen on (http.bind)")
    serve.add_argument("--token", help="API token (http.token)")
    serve.add_argument("--runtime-dir", help="runtime directory (runtime.dir)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    plugin = commands.add_parser("plugin", help="write, pack and install plugins")
    actions = plugin.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="scaffold a plugin: manifest, module and a passing test")
    new.add_argument("name", help="the plugin's name (lowercase letters, digits and '-')")
    new.add_argument(
        "--dir", type=Path, default=Path("."), help="where to create NAME/ (default .)"
    )
    pack = actions.add_parser("pack", help="build <name>-<version>.tar.gz from a plugin folder")
    pack.add_argument("dir", type=Path, help="the folder holding plugin.toml")
    pack.add_argument("-o", "--output", type=Path, help="the archive to write")
    install = actions.add_parser("install", help="upload an archive to a running server")
    install.add_argument("file", type=Path, help="the .tar.gz archive")
    install.add_argument(
        "--url", default=os.environ.get("AMAN_URL", "http://127.0.0.1:9090"), help="server address"
    )
    install.add_argument(
        "--token", default=os.environ.get("AMAN_HTTP_TOKEN"), help="API token (AMAN_HTTP_TOKEN)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plugin":
        return plugin_command(args)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return serve(args)


def plugin_command(args: argparse.Namespace) -> int:
    """``aman plugin new | pack | install``: 0 on success, 1 with the reason on stderr."""
    try:
        if args.action == "new":
            reserved = frozenset(name for name, _, _ in BUILTINS)
            root = authoring.scaffold(args.name, args.dir, reserved=reserved)
            print(f"created {root}")
            print(f"  test:    pytest {root}")
            print(f"  pack:    aman plugin pack {root}")
        elif args.action == "pack":
            archive, digest = authoring.pack(args.dir, args.output)
            print(f"{archive} sha256={digest}")
        else:
            answer = authoring.install(args.file, args.url, args.token)
            print(json.dumps(answer, indent=2, ensure_ascii=False))
    except authoring.AuthoringError as exc:
        print(f"aman plugin {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def serve(args: argparse.Namespace) -> int:
    overrides = {
        key: value
        for key, value in (
            ("http.bind", args.bind),
            ("http.token", args.token),
            ("runtime.dir", args.runtime_dir),
        )
        if value is not None
    }
    try:
        kernel = create_kernel(config_path=args.config, settings=overrides, load_entry_points=True)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    lock = RuntimeLock(kernel.runtime_dir)
    if not lock.acquire():
        print(
            f"runtime dir {kernel.runtime_dir} is in use by another aman process", file=sys.stderr
        )
        return 2
    try:
        return asyncio.run(_serve(create_app(kernel), kernel))
    finally:
        lock.release()


async def _serve(app: KernelApp, kernel: Kernel) -> int:
    bind = kernel.config.get("http.bind")
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = HEAD_TIMEOUT_SEC
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    # No ``read_timeout``: it would also cut event streams and requests whose answer takes
    # long, as their clients send nothing meanwhile. Bodies have their own deadline (router).
    hypercorn.protocol.H11Protocol = _Http11  # type: ignore[attr-defined] # the one it builds
    # Requests still running when the server stops may finish within the drain timeout (§1.7).
    config.graceful_timeout = kernel.config.get("runtime.drain_timeout_sec")
    stop = asyncio.Event()
    exit_code = 0
    signals = 0

    async def shut_down() -> None:
        await kernel.lifecycle.shutdown()

    def on_signal() -> None:
        nonlocal exit_code, signals
        signals += 1
        if signals == 1:
            log.info("signal received: shutting down (again to skip the waits)")
            asyncio.get_running_loop().create_task(shut_down())
        else:
            kernel.lifecycle.fast = True
            exit_code = 1

    async def watch() -> None:
        nonlocal exit_code
        while kernel.boot_task is None and not kernel.lifecycle.stopped.is_set():
            await asyncio.sleep(0.01)
        if kernel.boot_task is not None:
            try:
                await kernel.boot_task
                # Everything allocated while starting lives as long as the process: move it out
                # of the collector's sight so that full collections stay short (request latency).
                gc.collect()
                gc.freeze()
            except Exception as exc:  # noqa: BLE001 - start-up failed: exit 1
                log.error("%s", exc)
                exit_code = 1
                await kernel.lifecycle.shutdown()
        await kernel.lifecycle.stopped.wait()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    watcher = loop.create_task(watch())
    log.info("aman %s listening on http://%s", kernel.version, bind)
    try:
        await hypercorn_serve(app, config, shutdown_trigger=stop.wait)
    except OSError as exc:
        print(f"cannot listen on {bind}: {exc}", file=sys.stderr)
        return 1
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
