"""Chat sessions against the local OpenAI-compatible server: tool calls, stop, close, kill,
failures and retry, queues, agents, branches, history, timeouts and crash recovery."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from builtin_plugins.chat import CHAT_SERVICE
from sdk.testing import Recorder, wait_for
from sdk.testing_openai import Reply

CONFIG = """
[llm.providers.oa]
type = "openai"
base_url = "{base_url}"
model = "test-model"
max_retries = 1

[agents.aman]
provider = "oa"
queue_max_size = {queue}

[agents.bob]
display_name = "Bob"
tools.deny = ["exec"]
"""


async def answer(resp):
    return resp.status_code, await resp.get_json()


class Env:
    def __init__(self, client, kernel, recorder, server, runtime):
        self.client, self.kernel, self.recorder, self.server = client, kernel, recorder, server
        self.runtime = runtime

    async def create(self, **body) -> str:
        status, out = await answer(await self.client.post("/chat/session/create", json=body))
        assert status == 200, out
        return out["id"]

    async def send(self, sid: str, text: str, status: int = 200) -> dict:
        got, out = await answer(
            await self.client.post(f"/chat/session/{sid}/send", json={"text": text}))
        assert got == status, out
        return out

    async def state(self, sid: str) -> dict:
        return await (await self.client.get(f"/chat/session/{sid}/state")).get_json()

    async def fall_due(self, sid: str) -> None:
        """Make the session's timeout due now (its row rewritten) and run the timeout check."""
        db = sqlite3.connect(self.runtime / "aman.db")
        with db:
            db.execute("UPDATE chat_sessions SET due_at = 1, last_active_at = 1 WHERE id = ?", (sid,))
        db.close()
        chat = self.kernel.stash[CHAT_SERVICE]
        chat.sessions.forget(sid)  # the row was rewritten behind the runtime's back
        await chat.check_timeouts()

    async def settled(self, sid: str, state: str, check=lambda s: True) -> dict:
        got: dict = {}
        for _ in range(2000):
            got = await self.state(sid)
            if got["state"] == state and check(got):
                return got
            await asyncio.sleep(0.005)
        pytest.fail(f"session {sid} did not reach {state}: {got}")


@pytest.fixture(name="env")
async def _env(make_kernel, serve_kernel, openai_server, tmp_path, request):
    queue = getattr(request, "param", 5)
    config = tmp_path / "aman.toml"
    config.write_text(CONFIG.format(base_url=openai_server.base_url, queue=queue))
    recorder = Recorder()
    runtime = tmp_path / "runtime"
    kernel = make_kernel(recorder, config_path=config, runtime_dir=runtime)
    client = await serve_kernel(kernel)
    return Env(client, kernel, recorder, openai_server, runtime)


def moves(recorder, sid: str) -> list[tuple[str, str]]:
    return [(e.payload["from_state"], e.payload["to_state"])
            for e in recorder.of_type("workflow_state_changed") if e.payload["instance_id"] == sid]


def contents(state: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in state["messages"]]


async def test_a_turn_through_the_openai_provider_with_a_tool_call(env, tmp_path):
    (env.runtime / "workspace").mkdir(parents=True, exist_ok=True)
    (env.runtime / "workspace" / "a.txt").write_text("alpha")
    env.server.push(Reply(tool_calls=[("read", {"path": "a.txt"})]), Reply(text="the file says alpha"))
    sid = await env.create()
    await env.send(sid, "what is in a.txt?")
    state = await env.settled(sid, "IDLE", lambda s: s["message_count"] == 2)
    assert [m[0] for m in contents(state)] == ["user", "tool", "assistant"]
    assert '"content":"alpha"' in state["messages"][1]["content"]
    assert state["messages"][2]["content"] == "the file says alpha"
    first, second = (r.body for r in env.server.requests if r.path.endswith("/chat/completions"))
    assert first["model"] == "test-model" and first["stream"] is True
    assert first["messages"][0]["role"] == "system"
    assert first["messages"][-1] == {"role": "user", "content": "what is in a.txt?"}
    assert "read" in {t["function"]["name"] for t in first["tools"]}
    assert first["tool_choice"] == "auto"
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "read"
    assert tool["role"] == "tool" and tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
    events = [e.event_type for e in env.recorder.seen if e.payload.get("session_id") == sid]
    assert "tool:dispatched" in events and "tool:completed" in events


