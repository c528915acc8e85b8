"""LLM openai: the provider type ``openai``, any OpenAI-compatible chat-completions server
(OpenAI, Ollama, vLLM, llama.cpp server), streaming with tool calls (D15; formats §1.4).

A request posts ``<base_url>/chat/completions`` with ``stream: true`` and reads the ``data:``
lines until ``[DONE]``; text pieces are yielded as they arrive, tool calls are accumulated by
``index`` and delivered complete on the last piece. Failures raise :class:`sdk.LlmError`, never
with the API key in the message; timeouts, connection errors, HTTP 429 and 5xx are transient
(http-api §11.3). The probe is ``GET <base_url>/models`` (http-api §2).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from attrs import define, field

from sdk import (
    ChatMessage,
    Delta,
    LlmError,
    LlmRequest,
    PluginContext,
    ProviderConfig,
    ProviderType,
    ToolCall,
    ToolSpec,
    hookimpl,
)

__all__ = ["OpenAIProvider", "body", "wire_message"]


@hookimpl
def register_llm_providers(ctx: PluginContext) -> list[ProviderType]:
    return [ProviderType(type="openai", factory=OpenAIProvider)]


class OpenAIProvider:
    """One configured OpenAI-compatible backend. Building it is cheap: its HTTP client is made
    on first use and kept until :meth:`aclose`."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None

    async def probe(self) -> None:
        """``GET <base_url>/models``; raise :class:`LlmError` unless it answers 2xx."""
        url = self._url("/models")
        try:
            response = await self._http().get(url, headers=self._headers("application/json"))
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, url) from None
        if not response.is_success:
            raise self._status_error(response.status_code, response.content, url)

    async def stream(self, request: LlmRequest) -> AsyncIterator[Delta]:
        """Stream the reply to ``request`` (formats §1.4); closing early closes the response."""
        url = self._url("/chat/completions")
        payload = body(request, self.config)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.stream_timeout_sec
        reply = _Reply()
        try:
            async with self._http().stream(
                "POST", url, json=payload, headers=self._headers("text/event-stream")
            ) as response:
                if not response.is_success:
                    raise self._status_error(response.status_code, await response.aread(), url)
                lines = response.aiter_lines()
                while not reply.done:
                    try:
                        async with asyncio.timeout_at(deadline):
                            line = await anext(lines, None)
                    except TimeoutError:
                        raise LlmError(
                            f"the reply from {url} took longer than stream_timeout_sec"
                            f" ({self.config.stream_timeout_sec} s)",
                            transient=True,
                        ) from None
                    if line is None:
                        break
                    text = reply.feed(line, url)
                    if text:
                        yield Delta(text=text)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, url) from None
        yield reply.last(url)

    async def aclose(self) -> None:
        """Close the HTTP client (the ``llm`` plugin calls this when it drops the provider)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- helpers ---------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.config.timeout_sec))
        return self._client

    def _url(self, path: str) -> str:
        return self.config.base_url.rstrip("/") + path

    def _headers(self, accept: str) -> httpx.Headers:
        """``accept``, the configured extra headers, and the key when there is one."""
        headers = httpx.Headers({"accept": accept})
        headers.update(self.config.headers)
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "[REDACTED]") if key else text

    def _transport_error(self, exc: httpx.HTTPError, url: str) -> LlmError:
        """Timeouts and connection errors: transient (http-api §11.3); a base_url that is not
        http(s) is not."""
        if isinstance(exc, httpx.UnsupportedProtocol):
            return LlmError(f"base_url is not an http(s) URL: {url}")
        if isinstance(exc, httpx.TimeoutException):
            what = f"no answer from {url} within timeout_sec ({self.config.timeout_sec} s)"
        elif isinstance(exc, httpx.RemoteProtocolError):
            what = f"the connection to {url} broke: {exc}"
        else:
            what = f"cannot reach {url}: {type(exc).__name__}: {exc}"
        return LlmError(self._redact(what), transient=True)

    def _status_error(self, status: int, content: bytes, url: str) -> LlmError:
        """An HTTP error answer; 429 and 5xx are transient (http-api §11.3)."""
        detail = _server_message(content)
        message = f"HTTP {status} from {url}" + (f": {detail}" if detail else "")
        transient = status == 429 or status >= 500
        return LlmError(self._redact(message), transient=transient, status=status)


@define
class _Call:
    """A tool call being accumulated from its deltas."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(factory=list)


