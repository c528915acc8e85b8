"""A local OpenAI-compatible server for tests (the ``openai_server`` fixture of ``sdk.testing``).

A real HTTP/1.1 server on 127.0.0.1 (a free port) serving ``GET /v1/models`` and
``POST /v1/chat/completions`` with Server-Sent Events, the way the ``openai`` provider type talks
to OpenAI, Ollama or vLLM (formats §1.4). Each chat request takes the next scripted
:class:`Reply` (an echo of the last user message when none is queued) and is recorded, so a test
checks what a provider sent::

    async def test_reply(openai_server):
        openai_server.push(Reply(text="hello there"), Reply(status=429, error="slow down"))
        ...  # point a provider's base_url at openai_server.base_url
        assert openai_server.requests[0].body["model"] == "m"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from attrs import frozen

__all__ = ["OpenAIServer", "Received", "Reply"]


@frozen(kw_only=True)
class Reply:
    """One scripted answer to a chat-completions request.

    :param text: the reply, streamed one word (with its following whitespace) per chunk.
    :param tool_calls: ``(name, arguments)`` pairs; arguments (a mapping, or a string sent as
        is) are split across three chunks. Call ids are ``call_<index>``.
    :param status: a standard HTTP error status answers ``{"error": {"message": error}}`` instead.
    :param delay: seconds before the first byte; ``chunk_delay``: seconds before each chunk.
    :param garbage: send a data line that is not JSON after the first chunk.
    :param drop_after: close the connection after this many chunks, without ``[DONE]``.
    :param finish_reason: default ``tool_calls`` when there are tool calls, else ``stop``.
    :param hold: the stream waits for this event after its first piece of text: a reply that
        stays in progress until the test lets it go (no race against a delay).
    """

    text: str = ""
    tool_calls: Sequence[tuple[str, Mapping[str, Any] | str]] = ()
    status: int = 200
    error: str = "scripted error"
    delay: float = 0.0
    chunk_delay: float = 0.0
    garbage: bool = False
    drop_after: int | None = None
    finish_reason: str | None = None
    hold: asyncio.Event | None = None


@frozen(kw_only=True)
class Received:
    """A request the server received; header names are lower-case, ``body`` is parsed JSON."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any = None


class OpenAIServer:
    """Start with ``async with OpenAIServer() as server``; ``base_url`` is ``http://…/v1``.

    ``requests`` lists every request received; ``models_status`` is the status of
    ``GET /v1/models``; ``disconnects`` counts replies the client stopped reading early.
    """

    def __init__(self, models: Sequence[str] = ("test-model",)) -> None:
        self.models = list(models)
        self.models_status = 200
        self.requests: list[Received] = []
        self.disconnects = 0
        self._script: deque[Reply] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the server is not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def push(self, *replies: Reply) -> None:
        """Queue answers for the next chat requests, in order."""
        self._script.extend(replies)

    async def __aenter__(self) -> OpenAIServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        received: Received | None = None
        try:
            received = await _read_request(reader)
            self.requests.append(received)
            await self._answer(received, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            if received is not None:  # the client went away while we answered
                self.disconnects += 1
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, received: Received, writer: asyncio.StreamWriter) -> None:
        if (received.method, received.path) == ("GET", "/v1/models"):
            models = {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
            ok = self.models_status < 400
            await _send_json(writer, self.models_status, models if ok else _error("scripted"))
        elif (received.method, received.path) != ("POST", "/v1/chat/completions"):
            await _send_json(writer, 404, _error(f"no route {received.path}"))
        else:
            reply = self._script.popleft() if self._script else _echo(received.body)
            await asyncio.sleep(reply.delay)
            if reply.status >= 400:
                await _send_json(writer, reply.status, _error(reply.error))
            else:
                await self._stream(reply, str(received.body.get("model", "")), writer)

    async def _stream(self, reply: Reply, model: str, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, "text/event-stream", "Transfer-Encoding: chunked"))
        for count, data in enumerate(_events(reply, model)):
            if count == reply.drop_after:
                return  # the connection closes without the last chunk of the body
            await asyncio.sleep(reply.chunk_delay)
            payload = f"data: {data}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            await writer.drain()
            if count == 1 and reply.hold is not None:
                await reply.hold.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _events(reply: Reply, model: str) -> list[str]:
    """The data lines of a streamed reply, ``[DONE]`` last."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": model}
        return json.dumps({**data, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    if reply.garbage:
        events.append("this is not JSON")
    events += [chunk({"content": word}) for word in _words(reply.text)]
    for index, (name, arguments) in enumerate(reply.tool_calls):
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        head = {"index": index, "id": f"call_{index}", "type": "function"}
        events.append(
            chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
        )
        third = -(-len(text) // 3) or 1
        for start in range(0, len(text), third):
            piece = {"index": index, "function": {"arguments": text[start : start + third]}}
            events.append(chunk({"tool_calls": [piece]}))
    finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    return [*events, chunk({}, finish), "[DONE]"]


def _words(text: str) -> list[str]:
    return re.findall(r"\s*\S+\s*", text)


def _echo(body: Any) -> Reply:
    """The default answer: ``echo: <content of the last user message>``."""
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return Reply(text=f"echo: {users[-1].get('content', '') if users else ''}")


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "test_error"}}


def _head(status: int, content_type: str, extra: str) -> bytes:
    status_line = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"
    return f"{status_line}\r\nContent-Type: {content_type}\r\n{extra}\r\nConnection: close\r\n\r\n".encode()


async def _send_json(writer: asyncio.StreamWriter, status: int, data: Any) -> None:
    content = json.dumps(data).encode()
    writer.write(_head(status, "application/json", f"Content-Length: {len(content)}") + content)
    await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> Received:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    method, target, _ = head[0].split(" ", 2)
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, value in (line.split(":", 1) for line in head[1:] if line)
    )
    content = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(
        method=method,
        path=target.split("?", 1)[0],
        headers=headers,
        body=json.loads(content) if content else None,
    )
