"""The skills endpoints (http-api §4): snapshots, LLM-visible skills, content, enable/disable
(persisted), versions, rollback, and the watcher (formats §2.5)."""

from __future__ import annotations

import asyncio
import hashlib
import sys

from sdk.testing import wait_for

from .conftest import write

CONFIRM = {"x-aman-confirm": "yes"}
ECHO = """
name: echo-skill
version: "1.0.0"
description: echo
tags: [demo]
triggers:
  - event_types: [message_received]
  - hello
concurrency: {limited: 3}
"""
SUMMARIZE = """
---
name: summarize
version: "1.2.0"
description: Summarize a document
category: writing
triggers: [summarize, tl;dr]
---
When asked to summarize, read it all.
"""


async def test_snapshot_list_and_get(start):
    env = await start({"echo.yaml": ECHO, "summarize/SKILL.md": SUMMARIZE})
    status, body = await env.get("/skills")
    assert status == 200
    assert [s["name"] for s in body["items"]] == ["echo-skill", "summarize"]
    echo = body["items"][0]
    assert isinstance(echo.pop("loaded_at_ms"), int)
    assert echo == {
        "name": "echo-skill", "version": "1.0.0", "description": "echo", "enabled": True,
        "concurrency": {"limited": 3},
        "triggers": [{"event_types": ["message_received"], "sources": [], "priorities": [], "match_all": False}],
        "keywords": ["hello"], "tags": ["demo"], "category": "", "format": "yaml",
        "path": str(env.root / "echo.yaml"), "llm_visible": False,
    }
    status, one = await env.get("/skill/summarize")
    assert (status, one["format"], one["llm_visible"], one["concurrency"], one["triggers"]) == (
        200, "skill_md", True, "serial", [],
    )
    assert await env.get("/skill/nope") == (404, {"error": "skill not found: nope"})


async def test_content(start):
    env = await start({"echo.yaml": ECHO, "summarize/SKILL.md": SUMMARIZE, "i.yaml": "name: i\ninstructions: Be brief.\n"})
    assert await env.get("/skill/summarize/content") == (200, {
        "name": "summarize", "content": "When asked to summarize, read it all.", "format": "skill_md",
        "path": str(env.root / "summarize" / "SKILL.md"),
    })
    assert (await env.get("/skill/i/content"))[1]["content"] == "Be brief."
    assert (await env.get("/skill/echo-skill/content"))[1]["content"] == ""
    assert await env.get("/skill/nope/content") == (404, {"error": "skill not found: nope"})


async def test_llm_skills(start):
    other = "windows" if sys.platform.startswith("linux") else "linux"
    env = await start(
        {
            "echo.yaml": ECHO,
            "summarize/SKILL.md": SUMMARIZE,
            "b.yaml": "name: b\ninstructions: x\nllm_visible: false\n",
            "c.yaml": f"name: c\ninstructions: x\nplatforms: [{other}]\n",
            "a.yaml": "name: a\ninstructions: x\ncategory: misc\n",
            "d.yaml": "name: d\ninstructions: x\n",
        }
    )
    await env.post("/skill/d/disable")
    assert await env.get("/llm-skills") == (200, {"items": [
        {"name": "a", "description": "declarative skill", "category": "misc", "triggers": []},
        {"name": "summarize", "description": "Summarize a document", "category": "writing", "triggers": ["summarize", "tl;dr"]},
    ]})


