"""The ``openai`` provider type against a local OpenAI-compatible server (formats §1.4;
http-api §11.3)."""

from __future__ import annotations

import pytest

from builtin_plugins.llm_openai import OpenAIProvider
from sdk import ChatMessage, Delta, LlmError, LlmRequest, ProviderConfig, ToolCall, ToolSpec
from sdk.testing import wait_for
from sdk.testing_openai import Reply

KEY = "sk-test-0123456789abcdef"
HELLO = LlmRequest(model="m", messages=[ChatMessage(role="user", content="hello")])


@pytest.fixture(name="provider")
async def _provider(openai_server):
    """``provider(**config)``: an openai provider for the local server, closed after the test."""
    made: list[OpenAIProvider] = []

    def make(**changes) -> OpenAIProvider:
        settings = {
            "name": "oa",
            "type": "openai",
            "model": "m",
            "base_url": openai_server.base_url,
        }
        made.append(OpenAIProvider(ProviderConfig(**{**settings, **changes})))
        return made[-1]

    yield make
    for provider in made:
        await provider.aclose()


async def collect(provider, request=HELLO) -> list[Delta]:
    return [delta async for delta in provider.stream(request)]


async def failure(provider, request=HELLO) -> tuple[list[Delta], LlmError]:
    """The pieces streamed before the error, and the error."""
    seen: list[Delta] = []
    with pytest.raises(LlmError) as caught:
        async for delta in provider.stream(request):
            seen.append(delta)
    return seen, caught.value


async def test_text_is_streamed_piece_by_piece(provider, openai_server):
    openai_server.push(Reply(text="hello big  world"))
    deltas = await collect(provider())
    assert [d.text for d in deltas] == ["hello ", "big  ", "world", ""]
    assert deltas[-1] == Delta(finish_reason="stop")


async def test_the_default_reply_echoes_the_last_user_message(provider):
    deltas = await collect(provider())
    assert "".join(d.text for d in deltas) == "echo: hello"


async def test_tool_calls_are_accumulated_by_index_and_delivered_last(provider, openai_server):
    openai_server.push(
        Reply(text="let me look", tool_calls=[("search", {"q": "cats", "n": 2}), ("clock", {})])
    )
    deltas = await collect(provider())
    assert "".join(d.text for d in deltas) == "let me look"
    assert all(not d.tool_calls for d in deltas[:-1])
    assert deltas[-1] == Delta(
        tool_calls=(
            ToolCall(id="call_0", name="search", arguments={"q": "cats", "n": 2}),
            ToolCall(id="call_1", name="clock", arguments={}),
        ),
        finish_reason="tool_calls",
    )


async def test_a_server_saying_stop_after_tool_calls_still_asks_for_them(provider, openai_server):
    openai_server.push(Reply(tool_calls=[("clock", "")], finish_reason="stop"))
    deltas = await collect(provider())
    assert deltas[-1] == Delta(
        tool_calls=(ToolCall(id="call_0", name="clock"),), finish_reason="tool_calls"
    )


async def test_invalid_tool_arguments_fail_and_are_not_transient(provider, openai_server):
    openai_server.push(Reply(tool_calls=[("search", '{"q": "ca')]))
    _, error = await failure(provider())
    assert str(error) == 'the model sent invalid JSON arguments for tool search: \'{"q": "ca\''
    assert error.transient is False


async def test_tool_arguments_nested_too_deeply_fail_as_invalid_json(provider, openai_server):
    openai_server.push(Reply(tool_calls=[("search", "[" * 100_000 + "]" * 100_000)]))
    _, error = await failure(provider())
    assert str(error).startswith("the model sent invalid JSON arguments for tool search: '[[[")
    assert error.transient is False


async def test_the_request_has_the_openai_shape(provider, openai_server):
    request = LlmRequest(
        model="gpt-test",
        messages=[
            ChatMessage(role="system", content="be brief"),
            ChatMessage(role="user", content="what time is it?"),
            ChatMessage(
                role="assistant",
                content="",
                tool_calls=(ToolCall(id="c1", name="clock", arguments={"tz": "UTC"}),),
            ),
            ChatMessage(role="tool", content='{"time": "12:00"}', tool_call_id="c1", name="clock"),
        ],
        tools=[ToolSpec(name="clock", description="The time.")],
        max_tokens=123,
    )
    await collect(provider(temperature=0.3), request)
    (received,) = openai_server.requests
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what time is it?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "clock", "arguments": '{"tz": "UTC"}'},
                    }
                ],
            },
            {"role": "tool", "content": '{"time": "12:00"}', "tool_call_id": "c1"},
        ],
        "temperature": 0.3,
        "max_tokens": 123,
        "stream": True,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "clock",
                    "description": "The time.",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ],
        "tool_choice": "auto",
    }


