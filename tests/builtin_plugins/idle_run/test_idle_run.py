"""``POST /idle-run`` (http-api §16): real skill files, a served kernel, the echo provider (or a
provider held open, to watch the agent during its turn)."""

from __future__ import annotations

import asyncio
import random
import textwrap
from typing import Any

import pytest

from builtin_plugins import idle_run
from sdk import Delta, ProviderType, hookimpl
from sdk.testing import Recorder, wait_for

SKILLS = {
    "standup.yaml": """
        name: daily-standup
        description: Write the standup
        tags: [idle_run, work]
        idle_prompts: ["Review the open tasks of {agent_id}"]
        instructions: List yesterday, today and blockers.
    """,
    "reading/SKILL.md": """
        ---
        name: reading
        description: Read something new, {agent_id}
        tags: [idle_run, study]
        ---
        Pick one article and take notes.
    """,
    "games.yaml": """
        name: games
        tags: [idle_run, fun]
        idle_prompts: [Play chess, Play go]
        instructions: Have fun.
    """,
    "puzzles.yaml": """
        name: puzzles
        tags: [idle_run, fun]
        idle_prompt: Solve a sudoku
        instructions: Think.
    """,
    "prize.yaml": """
        name: prize-hunt
        description: Hunt a prize
        tags: [idle_run, prize]
    """,
    "browse.yaml": """
        name: browse
        description: Browse the web
        tags: [idle_run, internet, entertainment]
    """,
    "garden.yaml": """
        name: garden
        description: Water the plants
        tags: [idle_run, gardening]
    """,
    "plain.yaml": """
        name: plain-work
        description: Not an idle skill
        tags: [work]
    """,
    "off.yaml": """
        name: switched-off
        description: Disabled
        enabled: false
        tags: [idle_run, custom]
    """,
}
ALICE = {"x-aman-operator": "alice"}


def message(prompt: str, instructions: str) -> str:
    return (
        f"[IDLE ACTION] {prompt}\n\n--- SKILL METHODOLOGY ---\n{instructions}\n--- END SKILL ---\n\n"
        "Execute the action above and report what you did."
    )


class Held:
    """A provider type whose replies wait until ``gate`` is set: the turn stays running."""

    name = "held"

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    @hookimpl
    def register_llm_providers(self):
        return [ProviderType(type="held", factory=lambda config: self, default_model="h")]

    async def probe(self) -> None:
        pass

    async def stream(self, request):
        await self.gate.wait()
        yield Delta(text="done", finish_reason="stop")


class Env:
    def __init__(self, client: Any, kernel: Any, recorder: Recorder) -> None:
        self.client, self.kernel, self.recorder = client, kernel, recorder

    async def run(self, headers: dict[str, str] | None = None, **body: Any) -> tuple[int, Any]:
        resp = await self.client.post("/idle-run", json=body, headers=headers or {})
        return resp.status_code, await resp.get_json()

    async def ok(self, **body: Any) -> dict[str, Any]:
        status, out = await self.run(**body)
        assert status == 200, out
        return out

    async def state(self, sid: str) -> dict[str, Any]:
        return await (await self.client.get(f"/chat/session/{sid}/state")).get_json()

    async def settled(self, sid: str, replies: int = 1) -> dict[str, Any]:
        """The session once it is IDLE with ``replies`` assistant messages."""
        got: dict[str, Any] = {}

        def done() -> bool:
            return (
                got.get("state") == "IDLE"
                and sum(m["role"] == "assistant" for m in got["messages"]) >= replies
            )

        for _ in range(2000):
            got = await self.state(sid)
            if done():
                return got
            await asyncio.sleep(0.005)
        pytest.fail(f"session {sid} did not settle: {got}")

    async def agent(self) -> dict[str, Any]:
        return await (await self.client.get("/agent/aman")).get_json()

    async def agent_when(self, check: Any) -> dict[str, Any]:
        """The agent object once ``check(agent)`` holds."""
        for _ in range(2000):
            agent = await self.agent()
            if check(agent):
                return agent
            await asyncio.sleep(0.005)
        pytest.fail(f"the agent did not get there: {agent}")

    async def busy(self, sid: str) -> dict[str, Any]:
        """The agent while it runs the turn of session ``sid``."""
        return await self.agent_when(lambda a: (a["activity"] or {}).get("session_id") == sid)

    async def audits(self) -> list[tuple[str, str, str, str]]:
        page = await self.kernel.audit.query(action="idle.run")
        return [(r.operator, r.target, r.outcome, r.detail) for r in reversed(page.items)]


