"""The soul watcher (http-api §12, ``soul.watch``): edits on disk reload the soul, publish
``soul_changed`` and write the system audit record ``soul.changed``; the plugin's own writes are
not reported a second time."""

from __future__ import annotations

import hashlib

from sdk import SOULS
from sdk.testing import Recorder, wait_for

from .conftest import EXAMPLE, Env, soul

CONFIRM = {"x-aman-confirm": "yes"}
WATCH = {"soul.watch": True}
FILE_EVENT = 10.0  # file events come through the OS watcher: allow more time than the default


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


async def test_an_edit_on_disk_reloads_publishes_and_audits(start):
    env = await start({"SOUL.md": EXAMPLE}, settings=WATCH)
    path = env.runtime / "SOUL.md"
    before = (await env.get("/soul/info"))[1]["last_changed_at"]
    await env.until_watching(path)
    assert env.recorder.seen == [] and await env.audits("soul.changed") == []  # unchanged rewrites
    edited = soul("Nova", "never swear")
    path.write_text(edited)
    await wait_for(lambda: len(env.recorder.seen) == 1, timeout=FILE_EVENT)
    assert env.events() == [
        (
            "soul:system",
            {"name": "Nova", "boundaries": ["never swear"], "preferences": ["brevity"]},
            None,
        )
    ]
    assert await env.audits("soul.changed") == [("system", "soul", "ok", sha(edited))]
    status, info = await env.get("/soul/info")
    assert (status, info["name"], info["boundaries"]) == (200, "Nova", ["never swear"])
    assert info["last_changed_at"] > before
    assert env.kernel.stash[SOULS].for_agent("aman").boundaries == ("never swear",)


async def test_invalid_content_keeps_the_soul_and_a_removed_file_unloads_it(start):
    env = await start({"SOUL.md": EXAMPLE}, settings=WATCH)
    path = env.runtime / "SOUL.md"
    watcher = env.souls.watcher
    await env.until_watching(path)
    seen = watcher.batches
    path.write_bytes(b"  \n")
    await wait_for(lambda: watcher.batches > seen, timeout=FILE_EVENT)
    assert (await env.get("/soul/raw"))[1]["raw"] == EXAMPLE  # the previous soul stays
    path.unlink()
    await wait_for(lambda: len(env.recorder.seen) == 1, timeout=FILE_EVENT)
    assert env.events() == [
        ("soul:system", {"name": None, "boundaries": [], "preferences": []}, None)
    ]
    assert await env.get("/soul/info") == (404, {"error": "no soul configured"})
    assert await env.audits("soul.changed") == [("system", "soul", "ok", "removed")]
    path.write_text(EXAMPLE)
    await wait_for(lambda: len(env.recorder.seen) == 2, timeout=FILE_EVENT)
    assert (await env.get("/soul/info"))[1]["name"] == "Aman"


async def test_an_update_through_the_api_is_reported_once(start):
    env = await start({"SOUL.md": EXAMPLE}, settings=WATCH)
    path = env.runtime / "SOUL.md"
    watcher = env.souls.watcher
    await env.until_watching(path)
    seen = watcher.batches
    assert (await env.post("/soul/update", json={"content": soul("Api")}))[0] == 200
    await wait_for(lambda: watcher.batches > seen, timeout=FILE_EVENT)  # the watcher saw the write
    path.write_text(soul("Disk"))
    await wait_for(lambda: len(env.recorder.seen) == 2, timeout=FILE_EVENT)
    assert [payload["name"] for _, payload, _ in env.events()] == ["Api", "Disk"]
    assert await env.audits("soul.changed") == [("system", "soul", "ok", sha(soul("Disk")))]


async def test_an_agent_soul_created_later_is_picked_up(start):
    env = await start({"SOUL.md": EXAMPLE}, settings=WATCH)
    await env.until_watching(env.runtime / "SOUL.md")
    own = env.runtime / "agents" / "aman" / "SOUL.md"
    own.parent.mkdir(parents=True)  # a directory that did not exist: looked for every second
    own.write_text(soul("Own", "never mention cats"))
    await wait_for(lambda: len(env.recorder.seen) == 1, timeout=FILE_EVENT)
    assert env.events() == [
        (
            "soul:system",
            {"name": "Own", "boundaries": ["never mention cats"], "preferences": ["brevity"]},
            "aman",
        )
    ]
    assert await env.audits("soul.changed") == [
        ("system", "agent:aman", "ok", sha(soul("Own", "never mention cats")))
    ]
    view = env.kernel.stash[SOULS].for_agent("aman")
    assert (view.name, view.source) == ("Own", "agent")


async def test_watching_follows_soul_watch(make_kernel, serve_kernel, tmp_path):
    (tmp_path / "SOUL.md").write_text(EXAMPLE)
    (tmp_path / "aman.toml").write_text('[soul]\npath = "SOUL.md"\nwatch = false\n')
    recorder = Recorder("soul_changed")
    kernel = make_kernel(recorder, config_path=tmp_path / "aman.toml")
    env = Env(await serve_kernel(kernel), kernel, tmp_path, recorder)
    assert env.souls.watcher is None
    watch_on = {"changes": {"soul.watch": True}}
    assert (await env.post("/config/set", json=watch_on, headers=CONFIRM))[0] == 200
    await env.until_watching(tmp_path / "SOUL.md")
    (tmp_path / "SOUL.md").write_text(soul("Live"))
    await wait_for(lambda: len(recorder.seen) == 1, timeout=FILE_EVENT)
    watch_off = {"changes": {"soul.watch": False}}
    assert (await env.post("/config/set", json=watch_off, headers=CONFIRM))[0] == 200
    assert env.souls.watcher is None