async def test_a_denied_tool_is_refused_with_the_permission_text(env):
    env.server.push(Reply(tool_calls=[("exec", {"command": "true"})]), Reply(text="ok"))
    sid = await env.create(agent_id="bob")
    # bob uses the echo provider by default: drive the tool call with /echo-tool instead
    await env.send(sid, '/echo-tool exec {"command": "true"}')
    state = await env.settled(sid, "IDLE", lambda s: s["message_count"] == 2)
    assert state["messages"][1]["content"] == (
        "permission_denied: agent 'bob' is not allowed to use tool 'exec'")


async def test_stop_keeps_the_partial_reply(env):
    gate = asyncio.Event()
    env.server.push(Reply(text="one two three four five six", hold=gate))
    sid = await env.create()
    await env.send(sid, "count")
    await wait_for(lambda: env.recorder.of_type("agent:reply_chunk"), timeout=10)
    assert await answer(await env.client.post(f"/chat/session/{sid}/stop")) == (
        200, {"ok": True, "stopped": True})
    gate.set()
    state = await env.settled(sid, "IDLE")
    user, partial = state["messages"]
    assert partial["role"] == "assistant" and partial["interrupted"] is True
    assert "one two three four five six".startswith(partial["content"])
    await wait_for(lambda: env.recorder.of_type("agent:reply_interrupted"))
    assert await answer(await env.client.post(f"/chat/session/{sid}/stop")) == (
        200, {"ok": True, "stopped": False})


async def test_close_during_a_turn_and_a_new_message_reopens(env):
    gate = asyncio.Event()
    env.server.push(Reply(text="slow reply here", hold=gate))
    sid = await env.create()
    await env.send(sid, "hi")
    await wait_for(lambda: env.recorder.of_type("agent:reply_chunk"), timeout=10)
    status, out = await answer(await env.client.post(f"/chat/session/{sid}/close", json={}))
    assert (status, out["state"]) == (200, "CLOSED")
    gate.set()
    assert await answer(await env.client.post(f"/chat/session/{sid}/close", json={})) == (
        409, {"error": f"session {sid} is already closed"})
    await env.send(sid, "again")
    state = await env.settled(sid, "IDLE", lambda s: s["message_count"] == 4)
    assert contents(state)[2:] == [("user", "again"), ("assistant", "echo: again")]
    await wait_for(lambda: moves(env.recorder, sid)[-1] == ("PROCESSING", "IDLE"))
    assert moves(env.recorder, sid) == [
        ("ACTIVE", "PROCESSING"), ("PROCESSING", "CLOSED"), ("CLOSED", "IDLE"),
        ("IDLE", "PROCESSING"), ("PROCESSING", "IDLE")]
    assert state["version"] == 3


async def test_a_provider_error_puts_the_session_in_error_and_retry_recovers(env):
    env.server.push(Reply(status=400, error="bad request from test"))
    sid = await env.create()
    await env.send(sid, "hello")
    state = await env.settled(sid, "ERROR")
    assert state["messages"][-1]["role"] == "system"
    assert state["messages"][-1]["content"].startswith("The reply failed: ")
    await wait_for(lambda: env.recorder.of_type("llm_error"))
    assert env.recorder.of_type("llm_error")[0].payload["provider"] == "oa"
    status, out = await answer(await env.client.post(f"/chat/session/{sid}/retry"))
    assert (status, out) == (200, {"ok": True, "version": 2})
    state = await env.settled(sid, "IDLE", lambda s: s["message_count"] == 2)
    assert contents(state) == [("user", "hello"), ("assistant", "echo: hello")]
    await wait_for(lambda: len(moves(env.recorder, sid)) == 5)
    assert moves(env.recorder, sid) == [
        ("ACTIVE", "PROCESSING"), ("PROCESSING", "ERROR"), ("ERROR", "RETRYING"),
        ("RETRYING", "PROCESSING"), ("PROCESSING", "IDLE")]


