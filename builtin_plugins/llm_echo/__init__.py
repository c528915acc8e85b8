"""LLM echo: the offline, deterministic provider type echo, the default (D15; http-api §11.3
"The echo provider").

The reply is ``echo: <newest user message>``, streamed one word (with its following whitespace)
per piece. ``/echo-tool <tool name> <JSON object>`` first asks for that one tool call, then, once
the conversation holds its result, replies ``echo: tool <name> returned <result>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from sdk import (
    ChatMessage,
    Delta,
    LlmRequest,
    PluginContext,
    ProviderConfig,
    ProviderType,
    ToolCall,
    hookimpl,
)

__all__ = ["CALL_ID", "EchoProvider", "words"]

#: The id of the one tool call an ``/echo-tool`` message asks for.
CALL_ID = "echo-call-1"
_ECHO_TOOL = re.compile(r"/echo-tool\s+(\S+)\s+(.+)", re.DOTALL)


@hookimpl
def register_llm_providers(ctx: PluginContext) -> list[ProviderType]:
    return [ProviderType(type="echo", factory=EchoProvider, default_model="echo")]


class EchoProvider:
    """Answers without a network or a key, so the runtime works anywhere."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    async def probe(self) -> None:
        """Always able to serve."""

    async def stream(self, request: LlmRequest) -> AsyncIterator[Delta]:
        """The echo reply to ``request`` (http-api §11.3)."""
        messages = request.messages
        newest = _newest_user(messages)
        content = messages[newest].content if newest is not None else ""
        call = _tool_call(content)
        if call is None:
            reply = f"echo: {content}"
        else:
            result = _tool_result(messages[newest + 1 :]) if newest is not None else None
            if result is None:
                yield Delta(tool_calls=(call,), finish_reason="tool_calls")
                return
            reply = f"echo: tool {call.name} returned {result}"
        pieces = words(reply)
        for piece in pieces[:-1]:
            yield Delta(text=piece)
        yield Delta(text=pieces[-1], finish_reason="stop")


def words(text: str) -> list[str]:
    """``text`` cut after the whitespace that follows each word (never an empty list)."""
    return re.findall(r"\s*\S+\s*", text) or [text]


def _newest_user(messages: Sequence[ChatMessage]) -> int | None:
    return next((i for i in reversed(range(len(messages))) if messages[i].role == "user"), None)


def _tool_call(content: str) -> ToolCall | None:
    """The call ``/echo-tool <name> <JSON object>`` asks for; None for any other text."""
    match = _ECHO_TOOL.fullmatch(content.strip())
    if match is None:
        return None
    try:
        arguments: Any = json.loads(match[2])
    except ValueError:
        return None
    if not isinstance(arguments, Mapping):
        return None
    return ToolCall(id=CALL_ID, name=match[1], arguments=arguments)


def _tool_result(after: Sequence[ChatMessage]) -> str | None:
    """The content of the newest ``tool`` message after the user's message, if any."""
    return next((m.content for m in reversed(after) if m.role == "tool"), None)
