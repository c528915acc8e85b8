"""Chat sessions end to end with the offline ``echo`` provider (http-api §11)."""

from __future__ import annotations

import asyncio
import json

import pytest

from sdk.testing import Recorder, wait_for


async def answer(resp):
    return resp.status_code, await resp.get_json()


@pytest.fixture(name="chat")
async def _chat(make_kernel, serve_kernel, tmp_path):
    recorder = Recorder()
    kernel = make_kernel(recorder, settings={"tools.workspace_dir": str(tmp_path / "ws")})
    client = await serve_kernel(kernel)
    return client, recorder


async def create(client, **body) -> dict:
    status, out = await answer(await client.post("/chat/session/create", json=body))
    assert status == 200, out
    return out


async def settled(client, sid: str, state: str = "IDLE", replies: int = 1) -> dict:
    """Poll the session until it is in ``state`` with ``replies`` assistant messages."""
    for _ in range(2000):
        got = await (await client.get(f"/chat/session/{sid}/state")).get_json()
        if got["state"] == state and sum(m["role"] == "assistant" for m in got["messages"]) >= replies:
            return got
        await asyncio.sleep(0.005)
    pytest.fail(f"session {sid} did not settle: {got}")


async def send(client, sid: str, text: str, **extra) -> dict:
    status, out = await answer(
        await client.post(f"/chat/session/{sid}/send", json={"text": text, **extra}))
    assert status == 200, out
    return out


async def test_a_turn_streams_and_stores_the_reply(chat):
    client, recorder = chat
    session = await create(client)
    assert (session["state"], session["version"], session["agent_id"]) == ("ACTIVE", 0, "aman")
    sent = await send(client, session["id"], "hello big world")
    assert (sent["version"], sent["queued"]) == (1, False)
    state = await settled(client, session["id"])
    roles = [(m["role"], m["content"]) for m in state["messages"]]
    assert roles == [("user", "hello big world"), ("assistant", "echo: hello big world")]
    assert state["message_count"] == 2 and state["version"] == 1
    await wait_for(lambda: recorder.of_type("agent:reply_ready"))
    chunks = [e.payload["delta"] for e in recorder.of_type("agent:reply_chunk")]
    assert chunks == ["echo: ", "hello ", "big ", "world"]
    ready = recorder.of_type("agent:reply_ready")[0]
    assert ready.payload["reply"] == "echo: hello big world"
    assert ready.payload["message_id"] == state["messages"][1]["id"]
    assert state["messages"][1]["event_id"] == ready.id
    assert state["messages"][0]["event_id"] == sent["event_id"]
    def moves():
        return [(e.payload["from_state"], e.payload["to_state"])
                for e in recorder.of_type("workflow_state_changed")
                if e.payload["instance_id"] == session["id"]]

    await wait_for(lambda: len(moves()) == 2)
    assert moves() == [("ACTIVE", "PROCESSING"), ("PROCESSING", "IDLE")]
    async def types():
        got = await (await client.get(f"/chat/session/{session['id']}/state")).get_json()
        return [e["event_type"] for e in got["events"]]

    # The raw events are recorded behind the bus: they follow the reply by a loop turn or two.
    for _ in range(200):
        if "agent:reply_ready" in await types():
            break
        await asyncio.sleep(0.005)
    seen = await types()
    assert "message_received" in seen and "agent:reply_ready" in seen
    assert "agent:reply_chunk" not in seen


async def test_send_errors(chat):
    client, _ = chat
    session = await create(client)
    sid = session["id"]
    assert await answer(await client.post("/chat/session/nope/send", json={"text": "x"})) == (
        404, {"error": "session not found: nope"})
    assert await answer(await client.post(f"/chat/session/{sid}/send", json={"text": "  "})) == (
        400, {"error": "text must not be empty"})
    assert await answer(await client.post(
        f"/chat/session/{sid}/send", json={"text": "x" * 100_001})) == (
        400, {"error": "text is too long (max 100000 characters)"})
    assert await answer(await client.post(
        f"/chat/session/{sid}/send", json={"text": "hi", "expected_version": 3})) == (
        409, {"error": "version conflict: expected 3, got 0"})
    status, out = await answer(await client.post(
        f"/chat/session/{sid}/send", json={"text": "please rm -rf the box"}))
    assert (status, out) == (400, {"error": "Message blocked: matched shell_injection_rm"})
    history = await (await client.get(f"/chat/session/{sid}/history")).get_json()
    assert history["messages"] == []


async def test_edit_regenerates_the_reply(chat):
    client, recorder = chat
    sid = (await create(client))["id"]
    await send(client, sid, "first question")
    state = await settled(client, sid)
    user = state["messages"][0]
    status, out = await answer(await client.post(
        f"/chat/session/{sid}/edit", json={"message_id": user["id"], "new_text": "second try"}))
    assert (status, out) == (200, {"ok": True, "version": 2, "regenerating": True})
    state = await settled(client, sid)
    await wait_for(lambda: len(recorder.of_type("agent:reply_ready")) == 2)
    assert [(m["role"], m["content"]) for m in state["messages"]] == [
        ("user", "second try"), ("assistant", "echo: second try")]
    assert state["messages"][0]["edited_at_ms"] is not None
    assert recorder.of_type("MESSAGE_EDITED")[0].payload["message_id"] == user["id"]


async def test_a_risky_tool_call_waits_for_approval(chat, tmp_path):
    client, recorder = chat
    sid = (await create(client))["id"]
    args = json.dumps({"path": "note.txt", "content": "hi"})
    await send(client, sid, f"/echo-tool write {args}")
    await wait_for(lambda: recorder.of_type("tool_auth_required"), timeout=10)
    pending = await (await client.get("/tool-auth/pending")).get_json()
    [item] = pending["items"]
    assert (item["tool"], item["session_id"]) == ("write", sid)
    status, out = await answer(await client.post(
        "/tool-auth/respond", json={"auth_id": item["auth_id"], "approved": True}))
    assert status == 200, out
    state = await settled(client, sid)
    assert (tmp_path / "ws" / "note.txt").read_text() == "hi"
    roles = [m["role"] for m in state["messages"]]
    assert roles == ["user", "tool", "assistant"]
    assert state["messages"][1]["tool_name"] == "write"
    assert state["messages"][2]["content"].startswith("echo: tool write returned {")


async def test_sessions_survive_a_restart(make_kernel, serve_kernel, tmp_path):
    runtime = tmp_path / "rt"
    client = await serve_kernel(make_kernel(runtime_dir=runtime))
    sid = (await create(client))["id"]
    await send(client, sid, "remember me")
    await settled(client, sid)
    client2 = await serve_kernel(make_kernel(runtime_dir=runtime))
    state = await (await client2.get(f"/chat/session/{sid}/state")).get_json()
    assert [m["content"] for m in state["messages"]] == ["remember me", "echo: remember me"]
    sessions = await (await client2.get("/chat/sessions")).get_json()
    assert [s["id"] for s in sessions["items"]] == [sid]
