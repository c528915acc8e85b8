"""HTTP/1.1 over plain sockets, for requests an HTTP client library would refuse to send or would
normalise (dot segments, whitespace around header values, malformed framing) and for clients
that misbehave on purpose (trickled heads and bodies)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Sequence
from typing import Any

from attrs import frozen

from .test_serve_bodies import parse

Header = tuple[str, str | bytes]


@frozen
class Answer:
    """A response read off a socket (named like httpx's, so that checks take either)."""

    status_code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def answer(received: bytes) -> Answer:
    """The first response in ``received`` (a body as long as its ``Content-Length``)."""
    status, fields, content = parse(received)
    length = int(fields.get("content-length", len(content)))
    return Answer(status_code=status, headers=fields, body=content[:length])


def head_bytes(
    method: str, target: str, port: int, headers: Sequence[Header] = (), *, close: bool = True
) -> bytes:
    """The request line and headers (``Host`` first, ``Connection: close`` unless told), ending
    with the blank line. Header values are sent exactly as given."""
    lines = [f"{method} {target} HTTP/1.1".encode(), f"Host: 127.0.0.1:{port}".encode()]
    if close:
        lines.append(b"Connection: close")
    for name, value in headers:
        lines.append(name.encode() + b":" + (value if isinstance(value, bytes) else value.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def exchange(
    port: int, method: str, target: str, headers: Sequence[Header] = (), body: bytes = b""
) -> Answer:
    """One request on a fresh connection (``Connection: close``)."""
    return send(port, head_bytes(method, target, port, headers) + body)


def send(port: int, data: bytes, timeout: float = 5.0) -> Answer:
    """Send ``data`` as it is on a fresh connection and read until the server closes it; the
    first response in what came back."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    assert received, f"no answer to {data[:120]!r}"
    return answer(received)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    received = b""
    while True:
        try:
            chunk = await reader.read(65536)
        except ConnectionError:
            return received
        if not chunk:
            return received
        received += chunk


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send ``data`` one byte per ``every`` seconds, until done or the server has closed."""
    for i in range(len(data)):
        try:
            writer.write(data[i : i + 1])
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)
