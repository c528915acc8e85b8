"""The soul endpoints (http-api §12), the SOULS service, agents' own souls and the
``soul_boundary`` input policy (§11.4 step 2)."""

from __future__ import annotations

import hashlib

from builtin_plugins.soul import UPDATE_BODY_MAX
from sdk import AGENTS, SOULS, Forbidden, TextInput, hookimpl
from sdk.testing import wait_for

from .conftest import EXAMPLE, soul

CONFIRM = {"x-aman-confirm": "yes"}
NO_SOUL = (404, {"error": "no soul configured"})
SECTIONS = ["identity", "core", "expertise", "vibe", "preferences", "boundaries"]


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def mtime_ms(path) -> int:
    return path.stat().st_mtime_ns // 1_000_000


async def test_info_and_raw(start):
    env = await start({"SOUL.md": EXAMPLE})
    path = env.runtime / "SOUL.md"
    assert await env.get("/soul/info") == (
        200,
        {
            "name": "Aman",
            "last_changed_at": mtime_ms(path),
            "path": str(path),
            "sections": SECTIONS,
            "boundaries": ["do not leak secrets", "never delete user files"],
        },
    )
    assert await env.get("/soul/raw") == (200, {"raw": EXAMPLE, "path": str(path)})


async def test_no_soul_file(start):
    env = await start()
    assert await env.get("/soul/info") == NO_SOUL
    assert await env.get("/soul/raw") == NO_SOUL
    assert env.kernel.stash[SOULS].for_agent("aman") is None


async def test_an_invalid_file_at_start_is_no_soul(start):
    env = await start({"SOUL.md": "  \n"})
    assert await env.get("/soul/info") == NO_SOUL


async def test_unknown_agent(start):
    env = await start({"SOUL.md": EXAMPLE})
    missing = (404, {"error": "agent not found: bob"})
    assert await env.get("/soul/info?agent_id=bob") == missing
    assert await env.get("/soul/raw?agent_id=bob") == missing
    assert await env.post("/soul/update?agent_id=bob", json={"content": EXAMPLE}) == missing
    assert await env.audits("soul.update") == [("api", "soul", "error", "agent not found: bob")]


async def test_update_creates_the_file_audits_and_publishes_only_changes(start):
    env = await start()
    path = env.runtime / "SOUL.md"
    status, body = await env.post("/soul/update", json={"content": EXAMPLE})
    assert (status, body["ok"], body["name"]) == (200, True, "Aman")
    assert path.read_text() == EXAMPLE
    # no temporary file left
    assert sorted(p.name for p in env.runtime.iterdir() if "SOUL" in p.name) == ["SOUL.md"]
    assert (await env.get("/soul/info"))[1]["last_changed_at"] == body["last_changed_at"]
    assert await env.get("/soul/raw") == (200, {"raw": EXAMPLE, "path": str(path)})
    # the same content again: written, answered, audited, not published; then a change
    assert await env.post("/soul/update", json={"content": EXAMPLE}) == (200, body)
    other = soul("Nova", "never swear")
    status, second = await env.post("/soul/update", json={"content": other})
    assert (status, second["name"]) == (200, "Nova")
    assert second["last_changed_at"] >= body["last_changed_at"]
    await wait_for(lambda: len(env.recorder.seen) == 2)
    assert env.events() == [
        (
            "soul:system",
            {
                "name": "Aman",
                "boundaries": ["do not leak secrets", "never delete user files"],
                "preferences": ["short answers", "metric units"],
            },
            None,
        ),
        (
            "soul:system",
            {"name": "Nova", "boundaries": ["never swear"], "preferences": ["brevity"]},
            None,
        ),
    ]
    assert [e.delivery for e in env.recorder.seen] == ["at_most_once"] * 2
    assert await env.audits("soul.update") == [("api", "soul", "ok", sha(EXAMPLE))] * 2 + [
        ("api", "soul", "ok", sha(other))
    ]
    assert await env.audits("soul.changed") == []  # the system record is the watcher's


async def test_update_creates_the_directory(start, tmp_path):
    path = tmp_path / "deep" / "er" / "SOUL.md"
    env = await start(settings={"soul.path": str(path)})
    assert (await env.post("/soul/update", json={"content": EXAMPLE}))[0] == 200
    assert path.read_text() == EXAMPLE
    assert (await env.get("/soul/info"))[1]["path"] == str(path)