async def test_enable_disable_are_audited_idempotent_and_survive_a_restart(start, make_kernel, serve_kernel):
    env = await start({"echo.yaml": ECHO, "dormant.yaml": "name: dormant\nenabled: false\n"})
    assert (await env.get("/skill/dormant"))[1]["enabled"] is False
    assert await env.post("/skill/echo-skill/disable") == (200, {"ok": True, "name": "echo-skill", "enabled": False})
    assert await env.post("/skill/echo-skill/disable") == (200, {"ok": True, "name": "echo-skill", "enabled": False})
    assert await env.post("/skill/dormant/enable") == (200, {"ok": True, "name": "dormant", "enabled": True})
    assert await env.post("/skill/nope/enable") == (404, {"error": "skill not found: nope"})
    assert await env.audits("skill.disable") == [("api", "skill:echo-skill", "ok", "")] * 2
    assert await env.audits("skill.enable") == [
        ("api", "skill:dormant", "ok", ""), ("api", "skill:nope", "error", "skill not found: nope"),
    ]
    # a reload keeps the flags, and the file's `enabled` is only the initial state
    env.write("dormant.yaml", "name: dormant\nenabled: false\ndescription: edited\n")
    await env.post("/skills/reload")
    await env.kernel.lifecycle.shutdown()
    kernel = make_kernel(settings={"skills.dir": str(env.root), "skills.hot_reload.enabled": False})
    client = await serve_kernel(kernel)
    body = await (await client.get("/skills")).get_json()
    assert {s["name"]: s["enabled"] for s in body["items"]} == {"echo-skill": False, "dormant": True}


async def test_versions_and_rollback_round_trip(start):
    env = await start({"echo.yaml": ECHO})
    path = env.root / "echo.yaml"
    first = path.read_bytes()
    env.write("echo.yaml", ECHO.replace('"1.0.0"', '"1.1.0"'))
    await env.post("/skills/reload")
    env.write("echo.yaml", ECHO.replace('"1.0.0"', '"1.1.0"').replace("echo\n", "echo, again\n"))
    await env.post("/skills/reload")
    status, body = await env.get("/skill/echo-skill/versions")
    assert status == 200
    assert [(v["version"], v["current"]) for v in body["items"]] == [("1.1.0", True), ("1.1.0", False), ("1.0.0", False)]
    assert body["items"][2]["content_hash"] == hashlib.sha256(first).hexdigest()
    assert body["items"][0]["created_at_ms"] >= body["items"][2]["created_at_ms"]

    assert (await env.post("/skill/echo-skill/rollback", json={"version": "1.0.0"}))[0] == 409
    status, body = await env.post("/skill/echo-skill/rollback", json={"version": "1.0.0"}, headers=CONFIRM)
    assert status == 200
    assert (body["ok"], body["name"], body["version"], body["skill"]["version"]) == (True, "echo-skill", "1.0.0", "1.0.0")
    assert path.read_bytes() == first
    _, versions = await env.get("/skill/echo-skill/versions")
    assert [(v["version"], v["current"]) for v in versions["items"]][:2] == [("1.0.0", True), ("1.1.0", False)]
    assert env.recorder.of_type("skill_reloaded")[-1].payload["updated_new_version"] == ["echo-skill"]
    # idempotent: rolling back to the current version rewrites the same content
    status, again = await env.post("/skill/echo-skill/rollback", json={"version": "1.0.0"}, headers=CONFIRM)
    assert (status, path.read_bytes()) == (200, first)
    assert len((await env.get("/skill/echo-skill/versions"))[1]["items"]) == 4
    assert [r[2:] for r in await env.audits("skill.rollback")] == [
        ("confirm_required", ""), ("ok", "1.0.0"), ("ok", "1.0.0"),
    ]


async def test_rollback_of_a_deleted_skill_writes_its_sanitized_file(start):
    env = await start({"sub/SKILL.md": SUMMARIZE.replace("name: summarize", "name: sum marize!")})
    (env.root / "sub" / "SKILL.md").unlink()
    await env.post("/skills/reload")
    assert (await env.get("/skill/sum marize!"))[0] == 404
    status, versions = await env.get("/skill/sum marize!/versions")
    assert (status, [v["current"] for v in versions["items"]]) == (200, [False])
    status, body = await env.post("/skill/sum marize!/rollback", json={"version": "1.2.0"}, headers=CONFIRM)
    assert status == 200
    assert body["skill"]["path"] == str(env.root / "sum_marize_" / "SKILL.md")


