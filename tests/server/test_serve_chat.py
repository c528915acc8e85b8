"""Issue 6's acceptance path against real ``aman serve`` processes: create a session, send a
message, watch the reply stream on ``/events/stream``, edit it and get a new reply, approve a
risky tool call, and find everything again after a restart — with the offline ``echo`` provider
and with the ``openai`` provider against a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sdk.testing_openai import OpenAIServer, Reply

pytestmark = pytest.mark.server


def poll(check: Callable[[], Any], deadline_sec: float = 20.0) -> Any:
    deadline = time.monotonic() + deadline_sec
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return result


class Stream:
    """``/events/stream`` read on a thread; ``frames`` are the parsed ``event:processed`` data."""

    def __init__(self, base_url: str, token: str, session_id: str) -> None:
        self.frames: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._url = f"{base_url}/events/stream"
        self._params = {"token": token, "session_id": session_id}
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._open.wait(10), "the event stream did not open"

    def _read(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=2.0)) as c, c.stream(
            "GET", self._url, params=self._params
        ) as resp:
            self._open.set()
            event = ""
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "event:processed":
                    self.frames.append(json.loads(line[6:]))

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["event_type"] == event_type]

    def close(self) -> None:
        self._stop.set()


def settled(c: httpx.Client, sid: str, count: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        state = c.get(f"/chat/session/{sid}/state").json()
        return state if state["state"] == "IDLE" and state["message_count"] == count else None

    return poll(ready)


def the_flow(server: Any, *, reply: Callable[[str], str], tool_step: Callable[[], None]) -> str:
    """The acceptance flow on a running server; answers the session id."""
    with server.client() as c:
        sid = c.post("/chat/session/create", json={}).json()["id"]
        stream = Stream(f"http://127.0.0.1:{server.port}", server.token, sid)
        try:
            sent = c.post(f"/chat/session/{sid}/send", json={"text": "hello big world"})
            assert sent.status_code == 200, sent.text
            state = settled(c, sid, 2)
            assert [(m["role"], m["content"]) for m in state["messages"]] == [
                ("user", "hello big world"), ("assistant", reply("hello big world"))]
            poll(lambda: stream.of_type("agent:reply_ready"))
            chunks = [f["payload"]["delta"] for f in stream.of_type("agent:reply_chunk")]
            assert "".join(chunks) == reply("hello big world") and len(chunks) > 1

            user = state["messages"][0]["id"]
            edited = c.post(f"/chat/session/{sid}/edit",
                            json={"message_id": user, "new_text": "second try"})
            assert edited.json() == {"ok": True, "version": 2, "regenerating": True}
            state = settled(c, sid, 2)
            assert state["messages"][1]["content"] == reply("second try")
            poll(lambda: len(stream.of_type("agent:reply_ready")) == 2)

            tool_step()
            c.post(f"/chat/session/{sid}/send",
                   json={"text": '/echo-tool write {"path": "note.txt", "content": "hi"}'})
            required = poll(lambda: stream.of_type("tool_auth_required"))[0]["payload"]
            assert (required["tool"], required["session_id"]) == ("write", sid)
            [pending] = c.get("/tool-auth/pending").json()["items"]
            assert pending["auth_id"] == required["auth_id"]
            answered = c.post("/tool-auth/respond",
                              json={"auth_id": required["auth_id"], "approved": True})
            assert answered.status_code == 200, answered.text
            state = settled(c, sid, 4)
            assert [m["role"] for m in state["messages"]][2:] == ["user", "tool", "assistant"]
            assert (server.runtime_dir / "workspace" / "note.txt").read_text() == "hi"
        finally:
            stream.close()
    return sid


def after_restart(server: Any, sid: str, reply: Callable[[str], str]) -> None:
    with server.client() as c:
        state = c.get(f"/chat/session/{sid}/state").json()
        contents = [(m["role"], m["content"]) for m in state["messages"]]
        assert contents[:2] == [("user", "second try"), ("assistant", reply("second try"))]
        assert [m["role"] for m in state["messages"]] == ["user", "assistant", "user", "tool", "assistant"]
        assert [s["id"] for s in c.get("/chat/sessions").json()["items"]] == [sid]


def test_the_chat_flow_with_the_echo_provider(aman):
    def echo(text: str) -> str:
        return f"echo: {text}"

    server = aman(token="t")
    sid = the_flow(server, reply=echo, tool_step=lambda: None)
    assert server.stop() == 0
    after_restart(aman(token="t"), sid, echo)


@pytest.fixture(name="openai")
def _openai() -> Iterator[OpenAIServer]:
    """The local OpenAI-compatible server, on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    server = OpenAIServer()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(10)
    yield server
    asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_the_chat_flow_with_the_openai_provider(aman, openai, tmp_path):
    (tmp_path / "aman.toml").write_text(
        f'[llm.providers.local]\ntype = "openai"\nbase_url = "{openai.base_url}"\n'
        'model = "test-model"\n\n[agents.aman]\nprovider = "local"\n'
    )

    def reply(text: str) -> str:
        return f"echo: {text}"  # the test server's default answer

    def tool_step() -> None:
        openai.push(Reply(tool_calls=[("write", {"path": "note.txt", "content": "hi"})]),
                    Reply(text="wrote the note"))

    server = aman(token="t")
    sid = the_flow(server, reply=reply, tool_step=tool_step)
    bodies = [r.body for r in openai.requests if r.path.endswith("/chat/completions")]
    assert bodies[0]["model"] == "test-model" and bodies[0]["stream"] is True
    assert bodies[-1]["messages"][-1]["role"] == "tool"
    assert server.stop() == 0
    after_restart(aman(token="t"), sid, reply)
