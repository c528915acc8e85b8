"""Approval of agent tool calls: ``/tool-auth/pending``, ``/tool-auth/respond`` (http-api §18.2)."""

from __future__ import annotations

import asyncio

import pytest

from sdk.testing import wait_for

GONE = {"error": "auth_id not found or already expired"}


def agent_call(env, name, args, session_id="s1"):
    """An agent's call, started as a task (the chat turn)."""
    return asyncio.create_task(
        env.tools.call(
            name, args, origin="agent", source="agent:aman", agent_id="aman", session_id=session_id
        )
    )


async def pending(env) -> list[dict]:
    status, body = await env.answer(await env.client.get("/tool-auth/pending"))
    assert status == 200
    return body["items"]


async def next_pending(env, count: int = 1) -> dict:
    """Wait until ``count`` requests are pending; the newest."""
    await wait_for(lambda: len(env.tools.approvals.pending()) == count)
    return (await pending(env))[-1]


async def respond(env, auth_id, approved, operator="alice"):
    resp = await env.client.post(
        "/tool-auth/respond",
        json={"auth_id": auth_id, "approved": approved},
        headers={"x-aman-operator": operator},
    )
    return await env.answer(resp)


async def resolved(env, count: int = 1) -> list[dict]:
    await wait_for(lambda: len(env.events("tool_auth_resolved")) == count)
    return [event.payload for event in env.events("tool_auth_resolved")]


async def test_an_approved_call_runs_end_to_end(start):
    env = await start()
    task = agent_call(env, "kit_note", {"topic": "x"})
    item = await next_pending(env)
    assert item == {
        "auth_id": item["auth_id"],
        "session_id": "s1",
        "agent_id": "aman",
        "tool": "kit_note",
        "args": '{"topic":"x"}',
        "sensitivity": "medium",
        "created_at_ms": item["created_at_ms"],
        "expires_at_ms": item["created_at_ms"] + 60_000,
    }
    assert not task.done() and env.kit.calls == []

    assert await respond(env, item["auth_id"], True) == (
        200,
        {"ok": True, "auth_id": item["auth_id"], "approved": True},
    )
    outcome = await task
    assert (outcome.ok, outcome.output) == (True, {"noted": 1})
    assert await pending(env) == []

    [required] = env.events("tool_auth_required")
    assert (required.source, required.delivery) == ("tool-auth", "at_least_once")
    assert required.payload == {k: v for k, v in item.items() if k != "created_at_ms"}
    assert await resolved(env) == [
        {"auth_id": item["auth_id"], "approved": True, "operator": "alice", "reason": "answered"}
    ]
    [record] = await env.audit("tool_auth.respond")
    assert (record["operator"], record["target"], record["outcome"], record["detail"]) == (
        "alice",
        f"tool_auth:{item['auth_id']}",
        "ok",
        "approved=true tool=kit_note",
    )


async def test_the_request_raises_one_warning_notification(start):
    env = await start()
    task = agent_call(env, "kit_note", {})
    item = await next_pending(env)

    async def notes():
        return (await env.answer(await env.client.get("/notifications?category=security")))[1]

    await wait_for(lambda: env.events("notification:created"))
    [note] = await notes()
    assert (
        note["severity"],
        note["title"],
        note["message"],
        note["action_label"],
        note["action_route"],
    ) == (
        "warning",
        "Tool approval needed",
        "aman wants to run kit_note",
        "Review",
        "/chat/s1",
    )
    await respond(env, item["auth_id"], True)
    await task


async def test_a_denied_call_gets_approval_denied_and_a_second_answer_is_404(start):
    env = await start()
    task = agent_call(env, "kit_note", {})
    item = await next_pending(env)
    assert (await respond(env, item["auth_id"], False))[0] == 200
    outcome = await task
    assert (outcome.ok, outcome.refusal, outcome.error) == (
        False,
        "approval_denied",
        "approval_denied: kit_note",
    )
    assert env.kit.calls == [] and env.events("tool:dispatched") == []
    assert await respond(env, item["auth_id"], True) == (404, GONE)
    assert await respond(env, "0192f3a6-0000-7000-8000-000000000000", True) == (404, GONE)
    assert (await resolved(env))[0]["approved"] is False
    records = await env.audit("tool_auth.respond")
    assert [(r["outcome"], r["detail"]) for r in records] == [
        ("error", GONE["error"]),
        ("error", GONE["error"]),
        ("ok", "approved=false tool=kit_note"),
    ]

    again = agent_call(env, "kit_note", {})  # a denial is not remembered
    item = await next_pending(env)
    await respond(env, item["auth_id"], True)
    assert (await again).ok