async def test_rollback_errors(start):
    env = await start({"echo.yaml": ECHO})
    assert await env.post("/skill/echo-skill/rollback", json={"version": "9.9.9"}, headers=CONFIRM) == (
        404, {"error": "skill version echo-skill@9.9.9 not found"},
    )
    assert await env.post("/skill/nope/rollback", json={"version": "1.0.0"}, headers=CONFIRM) == (
        404, {"error": "skill version nope@1.0.0 not found"},
    )
    assert (await env.post("/skill/echo-skill/rollback", json={}, headers=CONFIRM))[0] == 400
    assert await env.get("/skill/nope/versions") == (404, {"error": "skill not found: nope"})
    assert [r[2:] for r in await env.audits("skill.rollback")][:2] == [
        ("error", "skill version echo-skill@9.9.9 not found"), ("error", "skill version nope@1.0.0 not found"),
    ]


async def test_rollback_that_fails_to_load_puts_the_previous_content_back(start):
    # version 1.0.0 was a SKILL.md; the skill now lives in a YAML file, where that text is invalid
    env = await start({"x/SKILL.md": "---\nname: moved\nversion: '1.0.0'\n---\nbody\n"})
    (env.root / "x" / "SKILL.md").unlink()
    current = "name: moved\nversion: '2.0.0'\n"
    env.write("moved.yaml", current)
    await env.post("/skills/reload")
    status, body = await env.post("/skill/moved/rollback", json={"version": "1.0.0"}, headers=CONFIRM)
    assert status == 422
    assert body["error"].startswith("rolled-back skill failed to load: invalid YAML: ")
    assert (env.root / "moved.yaml").read_text() == current
    assert (await env.get("/skill/moved"))[1]["version"] == "2.0.0"
    [(operator, target, outcome, detail)] = await env.audits("skill.rollback")
    assert (target, outcome) == ("skill:moved", "error") and detail.startswith("rolled-back skill")


async def test_the_watcher_picks_up_edits(start):
    env = await start({"echo.yaml": ECHO}, skills__hot_reload__enabled=True, skills__hot_reload__debounce_ms=50)
    registry = env.skills.registry

    async def until_watching() -> None:  # the OS watch starts shortly after start-up
        for n in range(100):
            write(env.root, "probe.yaml", f"name: probe\ndescription: '{n}'\n")
            await asyncio.sleep(0.1)
            if "probe" in registry.skills:
                return
        raise AssertionError("the watcher never started")

    await until_watching()
    env.write("echo.yaml", ECHO.replace('"1.0.0"', '"1.5.0"'))
    await wait_for(lambda: registry.skills["echo-skill"].version == "1.5.0", timeout=10)
    (env.root / "probe.yaml").unlink()
    env.write("new/SKILL.md", "# fresh\nhello\n")
    await wait_for(lambda: "fresh" in registry.skills and "probe" not in registry.skills, timeout=10)
    page = await env.kernel.audit.query(action="skill.reload")
    assert page.items and all((r.operator, r.target, r.outcome) == ("system", "skills", "ok") for r in page.items)
    assert any(e.payload["updated_new_version"] == ["echo-skill"] for e in env.recorder.of_type("skill_reloaded"))
    assert (await env.get("/skill/fresh"))[1]["format"] == "skill_md"


async def test_a_new_skills_dir_is_loaded_live(make_kernel, serve_kernel, tmp_path):
    write(tmp_path / "skills", "echo.yaml", ECHO)
    write(tmp_path / "other-skills", "o.yaml", "name: o\n")
    config = tmp_path / "aman.toml"
    config.write_text('[skills]\ndir = "skills"\n')
    kernel = make_kernel(config_path=config, settings={"skills.hot_reload.enabled": False})
    client = await serve_kernel(kernel)
    resp = await client.post("/config/set", json={"changes": {"skills.dir": "other-skills"}}, headers=CONFIRM)
    assert resp.status_code == 200, await resp.get_json()
    body = await (await client.get("/skills")).get_json()
    assert [(s["name"], s["path"]) for s in body["items"]] == [("o", str(tmp_path / "other-skills" / "o.yaml"))]
    page = await kernel.audit.query(action="skill.reload")
    assert [r.detail for r in page.items] == ["inserted=1 updated=0 removed=1 failed=0"]