async def test_a_stream_dropped_mid_reply_is_a_failure_not_a_stuck_session(env):
    env.server.push(Reply(text="a b c d", drop_after=2))
    sid = await env.create()
    await env.send(sid, "hi")
    state = await env.settled(sid, "ERROR")
    assert [m["role"] for m in state["messages"]] == ["user", "system"]


@pytest.mark.parametrize("env", [1], indirect=True)
async def test_a_full_queue_is_refused(env):
    gate = asyncio.Event()
    env.server.push(Reply(text="slow one", hold=gate))
    a, b, c = [await env.create() for _ in range(3)]
    await env.send(a, "first")
    await wait_for(lambda: env.recorder.of_type("agent:reply_stream_start"), timeout=10)
    assert (await env.send(b, "second"))["queued"] is True
    out = await env.send(c, "third", status=409)
    assert out == {"error": "agent aman queue is full (1 turns waiting)"}
    assert (await env.state(c))["messages"] == []
    gate.set()
    await env.settled(b, "IDLE", lambda s: s["message_count"] == 2)


async def test_kill_aborts_at_once(env):
    env.server.push(Reply(text="never finished", delay=30))
    sid = await env.create()
    await env.send(sid, "hi")
    await wait_for(lambda: env.recorder.of_type("agent:reply_stream_start"), timeout=10)
    assert await answer(await env.client.post(f"/chat/session/{sid}/kill")) == (
        200, {"ok": True, "status": "killed"})
    await env.settled(sid, "IDLE")
    agent = await (await env.client.get("/agent/aman")).get_json()
    assert (agent["status"], agent["active_session_id"]) == ("Idle", None)
    assert await answer(await env.client.post(f"/chat/session/{sid}/kill")) == (
        200, {"ok": True, "status": "no_task"})


async def test_delete_removes_everything(env):
    sid = await env.create()
    await env.send(sid, "hi")
    await env.settled(sid, "IDLE", lambda s: s["message_count"] == 2)
    assert await answer(await env.client.delete(f"/chat/session/{sid}")) == (200, {"ok": True})
    assert (await env.client.get(f"/chat/session/{sid}/state")).status_code == 404
    assert await answer(await env.client.delete(f"/chat/session/{sid}")) == (
        404, {"error": f"session not found: {sid}"})
    await wait_for(lambda: env.recorder.of_type("session:deleted"))


async def test_branch_history_and_filters(env):
    parent = await env.create(agent_id="bob")
    for text in ("one", "two"):
        await env.send(parent, text)
        await env.settled(parent, "IDLE", lambda s, t=text: s["messages"][-1]["content"] == f"echo: {t}")
    messages = (await env.state(parent))["messages"]
    branch = await env.create(session_type="branch", parent_session_id=parent,
                              branch_message_id=messages[1]["id"], agent_id="bob")
    state = await env.state(branch)
    assert contents(state) == [("user", "one"), ("assistant", "echo: one")]
    assert state["message_count"] == 2
    assert [m["id"] for m in state["messages"]] != [m["id"] for m in messages[:2]]
    assert await answer(await env.client.post("/chat/session/create", json={"session_type": "branch"})) == (
        400, {"error": "missing required field 'parent_session_id'"})
    assert await answer(await env.client.post("/chat/session/create", json={"agent_id": "zed"})) == (
        404, {"error": "agent not found: zed"})
    history = await (await env.client.get(
        f"/chat/session/{parent}/history?limit=2&before={messages[3]['id']}")).get_json()
    assert [m["content"] for m in history["messages"]] == ["echo: one", "two"]
    assert history["has_more"] is True
    listed = await (await env.client.get("/chat/sessions?agent_id=bob")).get_json()
    assert {s["id"] for s in listed["items"]} == {parent, branch}
    listed = await (await env.client.get("/chat/sessions?agent_id=aman")).get_json()
    assert listed["items"] == []