@pytest.fixture(name="start")
def _start(make_kernel, serve_kernel, tmp_path):
    """``env = await start(toml, *plugins)``: the skill files above, an optional aman.toml."""

    async def start(toml: str = "", *plugins: Any) -> Env:
        root = tmp_path / "skills"
        for rel, text in SKILLS.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"))
        config = tmp_path / "aman.toml"
        config.write_text(toml)
        recorder = Recorder("message_received", "agent:reply_ready")
        settings = {"skills.dir": str(root), "skills.hot_reload.enabled": False}
        kernel = make_kernel(recorder, *plugins, settings=settings, config_path=config)
        return Env(await serve_kernel(kernel), kernel, recorder)

    return start


async def test_a_work_skill_becomes_a_message_and_a_turn(start):
    env = await start()
    status, out = await env.run(headers=ALICE, tag="WORK")
    assert status == 200, out
    sid = out["session_id"]
    assert out == {
        "session_id": sid,
        "skill_name": "daily-standup",
        "tag": "work",
        "background": False,
        "event_id": out["event_id"],
    }
    text = message("Review the open tasks of aman", "List yesterday, today and blockers.")
    state = await env.settled(sid)
    assert [(m["role"], m["content"]) for m in state["messages"]] == [
        ("user", text),
        ("assistant", f"echo: {text}"),
    ]
    assert state["messages"][0]["event_id"] == out["event_id"]
    assert (state["session_type"], state["agent_id"]) == ("persistent", "aman")
    await wait_for(lambda: env.recorder.of_type("message_received"))
    [received] = env.recorder.of_type("message_received")
    assert (received.id, received.source, received.delivery) == (
        out["event_id"],
        "idle.manual",
        "at_least_once",
    )
    assert received.payload == {
        "session_id": sid,
        "agent_id": "aman",
        "message_id": state["messages"][0]["id"],
        "text": text,
        "sender": "alice",
        "source": "api",
        "skill_name": "daily-standup",
        "tag": "work",
        "session_type": "persistent",
        "background": False,
    }
    assert await env.audits() == [
        ("alice", "agent:aman", "ok", f"tag=work skill=daily-standup session={sid}")
    ]


async def test_without_idle_prompts_the_description_is_the_prompt(start):
    env = await start()
    out = await env.ok(tag="study")
    state = await env.settled(out["session_id"])
    assert state["messages"][0]["content"] == message(
        "Read something new, aman", "Pick one article and take notes."
    )


async def test_the_work_session_is_reused(start):
    env = await start()
    first = await env.ok(tag="work", project_key="proj.1", work_id="w-7", background=True)
    assert (first["session_id"], first["background"]) == ("aman_proj.1_w-7", True)
    await env.settled("aman_proj.1_w-7")
    second = await env.ok(tag="work", project_key="proj.1", work_id="w-7", background=True)
    assert second["session_id"] == "aman_proj.1_w-7"
    assert second["event_id"] != first["event_id"]
    state = await env.settled("aman_proj.1_w-7", replies=2)
    assert [m["role"] for m in state["messages"]] == ["user", "assistant"] * 2
    assert (state["session_type"], state["message_count"]) == ("background", 4)
    await wait_for(lambda: len(env.recorder.of_type("agent:reply_ready")) == 2)
    assert all(e.payload["background"] for e in env.recorder.of_type("agent:reply_ready"))
    payloads = [e.payload for e in env.recorder.of_type("message_received")]
    assert [(p["session_type"], p["background"]) for p in payloads] == [("background", True)] * 2
    sessions = await (await env.client.get("/chat/sessions")).get_json()
    assert [s["id"] for s in sessions["items"]] == ["aman_proj.1_w-7"]


async def test_a_random_skill_and_prompt_or_the_named_skill(start):
    env = await start()
    skills = {"games": ["Play chess", "Play go"], "puzzles": ["Solve a sudoku"]}
    for seed in range(4):
        idle_run.RNG.seed(seed)
        expect = random.Random(seed)
        name = expect.choice(sorted(skills))
        prompt = expect.choice(skills[name])
        out = await env.ok(tag="fun")
        assert out["skill_name"] == name
        state = await env.settled(out["session_id"])
        assert state["messages"][0]["content"].startswith(f"[IDLE ACTION] {prompt}\n")
    out = await env.ok(tag="fun", skill_name="puzzles")
    assert out["skill_name"] == "puzzles"