@pytest.mark.parametrize(
    "body", [{"auth_id": "x"}, {"approved": True}, {"auth_id": "x", "approved": "maybe"}]
)
async def test_respond_needs_both_fields(start, body):
    env = await start()
    resp = await env.client.post("/tool-auth/respond", json=body)
    assert resp.status_code == 400


async def test_no_answer_in_time_expires_the_request_and_the_call_does_not_run(start):
    env = await start({"security.tool_approval_timeout_sec": 1})
    task = agent_call(env, "kit_note", {})
    item = await next_pending(env)
    assert item["expires_at_ms"] == item["created_at_ms"] + 1000
    outcome = await task
    assert (outcome.ok, outcome.refusal, outcome.error) == (
        False, "approval_expired", "approval_expired: kit_note (no answer within 1 s)")
    assert await resolved(env) == [
        {"auth_id": item["auth_id"], "approved": False, "operator": "system", "reason": "timeout"}
    ]
    assert await pending(env) == []
    assert await respond(env, item["auth_id"], True) == (404, GONE)


async def test_a_medium_approval_is_cached_per_session_and_arguments(start):
    env = await start()
    first = agent_call(env, "kit_note", {"a": 1, "b": 2})
    await respond(env, (await next_pending(env))["auth_id"], True)
    assert (await first).ok

    same = await env.tools.call(  # same session, same arguments in another key order: no question
        "kit_note",
        {"b": 2, "a": 1},
        origin="agent",
        source="agent:aman",
        agent_id="aman",
        session_id="s1",
    )
    assert same.ok and len(env.events("tool_auth_required")) == 1

    for args, session_id in (({"a": 2}, "s1"), ({"a": 1, "b": 2}, "s2")):  # other args, session
        task = agent_call(env, "kit_note", args, session_id=session_id)
        item = await next_pending(env)
        await respond(env, item["auth_id"], True)
        assert (await task).ok
    await wait_for(lambda: len(env.events("tool_auth_required")) == 3)


async def test_a_high_tool_asks_every_time(start):
    env = await start()
    for _ in range(2):
        task = agent_call(env, "kit_wipe", {})
        item = await next_pending(env)
        assert item["sensitivity"] == "high"
        await respond(env, item["auth_id"], True)
        assert (await task).output == "wiped"
    await wait_for(lambda: len(env.events("tool_auth_required")) == 2)


async def test_low_tools_run_without_asking_under_sensitive(start):
    env = await start()
    outcome = await env.tools.call(
        "kit_echo", {"text": "hi"}, origin="agent", source="agent:aman", session_id="s1"
    )
    assert outcome.ok and env.tools.approvals.pending() == []


async def test_never_runs_everything_without_asking(start):
    env = await start({"security.tool_approval": "never"})
    for name in ("kit_note", "kit_wipe"):
        outcome = await env.tools.call(
            name, {}, origin="agent", source="agent:aman", session_id="s1"
        )
        assert outcome.ok
    assert env.events("tool_auth_required") == []


async def test_always_asks_even_for_low_tools_and_repeats(start):
    env = await start({"security.tool_approval": "always"})
    for _ in range(2):
        task = agent_call(env, "kit_echo", {"text": "hi"})
        item = await next_pending(env)
        assert item["sensitivity"] == "low"
        await respond(env, item["auth_id"], True)
        assert (await task).ok


async def test_cancelling_the_turn_cancels_the_request(start):
    env = await start()
    task = agent_call(env, "kit_note", {})
    item = await next_pending(env)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await resolved(env) == [
        {"auth_id": item["auth_id"], "approved": False, "operator": "system", "reason": "cancelled"}
    ]
    assert await pending(env) == [] and env.kit.calls == []
    assert await respond(env, item["auth_id"], True) == (404, GONE)


async def test_pending_args_are_redacted_and_cut(start):
    env = await start()
    args = {
        "api_key": "k1",
        "X-Api-Key": "k2",
        "password": "p",
        "headers": {"Authorization": "Bearer t"},
        "items": [{"access_token": "t"}],
        "keyword": "kept",
        "note": "n" * 3000,
    }
    task = agent_call(env, "kit_note", args)
    item = await next_pending(env)
    text = item["args"]
    assert len(text) == 2000
    assert text.startswith(
        '{"X-Api-Key":"[REDACTED]","api_key":"[REDACTED]","headers":{"Authorization":"[REDACTED]"},'
        '"items":[{"access_token":"[REDACTED]"}],"keyword":"kept","note":"nnn'
    )
    assert not any(secret in text for secret in ("k1", "k2", "Bearer", '"p"'))
    await wait_for(lambda: env.events("tool_auth_required"))
    assert env.events("tool_auth_required")[0].payload["args"] == text
    await respond(env, item["auth_id"], True)
    outcome = await task
    assert env.kit.calls[0][1] == args  # the tool gets the real arguments
    assert outcome.ok