async def test_agents_status_gates_turns(env):
    agents = await (await env.client.get("/agents")).get_json()
    assert [a["descriptor"]["agent_id"] for a in agents] == ["aman", "bob"]
    bob = agents[1]
    assert bob["descriptor"]["display_name"] == "Bob" and bob["descriptor"]["denied_tools"] == ["exec"]
    assert (bob["status"], bob["system_state"], bob["pending_turns"]) == ("Idle", "ready", 0)
    assert await answer(await env.client.post("/agent/bob/status", json={"status": "Disabled"})) == (
        200, {"ok": True, "agent_id": "bob", "old_status": "Idle", "status": "Disabled"})
    sid = await env.create(agent_id="bob")
    assert await env.send(sid, "hi", status=409) == {"error": "agent bob is disabled"}
    status, out = await answer(await env.client.post("/agent/bob/status", json={"status": "Sleepy"}))
    assert (status, out) == (400, {"error": "invalid value for 'status': 'Sleepy' (expected one of: "
                                            "Disabled, Preparing, Idle, Busy, Error)"})
    assert (await env.client.post("/agent/zed/status", json={"status": "Idle"})).status_code == 404
    await env.client.post("/agent/bob/status", json={"status": "Preparing"})
    out = await env.send(sid, "held back")
    assert out["queued"] is True
    assert (await env.state(sid))["pending_turns"] == 1
    await env.client.post("/agent/bob/status", json={"status": "Idle"})
    await env.settled(sid, "IDLE", lambda s: s["message_count"] == 2)
    for _ in range(1000):  # the agent turns Idle right after the session does
        if (await (await env.client.get("/agent/bob")).get_json())["status"] == "Idle":
            break
        await asyncio.sleep(0.005)
    assert await answer(await env.client.post("/agent/bob/reload")) == (
        200, {"ok": True, "agent_id": "bob", "status": "Idle"})
    assert await answer(await env.client.post("/agent/zed/reload")) == (
        404, {"error": "agent not found in config: zed"})


async def test_the_system_prompt(env):
    status, out = await answer(await env.client.get("/soul/system-prompt?agent_id=bob"))
    assert (status, out) == (404, {"error": "no soul configured"})
    (env.runtime / "SOUL.md").write_text("# Aman\n\n## Identity\nA calm helper.\n")
    assert (await env.client.post("/soul/update", json={
        "content": "# Aman\n\n## Identity\nA calm helper.\n"})).status_code == 200
    status, out = await answer(await env.client.get("/system-prompt?agent_id=bob"))
    assert status == 200 and out["source"] == "global" and out["agent_id"] == "bob"
    prompt = out["system_prompt"]
    assert prompt.startswith("You are Aman.\nIdentity: A calm helper.\n\n")
    assert "## Available Tools\n" in prompt and "- exec:" not in prompt and "- read:" in prompt
    assert "Current date: " in prompt and prompt.endswith("Refuse requests that conflict with your boundaries.")


async def test_a_session_that_never_gets_a_message_times_out(env):
    sid = await env.create()
    db = sqlite3.connect(env.runtime / "aman.db")
    [(created, due)] = db.execute("SELECT created_at, due_at FROM chat_sessions WHERE id = ?", (sid,))
    db.close()
    assert abs(due - (created + 300_000)) < 1000  # chat.timeouts.active_sec (§11.2)
    await env.fall_due(sid)
    assert (await env.state(sid))["state"] == "TIMEOUT"


async def test_timeouts_close_an_abandoned_session(env):
    env.server.push(Reply(status=400))
    sid = await env.create()
    await env.send(sid, "hi")
    await env.settled(sid, "ERROR")
    await env.fall_due(sid)
    assert (await env.state(sid))["state"] == "CLOSED"
    await wait_for(lambda: moves(env.recorder, sid)[-1] == ("ERROR", "CLOSED"))
    [last] = [e for e in env.recorder.of_type("workflow_state_changed")
              if e.payload["to_state"] == "CLOSED"]
    assert (last.payload["event"], last.payload["reason"]) == ("ABANDON_TIMEOUT", "Timeout")