@define
class _Reply:
    """What the ``data:`` lines of one streamed reply said so far."""

    calls: dict[int, _Call] = field(factory=dict)
    finish_reason: str | None = None
    done: bool = False

    def feed(self, line: str, url: str) -> str:
        """Take one line of the event stream; answer its text piece ("" for none)."""
        if not line.startswith("data:"):
            return ""  # blank separators, comments, event: and id: fields
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raise LlmError(f"invalid stream from {url}: not JSON: {data[:100]!r}") from None
        if isinstance(chunk, dict) and "error" in chunk:
            raise LlmError(f"error in the stream from {url}: {_message(chunk)}")
        choice = _first_choice(chunk, url)
        if choice is None:
            return ""  # a chunk without choices (usage)
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        if not isinstance(delta, dict) or not isinstance(content, str | None):
            raise LlmError(f"invalid stream from {url}: unexpected chunk {data[:100]!r}")
        for piece in delta.get("tool_calls") or ():
            self._add_call(piece, url)
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return content or ""

    def _add_call(self, piece: Any, url: str) -> None:
        function = piece.get("function") if isinstance(piece, dict) else None
        if not isinstance(function, dict) or not isinstance(piece.get("index", 0), int):
            raise LlmError(f"invalid stream from {url}: unexpected tool call {piece!r:.100}")
        call = self.calls.setdefault(piece.get("index", 0), _Call())
        call.id = piece.get("id") or call.id
        call.name = function.get("name") or call.name
        call.arguments.append(function.get("arguments") or "")

    def last(self, url: str) -> Delta:
        """The closing piece: the complete tool calls and the finish reason."""
        if not self.done and self.finish_reason is None:
            raise LlmError(
                f"the stream from {url} ended before the reply was complete", transient=True
            )
        calls = tuple(_tool_call(index, call) for index, call in sorted(self.calls.items()))
        reason = self.finish_reason or "stop"
        if calls and reason == "stop":
            reason = "tool_calls"  # servers that say "stop" after tool calls (older Ollama)
        return Delta(tool_calls=calls, finish_reason=reason)


def _first_choice(chunk: Any, url: str) -> dict[str, Any] | None:
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise LlmError(f"invalid stream from {url}: a chunk without choices: {chunk!r:.100}")
    return choices[0] if choices else None


def _tool_call(index: int, call: _Call) -> ToolCall:
    if not call.name:
        raise LlmError(f"the model sent tool call {index} without a name")
    text = "".join(call.arguments).strip() or "{}"
    try:
        arguments = json.loads(text)
    except (ValueError, RecursionError):
        arguments = None
    if not isinstance(arguments, dict):
        raise LlmError(
            f"the model sent invalid JSON arguments for tool {call.name}: {text[:100]!r}"
        )
    return ToolCall(id=call.id or f"call_{index}", name=call.name, arguments=arguments)


def _server_message(content: bytes) -> str:
    """The error message of an OpenAI-style error body, else its first 200 characters."""
    try:
        return _message(json.loads(content))
    except (ValueError, RecursionError):
        return content.decode("utf-8", "replace").strip()[:200]


def _message(data: Any) -> str:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(error if isinstance(error, str) else data)[:200]


# --- the request body ---------------------------------------------------------------------------


def body(request: LlmRequest, config: ProviderConfig) -> dict[str, Any]:
    """The JSON body of a chat-completions request (formats §1.4)."""
    payload: dict[str, Any] = {
        "model": request.model or config.model,
        "messages": [wire_message(m) for m in request.messages],
        "temperature": config.temperature if request.temperature is None else request.temperature,
        "max_tokens": request.max_tokens,
        "stream": True,
    }
    if request.tools:
        payload["tools"] = [_wire_tool(t) for t in request.tools]
        payload["tool_choice"] = "auto"
    return payload


def wire_message(message: ChatMessage) -> dict[str, Any]:
    """A message in the OpenAI format: assistant ``tool_calls``, ``tool`` with ``tool_call_id``."""
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["content"] = message.content or None
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))},
            }
            for call in message.tool_calls
        ]
    if message.role == "tool":
        wire["tool_call_id"] = message.tool_call_id
    return wire


def _wire_tool(tool: ToolSpec) -> dict[str, Any]:
    parameters: Mapping[str, Any] = tool.parameters
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(parameters),
        },
    }
