"""Skill files (formats §2.1, §2.2, §2.5): both formats, the SKILL.md fallbacks, discovery and
every kind of load failure."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from builtin_plugins.skills.loader import SEMVER, LoadError, discover, parse

from .conftest import write


def load(path: str, text: str):
    content = text.lstrip("\n")
    return parse(Path(path), content, hashlib.sha256(content.encode()).hexdigest())


def test_yaml_fields_and_defaults():
    skill = load(
        "/s/on-upload.yaml",
        """
name: on-upload
version: "1.0.0"
description: React to new files in the inbox
enabled: false
tags: [files, inbox]
category: ops
triggers:
  - event_types: [file_created]
    sources: ["watch:*"]
    match_all: true
  - upload
concurrency: {limited: 2}
idle_prompt: "look at {agent_id}"
instructions: "  Do it.  "
platforms: [linux]
environments: [docker]
metadata: {owner: me}
unknown_field: ignored
""",
    )
    assert (skill.name, skill.version, skill.description, skill.enabled) == (
        "on-upload", "1.0.0", "React to new files in the inbox", False,
    )
    assert (skill.tags, skill.category, skill.keywords, skill.concurrency) == (
        ("files", "inbox"), "ops", ("upload",), 2,
    )
    assert [t.snapshot() for t in skill.triggers] == [
        {"event_types": ["file_created"], "sources": ["watch:*"], "priorities": [], "match_all": True}
    ]
    assert (skill.idle_prompts, skill.instructions, skill.platforms, skill.environments) == (
        ("look at {agent_id}",), "Do it.", ("linux",), ("docker",),
    )
    assert skill.format == "yaml" and skill.metadata == {"owner": "me"}
    assert skill.search_tags == ["files", "inbox", "file_created", "upload"]

    minimal = load("/s/m.yaml", "name: m\n")
    assert (minimal.version, minimal.description, minimal.enabled, minimal.concurrency) == (
        "0.1.0", "declarative skill", True, "serial",
    )
    assert (minimal.triggers, minimal.keywords, minimal.instructions, minimal.llm_visible) == (
        (), (), "", True,
    )


def test_skill_md_with_front_matter():
    skill = load(
        "/s/summarize/SKILL.md",
        """
---
name: summarize
version: "1.2.0"
description: Summarize a document in five bullet points
category: writing
triggers: [summarize, tl;dr]
tags: [writing]
---

When asked to summarize, read the whole text first.

""",
    )
    assert (skill.name, skill.version, skill.format, skill.keywords) == (
        "summarize", "1.2.0", "skill_md", ("summarize", "tl;dr"),
    )
    assert skill.instructions == "When asked to summarize, read the whole text first."
    assert skill.description == "Summarize a document in five bullet points"


def test_skill_md_defaults_and_comma_separated_keywords():
    skill = load("/s/x/SKILL.md", "---\nname: x\ntriggers: \"a, b ,c\"\n---\nbody\n")
    assert (skill.description, skill.keywords, skill.instructions) == ("", ("a", "b", "c"), "body")


def test_metadata_triggers_give_keywords_when_triggers_is_absent():
    skill = load("/s/x.yaml", "name: x\nmetadata: {triggers: 'one, two'}\n")
    assert skill.keywords == ("one", "two")


def test_skill_md_fallback_fenced_yaml_block():
    skill = load(
        "/s/dir/SKILL.md",
        """
Some intro.

```yaml
name: fenced
version: "2.0.0"
```