async def test_a_turn_cut_by_a_crash_ends_in_error(make_kernel, serve_kernel, tmp_path):
    runtime = tmp_path / "rt"
    client = await serve_kernel(make_kernel(runtime_dir=runtime))
    sid = (await (await client.post("/chat/session/create", json={})).get_json())["id"]
    db = sqlite3.connect(runtime / "aman.db")
    with db:
        db.execute("UPDATE chat_sessions SET state = 'PROCESSING' WHERE id = ?", (sid,))
    db.close()
    client2 = await serve_kernel(make_kernel(runtime_dir=runtime))
    state = await (await client2.get(f"/chat/session/{sid}/state")).get_json()
    assert state["state"] == "ERROR"
    assert contents(state) == [("system", "The reply was interrupted by a restart.")]


async def test_queued_turns_are_queued_again_after_a_restart(make_kernel, serve_kernel, tmp_path):
    runtime = tmp_path / "rt"
    first = make_kernel(runtime_dir=runtime)
    client = await serve_kernel(first)

    async def create(c) -> str:
        return (await (await c.post("/chat/session/create", json={})).get_json())["id"]

    async def state(c, sid: str) -> dict:
        return await (await c.get(f"/chat/session/{sid}/state")).get_json()

    sent, retried = await create(client), await create(client)
    await client.post(f"/chat/session/{retried}/send", json={"text": "first"})
    await wait_for_async(lambda: state(client, retried), lambda s: s["message_count"] == 2)
    await client.post("/agent/aman/status", json={"status": "Preparing"})
    assert (await client.post(f"/chat/session/{sent}/send", json={"text": "hello"})).status_code == 200
    assert (await client.post(f"/chat/session/{retried}/retry")).status_code == 200
    assert (await state(client, retried))["message_count"] == 1  # the reply is gone until redone
    await first.lifecycle.shutdown()

    client2 = await serve_kernel(make_kernel(runtime_dir=runtime))
    for sid, text in ((sent, "hello"), (retried, "first")):
        done = await wait_for_async(lambda sid=sid: state(client2, sid), lambda s: s["message_count"] == 2)
        user, reply = done["messages"]
        assert (user["role"], user["content"], reply["role"], done["state"]) == ("user", text, "assistant", "IDLE")