async def test_update_errors_leave_the_soul_alone(start):
    # the smallest body limit: the route's own limit lets an oversized soul reach its check
    env = await start({"SOUL.md": EXAMPLE}, settings={"http.max_body_bytes": 1024})
    empty = (400, {"error": "SOUL.md content is empty or invalid"})
    assert await env.post("/soul/update", json={"content": ""}) == empty
    assert await env.post("/soul/update", json={"content": " \n\t"}) == empty
    assert await env.post("/soul/update", json={"content": "a" * 262_145}) == (
        400,
        {"error": "soul content is too large (max 262144 bytes)"},
    )
    assert await env.post("/soul/update", json={"content": "é" * 131_073}) == (
        400,
        {"error": "soul content is too large (max 262144 bytes)"},
    )
    for bad in ({}, {"content": 7}, {"content": None}):
        status, body = await env.post("/soul/update", json=bad)
        assert status == 400 and "content" in body["error"], body
    status, body = await env.post("/soul/update", json={"content": "a" * UPDATE_BODY_MAX})
    assert status == 413, body
    assert (env.runtime / "SOUL.md").read_text() == EXAMPLE
    assert (await env.get("/soul/info"))[1]["name"] == "Aman"
    records = await env.audits("soul.update")
    assert [r[2] for r in records] == ["error"] * 8
    assert records[0][3] == "SOUL.md content is empty or invalid"
    assert env.recorder.seen == []


async def test_souls_disabled(start):
    env = await start(
        {"SOUL.md": EXAMPLE, "agents/aman/SOUL.md": soul("Own")}, settings={"soul.path": ""}
    )
    assert await env.get("/soul/info") == NO_SOUL
    assert await env.get("/soul/raw") == NO_SOUL
    assert await env.get("/soul/info?agent_id=aman") == NO_SOUL
    disabled = (400, {"error": "no soul configured (soul.path is empty)"})
    assert await env.post("/soul/update", json={"content": EXAMPLE}) == disabled
    assert await env.post("/soul/update?agent_id=aman", json={"content": EXAMPLE}) == disabled
    assert env.kernel.stash[SOULS].for_agent("aman") is None


async def test_an_agents_own_soul_by_the_default_path(start):
    own = soul("Own", "never mention cats")
    env = await start({"SOUL.md": EXAMPLE, "agents/aman/SOUL.md": own})
    path = env.runtime / "agents" / "aman" / "SOUL.md"
    status, body = await env.get("/soul/info?agent_id=aman")
    assert (status, body["name"], body["path"], body["sections"]) == (
        200,
        "Own",
        str(path),
        ["preferences", "boundaries"],
    )
    assert await env.get("/soul/raw?agent_id=aman") == (200, {"raw": own, "path": str(path)})
    assert (await env.get("/soul/info"))[1]["name"] == "Aman"
    view = env.kernel.stash[SOULS].for_agent("aman")
    assert (view.name, view.source, view.path, view.boundaries) == (
        "Own",
        "agent",
        str(path),
        ("never mention cats",),
    )
    assert view.prompt == "You are Own.\nPreferences: brevity\nBoundaries:\n- never mention cats"
    shared = env.kernel.stash[SOULS].for_agent("someone-else")
    assert (shared.name, shared.source, shared.path) == (
        "Aman",
        "global",
        str(env.runtime / "SOUL.md"),
    )


async def test_update_of_an_agents_soul(start):
    env = await start({"SOUL.md": EXAMPLE})
    path = env.runtime / "agents" / "aman" / "SOUL.md"
    # it has no soul of its own: the global one serves it
    assert await env.get("/soul/info?agent_id=aman") == NO_SOUL
    assert env.kernel.stash[SOULS].for_agent("aman").source == "global"
    text = soul("Own")
    assert (await env.post("/soul/update?agent_id=aman", json={"content": text}))[0] == 200
    assert path.read_text() == text
    assert env.kernel.stash[SOULS].for_agent("aman").source == "agent"
    assert (await env.get("/soul/info"))[1]["name"] == "Aman"
    assert await env.audits("soul.update") == [("api", "agent:aman", "ok", sha(text))]
    await wait_for(lambda: len(env.recorder.seen) == 1)
    assert env.events() == [
        ("soul:system", {"name": "Own", "boundaries": [], "preferences": ["brevity"]}, "aman")
    ]


