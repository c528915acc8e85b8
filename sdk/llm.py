"""LLM providers: the request a turn sends, the pieces a provider streams back, and the ``llm``
plugin's service that every caller goes through (formats §1.4, http-api §11.3, D15).

A provider type (``register_llm_providers``) builds providers from a :class:`~sdk.ProviderConfig`.
A provider implements :class:`Provider`: ``probe()`` and ``stream(request)``. Callers do not use
providers directly; they call ``ctx.stash[LLM].stream(provider_name, request)``, which retries
transient errors and keeps the backend's health.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, Protocol

from attrs import field, frozen

from .models import StashKey

__all__ = [
    "LLM",
    "ChatMessage",
    "Delta",
    "Llm",
    "LlmError",
    "LlmRequest",
    "Provider",
    "ToolCall",
    "ToolSpec",
]

Role = Literal["system", "user", "assistant", "tool"]


@frozen(kw_only=True)
class ToolCall:
    """One tool call the model asked for. ``arguments`` is the parsed JSON object (``{}`` when
    the model sent none); ``id`` is the provider's call id (or one the provider made up)."""

    id: str
    name: str
    arguments: Mapping[str, Any] = field(factory=dict)


@frozen(kw_only=True)
class ChatMessage:
    """One message of the conversation sent to the model (OpenAI chat-completions shape).

    ``tool_calls`` only on assistant messages that asked for tools; ``tool_call_id`` and
    ``name`` only on ``tool`` messages (the result of that call).
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@frozen(kw_only=True)
class ToolSpec:
    """A tool as the model sees it: name, description and the JSON Schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(factory=lambda: {"type": "object", "properties": {}})


@frozen(kw_only=True)
class LlmRequest:
    """One model call: the model name, the messages oldest first, the tools it may call."""

    model: str
    messages: Sequence[ChatMessage]
    tools: Sequence[ToolSpec] = ()
    max_tokens: int = 4096
    temperature: float | None = None


@frozen(kw_only=True)
class Delta:
    """A piece of a streamed reply: some ``text``; the last piece carries the complete
    ``tool_calls`` (if any) and the ``finish_reason`` (``stop``, ``tool_calls``, ``length``)."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


class LlmError(Exception):
    """A provider call failed. ``transient`` errors (timeouts, connection errors, HTTP 429 and
    5xx) are retried by :class:`Llm`; others fail the turn at once. ``status`` is the HTTP
    status when there was one."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


class Provider(Protocol):
    """What a provider type's factory builds. Building one should be cheap (no connection yet).
    A provider that holds resources (an HTTP client) may also define ``async aclose()``: the
    ``llm`` plugin calls it when it stops, for the current and the replaced providers."""

    async def probe(self) -> None:
        """Raise :class:`LlmError` when the backend cannot serve requests now."""
        ...

    def stream(self, request: LlmRequest) -> AsyncIterator[Delta]:
        """Stream the reply to ``request``; raise :class:`LlmError` on failure (also mid-stream).
        Closing the iterator early must release the connection."""
        ...


class Llm(Protocol):
    """The ``llm`` plugin's service under :data:`LLM`: the configured providers by name."""

    def names(self) -> list[str]:
        """The configured provider names (``echo`` always among them unless redefined)."""
        ...

    def model(self, provider: str) -> str:
        """The model of a configured provider; :class:`KeyError` when it is not configured."""
        ...

    def unavailable(self, provider: str) -> str | None:
        """Why ``provider`` cannot be used now (not configured, its type's plugin is disabled),
        or ``None`` when it can."""
        ...

    def stream(self, provider: str, request: LlmRequest) -> AsyncIterator[Delta]:
        """Stream a reply through ``provider``. Transient errors before the first piece are
        retried up to the provider's ``max_retries`` attempts, with delays of 1, 3, 9, 27 s
        (×3, capped at 120 s); every attempt counts in the backend's health. Raises
        :class:`LlmError` when it gives up or the error is not transient."""
        ...


#: The ``llm`` plugin puts its :class:`Llm` here while it runs.
LLM: StashKey[Llm] = StashKey()