The instructions.
""",
    )
    assert (skill.name, skill.version, skill.instructions) == ("fenced", "2.0.0", "The instructions.")


def test_skill_md_fallback_heading_then_directory_name():
    text = "Intro\n# My Skill\nDo things.\n"
    skill = load("/s/dir/SKILL.md", text)
    assert (skill.name, skill.instructions, skill.version) == ("My Skill", text.strip(), "0.1.0")
    assert load("/s/the-dir/SKILL.md", "Just text.\n").name == "the-dir"


@pytest.mark.parametrize(
    ("path", "text", "error"),
    [
        ("/s/a.yaml", "name: [unclosed\n", "invalid YAML: "),
        ("/s/a.yaml", "- a list\n", "not a YAML mapping"),
        ("/s/a.yaml", "description: no name\n", "missing name"),
        ("/s/a.yaml", "name: ' padded'\n", "invalid name: "),
        ("/s/a.yaml", "name: a/b\n", "invalid name: "),
        ("/s/a.yaml", "name: a\nversion: 1.x\n", "invalid semver: 1.x"),
        ("/s/a.yaml", "name: a\nversion: 1.0\n", "invalid semver: 1.0"),
        ("/s/a.yaml", "name: a\nversion: '01.0.0'\n", "invalid semver: 01.0.0"),
        ("/s/a.yaml", "name: a\nconcurrency: many\n", "invalid concurrency: many"),
        ("/s/a.yaml", "name: a\nconcurrency: {limited: 0}\n", "invalid concurrency: "),
        ("/s/a.yaml", "name: a\nconcurrency: {limited: 1001}\n", "invalid concurrency: "),
        ("/s/a.yaml", "name: a\ntriggers: [42]\n", "invalid trigger #1: "),
        ("/s/a.yaml", "name: a\ntriggers: [{event_types: timer_tick}]\n", "invalid trigger #1: "),
        ("/s/a.yaml", "name: a\ntriggers: [{priorities: [urgent]}]\n", "invalid trigger #1: "),
        ("/s/a.yaml", "name: a\ntriggers: [{match_all: 'yes'}]\n", "invalid trigger #1: "),
        ("/s/a.yaml", "name: a\ntriggers: 'x, y'\n", "invalid trigger: "),
        ("/s/a.yaml", "name: a\nplatforms: [beos]\n", "unknown platform: beos"),
        ("/s/a.yaml", "name: a\nenvironments: [k8s]\n", "unknown environment: k8s"),
        ("/s/d/SKILL.md", "---\nname: a\n", "front-matter is not closed"),
        ("/s/d/SKILL.md", "---\nname: [x\n---\nbody\n", "invalid YAML: "),
    ],
)
def test_load_failures(path, text, error):
    with pytest.raises(LoadError) as info:
        load(path, text)
    assert str(info.value).startswith(error)


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("1.0.0", True),
        ("0.0.0", True),
        ("1.2.3-alpha.1+build.5", True),
        ("1.0.0-0.3.7", True),
        ("1.0.0-x-y-z.--", True),
        ("1.0.0+20130313144700", True),
        ("1.0", False),
        ("1.0.0-", False),
        ("1.0.0-01", False),
        ("v1.0.0", False),
        ("1.0.0+", False),
        ("1.0.0 ", False),
    ],
)
def test_semver(version, ok):
    assert bool(SEMVER.fullmatch(version)) is ok


def test_discovery_order_hidden_files_and_symlinks(tmp_path):
    for rel in ("b.yaml", "a/SKILL.md", "a.yml", "Z.yaml", "notes.md", ".hidden.yaml", ".git/x.yaml", "c/README.md"):
        write(tmp_path, rel, "name: x\n")
    os.symlink(tmp_path / "b.yaml", tmp_path / "link.yaml")
    os.symlink(tmp_path / "a", tmp_path / "linked-dir")
    assert [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path)] == [
        "Z.yaml", "a.yml", "a/SKILL.md", "b.yaml",  # bytes: "." < "/"
    ]


async def test_failures_are_reported_while_the_others_load(start):
    env = await start(
        {
            "a-good.yaml": "name: good\n",
            "b-syntax.yaml": "name: [\n",
            "c-noname.yaml": "description: x\n",
            "d-semver.yaml": "name: d\nversion: '1.x'\n",
            "e-concurrency.yaml": "name: e\nconcurrency: fast\n",
            "f-trigger.yaml": "name: f\ntriggers: [{sources: x}]\n",
            "g-dup.yaml": "name: good\n",
            "h/SKILL.md": "# heading-skill\nbody\n",
        }
    )
    status, body = await env.post("/skills/reload")
    assert status == 200
    assert [s["name"] for s in (await env.get("/skills"))[1]["items"]] == ["good", "heading-skill"]
    errors = {Path(f["path"]).name: f["error"] for f in body["failed"]}
    assert list(errors) == [
        "b-syntax.yaml", "c-noname.yaml", "d-semver.yaml", "e-concurrency.yaml", "f-trigger.yaml", "g-dup.yaml",
    ]
    assert errors["g-dup.yaml"] == f"duplicate skill name 'good' (already defined in {env.root / 'a-good.yaml'})"
    assert errors["d-semver.yaml"] == "invalid semver: 1.x"


async def test_the_first_file_in_path_order_wins_a_duplicate(start):
    env = await start({"b.yaml": "name: same\ndescription: from b\n"})
    env.write("a.yaml", "name: same\ndescription: from a\n")
    status, body = await env.post("/skills/reload")
    assert body["updated_same_version"] == ["same"]
    assert body["failed"] == [
        {"path": str(env.root / "b.yaml"), "error": f"duplicate skill name 'same' (already defined in {env.root / 'a.yaml'})"}
    ]
    assert (await env.get("/skill/same"))[1]["description"] == "from a"


async def test_a_loaded_skill_keeps_its_content_while_its_file_is_invalid(start):
    env = await start({"k.yaml": "name: keep\nversion: '1.0.0'\ndescription: first\n"})
    env.write("k.yaml", "name: keep\nversion: 'oops'\n")
    status, body = await env.post("/skills/reload")
    assert (body["removed"], [f["error"] for f in body["failed"]]) == ([], ["invalid semver: oops"])
    assert (await env.get("/skill/keep"))[1]["description"] == "first"
    env.write("k.yaml", "name: keep\nversion: '1.1.0'\ndescription: fixed\n")
    status, body = await env.post("/skills/reload")
    assert (body["updated_new_version"], body["failed"]) == (["keep"], [])
    assert (await env.get("/skill/keep"))[1]["description"] == "fixed"
    env.write("k.yaml", "name: [\n")
    await env.post("/skills/reload")
    (env.root / "k.yaml").unlink()
    status, body = await env.post("/skills/reload")
    assert (body["removed"], body["failed"]) == (["keep"], [])


async def test_reload_classifies_changes_and_only_parses_changed_files(start):
    env = await start({"a.yaml": "name: a\nversion: '1.0.0'\n", "b.yaml": "name: b\n", "c.yaml": "name: c\n"})
    registry = env.skills.registry
    parses = registry.parses
    assert parses == 3
    env.write("a.yaml", "name: a\nversion: '1.1.0'\n")
    env.write("b.yaml", "name: b\ndescription: changed\n")
    (env.root / "c.yaml").unlink()
    env.write("d/SKILL.md", "---\nname: d\n---\nx\n")
    status, body = await env.post("/skills/reload")
    assert body == {
        "ok": True, "inserted": ["d"], "updated_same_version": ["b"], "updated_new_version": ["a"],
        "removed": ["c"], "failed": [],
    }
    assert registry.parses == parses + 3
    assert await env.audits("skills.reload") == [("api", "skills", "ok", "inserted=1 updated=2 removed=1 failed=0")]
    [event] = env.recorder.of_type("skill_reloaded")
    assert (event.source, event.delivery) == ("skill:hot_reload", "at_most_once")
    assert event.payload == {k: v for k, v in body.items() if k != "ok"}
    status, again = await env.post("/skills/reload")  # idempotent: nothing changed, no event
    assert again == {**body, "inserted": [], "updated_same_version": [], "updated_new_version": [], "removed": []}
    assert registry.parses == parses + 3
    assert len(env.recorder.of_type("skill_reloaded")) == 1


async def test_a_missing_directory_is_created_and_the_result_is_empty(start):
    env = await start()
    env.root.rmdir()
    status, body = await env.post("/skills/reload")
    assert (status, body["inserted"], body["failed"]) == (200, [], [])
    assert env.root.is_dir()


async def test_an_unreadable_directory_answers_500(start):
    env = await start()
    env.root.rmdir()
    env.root.write_text("a file where the directory should be")
    status, body = await env.post("/skills/reload")
    assert status == 500
    [(operator, target, outcome, detail)] = await env.audits("skills.reload")
    assert (target, outcome) == ("skills", "error")
    assert body["error"].startswith(f"cannot read skills directory {env.root}")


async def test_default_directory_is_under_the_runtime_dir(make_kernel, serve_kernel, tmp_path):
    runtime = tmp_path / "runtime"
    write(runtime / "skills", "x.yaml", "name: x\n")
    kernel = make_kernel(settings={"skills.hot_reload.enabled": False})
    client = await serve_kernel(kernel)
    resp = await client.get("/skill/x")
    assert (await resp.get_json())["path"] == str(runtime / "skills" / "x.yaml")
    config = await (await client.get("/runtime/config")).get_json()
    assert config["skills_dir"] == str(runtime / "skills")


async def test_skills_dir_is_relative_to_the_config_file(make_kernel, serve_kernel, tmp_path):
    conf = tmp_path / "conf"
    write(conf / "my-skills", "x.yaml", "name: x\n")
    (conf / "aman.toml").write_text('[skills]\ndir = "my-skills"\n[skills.hot_reload]\nenabled = false\n')
    kernel = make_kernel(config_path=conf / "aman.toml")
    client = await serve_kernel(kernel)
    assert (await (await client.get("/skill/x")).get_json())["path"] == str(conf / "my-skills" / "x.yaml")
