"""The ``http`` tool against a real HTTP server on 127.0.0.1 (http-api §18.1)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from builtin_plugins.builtin_tools.web import BODY_MAX
from sdk import ToolError


class Handler(BaseHTTPRequestHandler):
    release: threading.Event

    def do_GET(self) -> None:
        if self.path == "/json":
            self.answer(200, b'{"a": [1, 2]}', "application/json", {"X-Test": "yes"})
        elif self.path == "/deep":
            self.answer(200, b"[" * 100_000 + b"]" * 100_000, "application/json")
        elif self.path == "/latin1":
            self.answer(200, "café".encode("latin-1"), "text/plain; charset=iso-8859-1")
        elif self.path == "/big":
            self.answer(200, b"x" * (BODY_MAX + 10), "text/plain")
        elif self.path == "/redirect":
            self.answer(302, b"", "text/plain", {"Location": "/json"})
        elif self.path == "/slow":
            self.release.wait(5)  # set at teardown; the client gave up long before
        else:
            self.answer(404, b"nope", "text/plain")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        echo = {"method": self.command, "body": body, "token": self.headers.get("X-Token")}
        self.answer(201, json.dumps(echo).encode(), "application/json")

    do_PUT = do_POST

    def answer(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(name="base")
def _base() -> Iterator[str]:
    release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Handler,), {"release": release}))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()
    thread.join()


async def test_get_parses_json_and_returns_headers(run, base):
    out = await run("http", url=f"{base}/json")
    assert set(out) == {"ok", "status", "headers", "body", "json"}
    assert (out["ok"], out["status"], out["body"], out["json"]) == (
        True,
        200,
        '{"a": [1, 2]}',
        {"a": [1, 2]},
    )
    assert out["headers"]["x-test"] == "yes"
    assert out["headers"]["content-type"] == "application/json"


async def test_method_headers_and_body_are_sent(run, base):
    out = await run(
        "http", url=f"{base}/echo", method="PUT", headers={"X-Token": "t1"}, body="héllo"
    )
    assert (out["ok"], out["status"]) == (True, 201)
    assert out["json"] == {"method": "PUT", "body": "héllo", "token": "t1"}


async def test_error_status_is_not_ok_and_text_is_not_json(run, base):
    out = await run("http", url=f"{base}/missing")
    assert (out["ok"], out["status"], out["body"], out["json"]) == (False, 404, "nope", None)


async def test_json_nested_too_deeply_to_parse_is_given_as_text_only(run, base):
    out = await run("http", url=f"{base}/deep")
    assert (out["ok"], out["json"], len(out["body"])) == (True, None, 200_000)


async def test_redirects_are_followed_and_charset_is_honoured(run, base):
    assert (await run("http", url=f"{base}/redirect"))["json"] == {"a": [1, 2]}
    assert (await run("http", url=f"{base}/latin1"))["body"] == "café"


async def test_body_is_cut_at_one_mib(run, base):
    out = await run("http", url=f"{base}/big")
    assert out["body"] == "x" * BODY_MAX and BODY_MAX == 1024 * 1024
    assert out["json"] is None


async def test_timeout_and_connection_errors_are_tool_errors(run, base):
    with pytest.raises(ToolError, match=r"^http request timed out after 200 ms$"):
        await run("http", url=f"{base}/slow", timeout_ms=200)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ToolError, match=r"^http request failed: ConnectError"):
        await run("http", url=f"http://127.0.0.1:{port}/")