async def wait_for_async(get, check, timeout: float = 10.0):
    """Poll ``await get()`` until ``check`` holds for it; answer the last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check(got := await get()):
        assert asyncio.get_running_loop().time() < deadline, got
        await asyncio.sleep(0.005)
    return got


async def agent_status(env, agent_id: str, want: str) -> dict:
    got: dict = {}
    for _ in range(1000):
        got = await (await env.client.get(f"/agent/{agent_id}")).get_json()
        if got["status"] == want:
            return got
        await asyncio.sleep(0.005)
    pytest.fail(f"agent {agent_id} is {got.get('status')}, not {want}")


async def test_an_operator_set_status_outlives_unrelated_changes(env):
    assert (await env.client.post("/agent/bob/status", json={"status": "Error"})).status_code == 200
    resp = await env.client.post("/config/set", json={"changes": {"agents.zed.display_name": "Zed"}},
                                 headers={"x-aman-confirm": "yes"})
    assert resp.status_code == 200
    await agent_status(env, "zed", "Idle")  # the agents were refreshed from the new config
    assert (await (await env.client.get("/agent/bob")).get_json())["status"] == "Error"
    assert (await env.client.post("/agent/bob/reload")).status_code == 200  # until reloaded
    assert (await (await env.client.get("/agent/bob")).get_json())["status"] == "Idle"


async def test_agents_follow_their_provider_plugin_and_live_config(env):
    confirm = {"x-aman-confirm": "yes"}
    assert (await env.client.post("/plugin/llm-openai/disable", headers=confirm)).status_code == 200
    agent = await agent_status(env, "aman", "Error")
    assert agent["error"] == "provider type openai is not available (no enabled plugin provides it)"
    sid = await env.create()
    out = await env.send(sid, "hi", status=409)
    assert out == {"error": f"agent aman is unavailable: {agent['error']}"}
    assert (await env.client.post("/plugin/llm-openai/enable", headers=confirm)).status_code == 200
    await agent_status(env, "aman", "Idle")
    await env.send(sid, "hi")

    status, out = await answer(await env.client.post(
        "/config/set", json={"changes": {"agents.bob.display_name": "Robert"}}, headers=confirm))
    assert status == 200 and out["applied"] == ["agents.bob.display_name"], out
    for _ in range(1000):
        bob = await (await env.client.get("/agent/bob")).get_json()
        if bob["descriptor"]["display_name"] == "Robert":
            break
        await asyncio.sleep(0.005)
    assert bob["descriptor"]["display_name"] == "Robert"


async def test_the_context_keeps_the_newest_messages_within_the_budget(env):
    status, _ = await answer(await env.client.post(
        "/config/set", headers={"x-aman-confirm": "yes"},
        json={"changes": {"agents.aman.max_context_tokens": 1000,
                          "agents.aman.max_output_tokens": 16}}))
    assert status == 200
    sid = await env.create()
    for n in range(6):
        await env.send(sid, f"{n} " + "x" * 600)
        await env.settled(sid, "IDLE", lambda s, n=n: s["message_count"] == 2 * (n + 1))
    last = [r.body for r in env.server.requests if r.path.endswith("/chat/completions")][-1]
    sent = last["messages"][1:]  # after the system prompt
    assert sent[-1]["content"].startswith("5 ")
    assert 1 < len(sent) < 11  # older messages were dropped, the newest ones kept in order
    assert sum(len(m["content"]) for m in sent) / 4 <= 1000 - 16
    firsts = [m["content"].split(" ", 1)[0] for m in sent if m["role"] == "user"]
    assert firsts == sorted(firsts) and firsts[-1] == "5"


async def test_messages_from_other_producers(env):
    """http-api §11.3: a valid text and session_id, else ignored; the agent from the payload,
    else the event's address; an unknown session is created as a background session."""

    async def push(payload, **extra):
        resp = await env.client.post("/events/push", json={
            "source": "im:test", "event_type": "message_received", "payload": payload, **extra})
        assert resp.status_code == 200, await resp.get_json()

    for bad in ["bad id", "a/b", "x" * 129, 5, None]:
        await push({"text": "hi", "session_id": bad}, agent_id="bob")
    await push({"text": "", "session_id": "im-empty"}, agent_id="bob")
    await push({"text": "x" * 100_001, "session_id": "im-long"}, agent_id="bob")
    await push({"text": "hello", "session_id": "im:1.a_b-c"}, agent_id="bob")
    await wait_for(lambda: [e for e in env.recorder.of_type("agent:reply_ready")
                            if e.payload["session_id"] == "im:1.a_b-c"], timeout=10)
    state = await env.settled("im:1.a_b-c", "IDLE", lambda s: s["message_count"] == 2)
    assert (state["agent_id"], state["session_type"]) == ("bob", "background")
    assert [(m["role"], m["content"]) for m in state["messages"]] == [
        ("user", "hello"), ("assistant", "echo: hello")]
    listed = (await (await env.client.get("/chat/sessions")).get_json())["items"]
    assert [s["id"] for s in listed] == ["im:1.a_b-c"]  # the others were ignored
    records = (await (await env.client.get(
        "/audit-log?action=chat.session.create")).get_json())["items"]
    assert [(r["operator"], r["target"]) for r in records] == [("system", "session:im:1.a_b-c")]

    # The payload's agent wins over the address; a known session keeps its agent.
    await push({"text": "again", "session_id": "im:1.a_b-c", "agent_id": "bob"}, agent_id="aman")
    state = await env.settled("im:1.a_b-c", "IDLE", lambda s: s["message_count"] == 4)
    assert state["messages"][-1]["content"] == "echo: again"