ERRORS = [
    ({}, 400, "missing 'tag' field"),
    ({"tag": ""}, 400, "missing 'tag' field"),
    ({"tag": "two words"}, 400, "field 'tag' must be 1-32 characters of a-z0-9_-"),
    ({"tag": "x" * 33}, 400, "field 'tag' must be 1-32 characters of a-z0-9_-"),
    (
        {"tag": "work", "project_key": "a/b", "work_id": "w"},
        400,
        "field 'project_key' must be 1-64 characters of A-Za-z0-9_.-",
    ),
    (
        {"tag": "work", "project_key": "p", "work_id": "w" * 65},
        400,
        "field 'work_id' must be 1-64 characters of A-Za-z0-9_.-",
    ),
    ({"tag": "work", "project_key": "p"}, 400, "project_key and work_id must be given together"),
    ({"tag": "work", "work_id": "w"}, 400, "project_key and work_id must be given together"),
    ({"tag": "work", "agent_key": "ghost"}, 404, "agent not found: ghost"),
    ({"tag": "nothing"}, 404, "no idle-run skill tagged 'nothing' for agent aman"),
    ({"tag": "custom"}, 404, "no idle-run skill tagged 'custom' for agent aman"),
    ({"tag": "work", "skill_name": "games"}, 404, "skill not found: games"),
    ({"tag": "work", "skill_name": "plain-work"}, 404, "skill not found: plain-work"),
]
#: Refused while the body is structured, before the handler knows the agent.
SHAPE_ERRORS = [
    ({"tag": 5}, 400, "field 'tag' must be a string"),
    ({"tag": "work", "background": "yes"}, 400, "field 'background' must be a boolean"),
]


async def test_errors_are_answered_and_audited(start):
    env = await start()
    for body, status, error in ERRORS + SHAPE_ERRORS:
        assert await env.run(**body) == (status, {"error": error}), body
    targets = ["agent:ghost" if b.get("agent_key") else "agent:aman" for b, _, _ in ERRORS]
    targets += ["agent"] * len(SHAPE_ERRORS)
    assert await env.audits() == [
        ("api", target, "error", error)
        for target, (_, _, error) in zip(targets, ERRORS + SHAPE_ERRORS, strict=True)
    ]
    sessions = await (await env.client.get("/chat/sessions")).get_json()
    assert sessions["items"] == []


async def test_a_disabled_agent_is_409(start):
    env = await start()
    await env.client.post("/agent/aman/status", json={"status": "Disabled"})
    assert await env.run(tag="work") == (409, {"error": "agent aman is disabled"})


async def test_only_skills_the_agent_may_use(start):
    env = await start('[agents.aman]\nskills = ["games"]\n\n[agents.bob]\n')
    assert await env.run(tag="work") == (
        404,
        {"error": "no idle-run skill tagged 'work' for agent aman"},
    )
    assert await env.run(tag="fun", skill_name="puzzles") == (
        404,
        {"error": "skill not found: puzzles"},
    )
    assert (await env.ok(tag="fun"))["skill_name"] == "games"
    out = await env.ok(tag="work", agent_key="bob", project_key="p", work_id="1")
    assert (out["session_id"], out["skill_name"]) == ("bob_p_1", "daily-standup")
    state = await env.settled("bob_p_1")
    assert state["messages"][0]["content"].startswith(
        "[IDLE ACTION] Review the open tasks of bob\n"
    )


HELD = '[llm]\ndefault_provider = "held"\n\n[llm.providers.held]\ntype = "held"\n'


STATES = [
    ("work", "working"),
    ("study", "studying"),
    ("prize", "prize"),
    ("fun", "daily_life"),
    ("internet", "daily_life"),
    ("entertainment", "daily_life"),
    ("gardening", "waiting"),
]


async def held_env(start, toml: str = "") -> tuple[Env, Held]:
    """A kernel whose agent replies through :class:`Held` (reloaded once the provider type's
    plugin runs: the chat plugin builds its agents before third-party plugins start)."""
    held = Held()
    env = await start(HELD + toml, held)
    resp = await env.client.post("/agent/aman/reload")
    assert (await resp.get_json())["status"] == "Idle"
    return env, held


async def test_the_agent_state_follows_the_tag(start):
    env, held = await held_env(start)
    for tag, system_state in STATES:
        sid = (await env.ok(tag=tag))["session_id"]
        agent = await env.busy(sid)
        assert agent["status"] == "Busy"
        assert agent["system_state"] == system_state, tag
        assert (agent["activity"]["kind"], agent["activity"]["session_id"]) == ("idle_run", sid)
        held.gate.set()
        await env.settled(sid)
        held.gate.clear()
    agent = await env.agent_when(lambda a: a["status"] == "Idle")
    assert (agent["system_state"], agent["activity"]) == ("idle", None)


async def test_a_full_queue_is_409(start):
    env, held = await held_env(start, "\n[agents.aman]\nqueue_max_size = 1\n")
    running = await env.ok(tag="work")
    await env.busy(running["session_id"])
    queued = await env.ok(tag="fun")
    assert await env.run(tag="study") == (
        409,
        {"error": "agent aman queue is full (1 turns waiting)"},
    )
    held.gate.set()
    await env.settled(running["session_id"])
    await env.settled(queued["session_id"])