async def test_without_tools_there_is_no_tool_choice_and_the_model_defaults(
    provider, openai_server
):
    await collect(provider(), LlmRequest(model="", messages=HELLO.messages, temperature=1.5))
    body = openai_server.requests[0].body
    assert (body["model"], body["temperature"]) == ("m", 1.5)
    assert "tools" not in body and "tool_choice" not in body


async def test_the_key_and_extra_headers_are_sent(provider, openai_server):
    await collect(provider(api_key=KEY, headers={"X-Org": "acme"}))
    headers = openai_server.requests[0].headers
    assert (headers["authorization"], headers["x-org"]) == (f"Bearer {KEY}", "acme")


async def test_no_key_no_authorization_header(provider, openai_server):
    await collect(provider(headers={"X-Org": "acme"}))
    assert "authorization" not in openai_server.requests[0].headers


async def test_a_client_error_is_not_transient_and_never_shows_the_key(provider, openai_server):
    openai_server.push(Reply(status=401, error=f"Incorrect API key provided: {KEY}"))
    _, error = await failure(provider(api_key=KEY))
    url = openai_server.base_url + "/chat/completions"
    assert str(error) == f"HTTP 401 from {url}: Incorrect API key provided: [REDACTED]"
    assert (error.transient, error.status) == (False, 401)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_rate_limits_and_server_errors_are_transient(provider, openai_server, status):
    openai_server.push(Reply(status=status, error="try later"))
    _, error = await failure(provider())
    assert (error.transient, error.status) == (True, status)
    assert str(error).endswith(": try later")


async def test_a_slow_first_byte_times_out(provider, openai_server):
    openai_server.push(Reply(text="too late", delay=3))
    _, error = await failure(provider(timeout_sec=1))
    url = openai_server.base_url + "/chat/completions"
    assert str(error) == f"no answer from {url} within timeout_sec (1 s)"
    assert error.transient is True


async def test_a_stream_longer_than_stream_timeout_fails(provider, openai_server):
    openai_server.push(Reply(text="one two three four five six", chunk_delay=0.25))
    seen, error = await failure(provider(stream_timeout_sec=1))
    assert 0 < len(seen) < 6
    assert "took longer than stream_timeout_sec (1 s)" in str(error)
    assert error.transient is True


async def test_garbage_in_the_stream_fails(provider, openai_server):
    openai_server.push(Reply(text="hi", garbage=True))
    _, error = await failure(provider())
    assert "not JSON: 'this is not JSON'" in str(error)
    assert error.transient is False


async def test_a_stream_dropped_mid_reply_fails_after_the_pieces_it_sent(provider, openai_server):
    openai_server.push(Reply(text="one two three four", drop_after=3))
    seen, error = await failure(provider())
    assert [d.text for d in seen] == ["one ", "two "]
    assert str(error).startswith(
        f"the connection to {openai_server.base_url}/chat/completions broke"
    )
    assert error.transient is True


async def test_closing_the_stream_early_closes_the_connection(provider, openai_server):
    openai_server.push(Reply(text="word " * 500, chunk_delay=0.005))
    stream = provider().stream(HELLO)
    assert (await anext(stream)).text == "word "
    await stream.aclose()
    await wait_for(lambda: openai_server.disconnects == 1)


async def test_probe_lists_the_models_with_the_key(provider, openai_server):
    await provider(api_key=KEY).probe()
    (received,) = openai_server.requests
    assert (received.method, received.path) == ("GET", "/v1/models")
    assert received.headers["authorization"] == f"Bearer {KEY}"


async def test_probe_fails_on_an_error_status(provider, openai_server):
    openai_server.models_status = 503
    with pytest.raises(LlmError) as caught:
        await provider().probe()
    assert str(caught.value) == f"HTTP 503 from {openai_server.base_url}/models: scripted"


async def test_probe_fails_when_nothing_listens(provider):
    with pytest.raises(LlmError) as caught:
        await provider(base_url="http://127.0.0.1:9/v1").probe()
    assert str(caught.value).startswith("cannot reach http://127.0.0.1:9/v1/models: ConnectError")
    assert caught.value.transient is True