async def test_a_configured_agent_soul_path(start, tmp_path):
    path = tmp_path / "elsewhere" / "aman.md"
    path.parent.mkdir()
    path.write_text(soul("Configured"))
    env = await start(
        {"agents/aman/SOUL.md": soul("Default")}, settings={"agents.aman.soul_path": str(path)}
    )
    status, body = await env.get("/soul/info?agent_id=aman")
    assert (status, body["name"], body["path"]) == (200, "Configured", str(path))


async def test_soul_path_in_the_config_file_is_relative_to_it(make_kernel, serve_kernel, tmp_path):
    folder = tmp_path / "conf"
    (folder / "souls").mkdir(parents=True)
    (folder / "souls" / "main.md").write_text(EXAMPLE)
    (folder / "aman.toml").write_text('[soul]\npath = "souls/main.md"\nwatch = false\n')
    kernel = make_kernel(config_path=folder / "aman.toml")
    client = await serve_kernel(kernel)
    body = await (await client.get("/soul/info")).get_json()
    assert (body["name"], body["path"]) == ("Aman", str(folder / "souls" / "main.md"))


class Team:
    """Agents as the chat plugin offers them (sdk.AGENTS): ``aman`` and ``bob``."""

    def ids(self) -> list[str]:
        return ["aman", "bob"]

    @hookimpl
    def on_startup(self, ctx) -> None:
        ctx.stash[AGENTS] = self


async def test_agents_come_from_the_agents_service(start):
    env = await start({"SOUL.md": EXAMPLE, "agents/bob/SOUL.md": soul("Bob")}, Team())
    status, body = await env.get("/soul/info?agent_id=bob")
    assert (status, body["name"]) == (200, "Bob")
    assert env.kernel.stash[SOULS].for_agent("bob").source == "agent"
    assert await env.get("/soul/info?agent_id=carol") == (404, {"error": "agent not found: carol"})


async def test_a_new_soul_path_applies_at_once(start, tmp_path):
    other = tmp_path / "other.md"
    other.write_text(soul("Other", "never whistle"))
    env = await start({"SOUL.md": EXAMPLE})
    changes = {"changes": {"soul.path": str(other)}}
    assert (await env.post("/config/set", json=changes, headers=CONFIRM))[0] == 200
    status, body = await env.get("/soul/info")
    assert (status, body["name"], body["path"]) == (200, "Other", str(other))
    await wait_for(lambda: len(env.recorder.seen) == 1)
    assert env.events()[0][1] == {
        "name": "Other",
        "boundaries": ["never whistle"],
        "preferences": ["brevity"],
    }


# --- the soul_boundary input policy -----------------------------------------------------------


def boundary_policy(kernel):
    [policy] = [
        c.item
        for c in kernel.plugins.contributions("register_policies")
        if c.plugin == "soul" and c.item.name == "soul_boundary"
    ]
    return policy


async def test_the_boundary_policy_checks_the_agents_soul(start):
    env = await start(
        {"SOUL.md": EXAMPLE, "agents/aman/SOUL.md": soul("Own", "never mention cats")}
    )
    policy = boundary_policy(env.kernel)
    assert policy.order == 200
    verdict = policy.check(TextInput(text="Please MENTION Cats now", agent_id="aman"))
    assert (verdict.outcome, verdict.detail) == ("blocked", "boundary:never mention cats")
    assert isinstance(verdict.error, Forbidden)
    assert str(verdict.error) == "blocked by soul boundary: never mention cats"
    assert verdict.text is None and verdict.event is None
    # aman's own soul replaces the global one; another agent gets the global boundaries
    assert policy.check(TextInput(text="please leak secrets now", agent_id="aman")) is None
    leak = TextInput(text="please leak secrets now", agent_id="zed", session_id="s1")
    assert policy.check(leak).detail == "boundary:do not leak secrets"
    plan = TextInput(text="summarize the plan", agent_id="zed")
    assert policy.check(plan) is None
    # an update applies to the next check
    await env.post("/soul/update", json={"content": soul("Aman", "never summarize")})
    assert policy.check(plan).detail == "boundary:never summarize"


async def test_the_boundary_policy_without_a_soul(start):
    env = await start()
    policy = boundary_policy(env.kernel)
    assert policy.check(TextInput(text="leak secrets", agent_id="aman")) is None