async def test_a_session_has_one_turn_at_a_time(env):
    """A retry or an edit while the session's turn waits in the queue, and a send while a retry
    waits (``RETRYING``), would answer one message twice and another never: 409."""
    gate = asyncio.Event()
    env.server.push(Reply(status=400), Reply(text="slow one", hold=gate))
    failed, busy, waiting = [await env.create() for _ in range(3)]
    await env.send(failed, "fail")
    await env.settled(failed, "ERROR")
    await env.send(busy, "first")
    await wait_for(lambda: env.recorder.of_type("agent:reply_stream_start"), timeout=10)
    processing = {"error": f"session {waiting} is processing"}
    assert (await env.send(waiting, "q1"))["queued"] is True
    assert await answer(await env.client.post(f"/chat/session/{waiting}/retry")) == (409, processing)
    user = (await env.state(waiting))["messages"][0]["id"]
    assert await answer(await env.client.post(f"/chat/session/{waiting}/edit", json={
        "message_id": user, "new_text": "q2"})) == (409, processing)

    assert (await answer(await env.client.post(f"/chat/session/{failed}/retry")))[0] == 200
    assert (await env.state(failed))["state"] == "RETRYING"
    assert await env.send(failed, "meanwhile", status=409) == {
        "error": f"session {failed} is processing"}
    gate.set()

    for sid, text in [(waiting, "q1"), (failed, "fail")]:
        state = await env.settled(sid, "IDLE", lambda s: s["message_count"] == 2)
        assert [(m["role"], m["content"]) for m in state["messages"]] == [
            ("user", text), ("assistant", f"echo: {text}")]


async def test_a_turn_without_progress_is_abandoned_and_says_so(env):
    await env.client.post("/config/set", headers={"x-aman-confirm": "yes"},
                          json={"changes": {"chat.timeouts.processing_sec": 1}})
    env.server.push(Reply(text="too late", delay=30))
    sid = await env.create()
    await env.send(sid, "hi")
    state = await env.settled(sid, "IDLE", lambda s: len(s["messages"]) == 2)
    assert [(m["role"], m["content"]) for m in state["messages"]] == [
        ("user", "hi"), ("system", "The reply was abandoned: no progress for 1 s.")]
    await wait_for(lambda: moves(env.recorder, sid) == [
        ("ACTIVE", "PROCESSING"), ("PROCESSING", "TIMEOUT"), ("TIMEOUT", "IDLE")])
    env.server.push(Reply(text="in time"))
    await env.send(sid, "again")
    state = await env.settled(sid, "IDLE", lambda s: s["message_count"] == 3)
    assert state["messages"][-1]["content"] == "in time"


async def test_an_empty_reply_is_a_failure_that_retry_recovers(env):
    env.server.push(Reply(text=""))
    sid = await env.create()
    await env.send(sid, "hi")
    state = await env.settled(sid, "ERROR")
    assert [(m["role"], m["content"]) for m in state["messages"]] == [
        ("user", "hi"), ("system", "The reply failed: the model returned an empty reply")]
    assert (await answer(await env.client.post(f"/chat/session/{sid}/retry")))[0] == 200
    state = await env.settled(sid, "IDLE", lambda s: s["message_count"] == 2)
    assert state["messages"][-1]["content"] == "echo: hi"


async def test_reload_reads_the_agent_table_as_edited_on_disk(env, tmp_path):
    config = tmp_path / "aman.toml"
    text = config.read_text()
    config.write_text(text.replace('display_name = "Bob"', 'display_name = "Robert"')
                      + '\n[agents.zed]\ndisplay_name = "Zed"\n')
    assert await answer(await env.client.post("/agent/bob/reload")) == (
        200, {"ok": True, "agent_id": "bob", "status": "Idle"})
    bob = await (await env.client.get("/agent/bob")).get_json()
    assert bob["descriptor"]["display_name"] == "Robert"
    assert (await env.client.post("/agent/zed/reload")).status_code == 200  # added (§14)
    assert "zed" in [a["descriptor"]["agent_id"] for a in
                     await (await env.client.get("/agents")).get_json()]

    config.write_text(text.replace('display_name = "Bob"', "display_name = 5"))
    assert await answer(await env.client.post("/agent/bob/reload")) == (
        400, {"error": "invalid configuration: invalid value for 'agents.bob.display_name': "
                       "must be a string"})
    config.write_text("[agents.bob\n")
    status, out = await answer(await env.client.post("/agent/bob/reload"))
    assert status == 400 and out["error"].startswith("invalid configuration: config error:")
    bob = await (await env.client.get("/agent/bob")).get_json()
    assert bob["descriptor"]["display_name"] == "Robert"  # nothing changed
