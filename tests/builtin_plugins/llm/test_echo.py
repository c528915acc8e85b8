"""The ``echo`` provider: deterministic, offline, one piece per word (http-api §11.3 "The echo
provider")."""

from __future__ import annotations

import pytest

from builtin_plugins.llm_echo import EchoProvider
from sdk import ChatMessage, Delta, LlmRequest, ProviderConfig, ToolCall

ECHO = EchoProvider(ProviderConfig(name="echo", type="echo", model="echo"))


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


async def reply(*messages: ChatMessage) -> list[Delta]:
    return [d async for d in ECHO.stream(LlmRequest(model="echo", messages=messages))]


async def test_one_piece_per_word_with_its_whitespace():
    deltas = await reply(
        ChatMessage(role="system", content="be kind"),
        user("first"),
        ChatMessage(role="assistant", content="echo: first"),
        user("hello   big\nworld "),
    )
    assert deltas == [
        Delta(text="echo: "),
        Delta(text="hello   "),
        Delta(text="big\n"),
        Delta(text="world ", finish_reason="stop"),
    ]


async def test_an_empty_message_is_one_piece():
    assert await reply(user("")) == [Delta(text="echo: ", finish_reason="stop")]


async def test_echo_tool_asks_for_the_call_then_reports_its_result():
    command = user('/echo-tool http_get {"url": "http://example.com", "n": 1}')
    call = ToolCall(
        id="echo-call-1", name="http_get", arguments={"url": "http://example.com", "n": 1}
    )
    assert await reply(command) == [Delta(tool_calls=(call,), finish_reason="tool_calls")]

    deltas = await reply(
        command,
        ChatMessage(role="assistant", content="", tool_calls=(call,)),
        ChatMessage(role="tool", content='{"status":200}', tool_call_id=call.id, name=call.name),
    )
    assert "".join(d.text for d in deltas) == 'echo: tool http_get returned {"status":200}'
    assert [d.finish_reason for d in deltas] == [None] * 4 + ["stop"]


async def test_a_tool_result_before_the_newest_message_does_not_count():
    call = ToolCall(id="echo-call-1", name="clock")
    deltas = await reply(
        user("/echo-tool clock {}"),
        ChatMessage(role="assistant", content="", tool_calls=(call,)),
        ChatMessage(role="tool", content="12:00", tool_call_id=call.id),
        ChatMessage(role="assistant", content="echo: tool clock returned 12:00"),
        user("/echo-tool clock {}"),
    )
    assert deltas == [Delta(tool_calls=(call,), finish_reason="tool_calls")]


@pytest.mark.parametrize(
    "text", ["/echo-tool clock {not json", "/echo-tool clock [1]", "/echo-tool clock"]
)
async def test_a_bad_echo_tool_command_is_echoed(text):
    deltas = await reply(user(text))
    assert "".join(d.text for d in deltas) == f"echo: {text}"
    assert deltas[-1].finish_reason == "stop" and not deltas[-1].tool_calls
