"""Trigger matching (formats §2.3) and dispatch (http-api §4): executors from plugins, the
concurrency modes, ``message:dispatch`` / ``message:completed`` and the skill runner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from builtin_plugins.skills.loader import Skill, Trigger, matches
from sdk import SKILL_RUNNER, Conflict, NotFound, hookimpl
from sdk.testing import wait_for


def skill(*triggers: Trigger) -> Skill:
    return Skill(name="s", triggers=triggers)


@pytest.mark.parametrize(
    ("trigger", "event", "expected"),
    [
        # match_all false: any non-empty list containing the value; all empty = every event
        (Trigger(), ("x", "y", "low"), True),
        (Trigger(event_types=("a",)), ("a", "src", "normal"), True),
        (Trigger(event_types=("a",)), ("b", "src", "normal"), False),
        (Trigger(event_types=("a",), sources=("src",)), ("b", "src", "normal"), True),
        (Trigger(event_types=("a",), priorities=("high",)), ("b", "src", "high"), True),
        (Trigger(event_types=("a",), priorities=("high",)), ("b", "src", "low"), False),
        # match_all true: every non-empty list must contain the value
        (Trigger(match_all=True), ("x", "y", "low"), True),
        (Trigger(event_types=("a",), sources=("src",), match_all=True), ("a", "src", "low"), True),
        (Trigger(event_types=("a",), sources=("src",), match_all=True), ("a", "other", "low"), False),
        (Trigger(event_types=("a",), priorities=("high",), match_all=True), ("a", "s", "normal"), False),
        # prefix patterns in event types and sources, not in priorities
        (Trigger(sources=("watch:*",)), ("file_created", "watch:inbox", "normal"), True),
        (Trigger(sources=("watch:*",)), ("file_created", "watcher", "normal"), False),
        (Trigger(event_types=("agent:*",)), ("agent:reply_ready", "s", "normal"), True),
        (Trigger(event_types=("*",)), ("anything", "s", "normal"), True),
        (Trigger(event_types=("timer*",), sources=("cron:*",), match_all=True), ("timer_tick", "cron:j", "low"), True),
        (Trigger(event_types=("timer*",), sources=("cron:*",), match_all=True), ("timer_tick", "timer:j", "low"), False),
        (Trigger(event_types=("a*b",)), ("a*b", "s", "normal"), True),  # '*' only at the end
        (Trigger(event_types=("a*b",)), ("axb", "s", "normal"), False),
    ],
)
def test_trigger_matching(trigger, event, expected):
    assert matches(skill(trigger), *event) is expected


def test_a_skill_matches_when_any_trigger_matches_and_never_without_triggers():
    assert not matches(skill(), "a", "s", "normal")
    assert matches(skill(Trigger(event_types=("x",)), Trigger(event_types=("a",))), "a", "s", "normal")


class Executors:
    """An inline plugin contributing executors; it records what ran and can hold executions."""

    name = "executors"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.gate = asyncio.Event()
        self.gate.set()

    @hookimpl
    def register_skill_executors(self):
        return {
            "echo": self.make("echo"),
            "slow": self.make("slow", wait=True),
            "limited": self.make("limited", wait=True),
            "free": self.make("free", wait=True),
            "boom": self.boom,
            "sync": self.sync,
        }

    def make(self, name: str, wait: bool = False):
        async def run(event):
            self.calls.append((name, event.id))
            self.active[name] = self.active.get(name, 0) + 1
            self.peak[name] = max(self.peak.get(name, 0), self.active[name])
            try:
                if wait:
                    await self.gate.wait()
            finally:
                self.active[name] -= 1

        return run

    async def boom(self, event):
        raise RuntimeError("exploded")

    def sync(self, event):  # a sync executor runs in a worker thread
        self.calls.append(("sync", event.id))


SKILL_FILES = {
    "echo.yaml": "name: echo\ntriggers: [{event_types: [ping]}]\n",
    "slow.yaml": "name: slow\ntriggers: [{event_types: [work]}]\n",
    "limited.yaml": "name: limited\nconcurrency: {limited: 2}\ntriggers: [{event_types: [work]}]\n",
    "free.yaml": "name: free\nconcurrency: parallel\ntriggers: [{event_types: [work]}]\n",
    "boom.yaml": "name: boom\ntriggers: [{event_types: [ping]}]\n",
    "sync.yaml": "name: sync\ntriggers: [{event_types: [ping]}]\n",
    "declarative.yaml": "name: declarative\ntriggers: [{event_types: [ping]}]\n",
    "catch-all.yaml": "name: catch-all\ntriggers: [{}]\nenabled: false\n",
    "keywords.yaml": "name: keywords\ntriggers: [ping, work]\n",
}


async def test_hook_register_skill_executors(start):
    plugin = Executors()
    env = await start(SKILL_FILES, plugin)
    result = await env.kernel.bus.publish("ping", {"n": 1}, source="test")
    await wait_for(lambda: env.recorder.of_type("message:completed"))
    assert sorted(name for name, _ in plugin.calls) == ["echo", "sync"]
    [dispatch] = env.recorder.of_type("message:dispatch")
    [completed] = env.recorder.of_type("message:completed")
    assert dispatch.payload == {"trace_id": result.trace_id}
    assert completed.payload == {
        "trace_id": result.trace_id,
        "executed": ["declarative", "echo", "sync"],
        "failed": [{"name": "boom", "error": "exploded"}],
    }
    for event in (dispatch, completed):
        assert (event.source, event.delivery) == ("skill:dispatcher", "at_most_once")
        assert (event.metadata.trace_id, event.metadata.parent_event_id) == (result.trace_id, result.id)
    assert env.recorder.seen.index(dispatch) < env.recorder.seen.index(completed)


async def test_no_dispatch_without_a_match_for_idle_and_for_skill_sources(start):
    plugin = Executors()
    env = await start({**SKILL_FILES, "all.yaml": "name: all\ntriggers: [{}]\n"}, plugin)
    ids = [
        (await env.kernel.bus.publish("idle", {}, source="test")).id,
        (await env.kernel.bus.publish("ping", {}, source="skill:mine")).id,
    ]
    last = await env.kernel.bus.publish("nothing-matches", {}, source="test")
    await wait_for(lambda: [e for e in env.recorder.seen if e.metadata.parent_event_id == last.id])
    await asyncio.sleep(0.05)
    assert [e for e in env.recorder.seen if e.metadata.parent_event_id in ids] == []
    [completed] = [e for e in env.recorder.of_type("message:completed") if e.metadata.parent_event_id == last.id]
    assert completed.payload["executed"] == ["all"]  # via the catch-all trigger


async def test_disabled_skills_do_not_run(start):
    plugin = Executors()
    env = await start(SKILL_FILES, plugin)
    assert (await env.post("/skill/echo/disable"))[0] == 200
    await env.kernel.bus.publish("ping", {}, source="test")
    await wait_for(lambda: env.recorder.of_type("message:completed"))
    assert "echo" not in env.recorder.of_type("message:completed")[0].payload["executed"]
    assert "catch-all" not in env.recorder.of_type("message:completed")[0].payload["executed"]


async def test_serial_never_overlaps_limited_caps_parallel_does_not(start):
    plugin = Executors()
    plugin.gate.clear()
    env = await start(SKILL_FILES, plugin)
    for n in range(5):
        await env.kernel.bus.publish("work", {"n": n}, source="test")
    # every event reached the skills without waiting for the slow ones to finish
    await wait_for(lambda: plugin.active.get("free") == 5)
    await wait_for(lambda: plugin.active.get("limited") == 2)
    assert plugin.active["slow"] == 1
    await asyncio.sleep(0.05)
    assert (plugin.active["slow"], plugin.active["limited"]) == (1, 2)
    plugin.gate.set()
    await wait_for(lambda: len(env.recorder.of_type("message:completed")) == 5)
    assert plugin.peak == {"slow": 1, "limited": 2, "free": 5}
    assert [n for n, _ in plugin.calls].count("slow") == 5


async def test_serial_skill_runs_events_in_order(start):
    plugin = Executors()
    env = await start(SKILL_FILES, plugin)
    ids = [(await env.kernel.bus.publish("work", {"n": n}, source="test")).id for n in range(10)]
    await wait_for(lambda: len(env.recorder.of_type("message:completed")) == 10)
    assert [e for n, e in plugin.calls if n == "slow"] == ids


async def test_the_skill_runner_in_the_stash(start):
    plugin = Executors()
    env = await start(SKILL_FILES, plugin)
    runner = env.kernel.stash[SKILL_RUNNER]
    event = env.kernel.bus.build("anything", {}, source="test")
    await runner.run("echo", event)
    assert plugin.calls == [("echo", event.id)]
    await runner.run("declarative", event)
    with pytest.raises(RuntimeError, match="exploded"):
        await runner.run("boom", event)
    with pytest.raises(NotFound):
        await runner.run("nope", event)
    with pytest.raises(Conflict):
        await runner.run("catch-all", event)


async def test_an_edited_trigger_takes_effect_after_reload(start, tmp_path: Path):
    plugin = Executors()
    env = await start(SKILL_FILES, plugin)
    env.write("echo.yaml", "name: echo\ntriggers: [{event_types: [pong]}]\n")
    await env.post("/skills/reload")
    await env.kernel.bus.publish("pong", {}, source="test")
    await wait_for(lambda: env.recorder.of_type("message:completed"))
    assert env.recorder.of_type("message:completed")[0].payload["executed"] == ["echo"]
