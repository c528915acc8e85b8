"""Firing (http-api §19): ``cron_tick`` events, pauses, missed ticks, restarts, no repeats."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from datetime import UTC, datetime

from sdk.testing import wait_for

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")


def ms_of(scheduled_at: str) -> int:
    return int(datetime.fromisoformat(scheduled_at).timestamp() * 1000)


async def test_a_six_field_job_publishes_cron_ticks(cron):
    resp = await cron.add(id="every-second", expression="*/1 * * * * *", timezone="Asia/Kolkata", agent_key="aman")
    assert resp.status_code == 200
    await wait_for(lambda: len(cron.ticks()) >= 2)
    first, second = cron.ticks()[:2]
    assert first.source == "every-second"
    assert (first.event_type, first.delivery, first.trust_level) == ("cron_tick", "at_least_once", "trusted")
    assert set(first.payload) == {"cron_expression", "scheduled_at", "timezone", "job_id", "agent_key"}
    assert {k: v for k, v in first.payload.items() if k != "scheduled_at"} == {
        "cron_expression": "*/1 * * * * *", "timezone": "Asia/Kolkata", "job_id": "every-second", "agent_key": "aman"
    }
    at = first.payload["scheduled_at"]
    assert RFC3339.fullmatch(at) and at.endswith("+05:30")
    assert first.dedup_key == f"cron:every-second:{ms_of(at)}"
    # in order, on whole seconds, none twice (a check late by a second fires only the latest)
    stamps = [ms_of(e.payload["scheduled_at"]) for e in (first, second)]
    assert stamps[1] > stamps[0] and (stamps[1] - stamps[0]) % 1000 == 0
    job = await cron.job("every-second")
    assert job["last_run_at_ms"] >= stamps[1] and job["next_run_at_ms"] > job["last_run_at_ms"]
    assert len(set(await cron.published())) == len(await cron.published())


async def test_when_behind_only_the_latest_missed_tick_fires(cron):
    clock = cron.fake_clock()  # 2030-01-01T00:00:00.5Z
    await cron.add(id="j", expression="* * * * *")
    clock.advance(minutes=5)
    await cron.scheduler.check()
    await cron.scheduler.check()
    assert await cron.published("j") == ["2030-01-01T00:05:00+00:00"]
    assert (await cron.job("j"))["last_run_at_ms"] == ms_of("2030-01-01T00:05:00+00:00")
    assert (await cron.job("j"))["next_run_at_ms"] == ms_of("2030-01-01T00:06:00+00:00")


async def test_a_check_returns_after_a_check_already_firing_has_published(cron):
    clock = cron.fake_clock()
    await cron.add(id="j", expression="* * * * *")
    clock.advance(minutes=1)
    firing = asyncio.create_task(cron.scheduler.check())  # as the loop's check, once a second
    await asyncio.sleep(0)  # it is now storing the job's progress, the tick not yet published
    await cron.scheduler.check()  # nothing left due for this one: it waits for the other
    assert await cron.published("j") == ["2030-01-01T00:01:00+00:00"]
    await firing


async def test_pause_stops_firing_and_ticks_due_while_paused_are_skipped(cron):
    clock = cron.fake_clock()
    await cron.add(id="j", expression="* * * * *")
    clock.advance(minutes=1)
    await cron.scheduler.check()
    assert await cron.published("j") == ["2030-01-01T00:01:00+00:00"]

    assert (await cron.client.post("/event-source/j/pause")).status_code == 200
    clock.advance(minutes=3)
    await cron.scheduler.check()
    assert await cron.published("j") == ["2030-01-01T00:01:00+00:00"]

    assert (await cron.client.post("/event-source/j/resume")).status_code == 200
    await cron.scheduler.check()
    assert await cron.published("j") == ["2030-01-01T00:01:00+00:00"]  # 00:04 fell due while paused
    assert (await cron.job("j"))["next_run_at_ms"] == ms_of("2030-01-01T00:05:00+00:00")
    clock.advance(minutes=1)
    await cron.scheduler.check()
    assert await cron.published("j") == ["2030-01-01T00:01:00+00:00", "2030-01-01T00:05:00+00:00"]


async def test_a_disabled_job_does_not_fire_and_skips_what_it_missed(cron):
    clock = cron.fake_clock()
    await cron.add(id="j", expression="* * * * *", enabled=False, misfire="run_once")
    clock.advance(minutes=2)
    await cron.scheduler.check()
    assert await cron.published("j") == []
    await cron.client.post("/cron/j/update", json={"enabled": True})
    await cron.scheduler.check()
    assert await cron.published("j") == []
    clock.advance(minutes=1)
    await cron.scheduler.check()
    assert await cron.published("j") == ["2030-01-01T00:03:00+00:00"]


async def test_an_update_starts_the_new_schedule_from_now(cron):
    clock = cron.fake_clock()
    await cron.add(id="j", expression="0 0 1 1 *")
    clock.advance(minutes=30)
    await cron.client.post("/cron/j/update", json={"expression": "*/10 * * * *"})  # 00:10, 00:20 are past
    await cron.scheduler.check()
    assert await cron.published("j") == []
    clock.advance(minutes=10)
    await cron.scheduler.check()
    assert await cron.published("j") == ["2030-01-01T00:40:00+00:00"]


async def test_a_removed_job_stops_firing(cron):
    clock = cron.fake_clock()
    await cron.add(id="j", expression="* * * * *")
    clock.advance(minutes=1)
    await cron.scheduler.check()
    await cron.client.post("/cron/j/remove")
    clock.advance(minutes=1)
    await cron.scheduler.check()
    assert await cron.published("j") == ["2030-01-01T00:01:00+00:00"]


# --- restarts ----------------------------------------------------------------------------------


def _rewind(runtime, **fired_through_ms: int) -> None:
    """As if each job last fired long ago: the process was down while its ticks fell due."""
    with sqlite3.connect(runtime / "aman.db") as conn:
        for job_id, value in fired_through_ms.items():
            conn.execute("UPDATE cron_jobs SET fired_through_ms = ? WHERE id = ?", (value, job_id))


async def test_jobs_survive_a_restart(start_cron, tmp_path):
    runtime = tmp_path / "rt"
    first = await start_cron(runtime_dir=runtime)
    await first.add(id="j", expression="0 2 * * *", timezone="Europe/Berlin", prompt="p", misfire="run_once")
    await first.add(id="off", expression="@daily", enabled=False)
    await first.client.post("/event-source/j/pause")
    before = (await (await first.client.get("/cron")).get_json())["items"]
    await first.kernel.lifecycle.shutdown()
    _rewind(runtime, j=before[0]["created_at_ms"] - 3 * 86_400_000)  # ticks fell due while down

    second = await start_cron(runtime_dir=runtime)
    after = (await (await second.client.get("/cron")).get_json())["items"]
    assert after == before
    assert [(j["id"], j["state"], j["next_run_at_ms"]) for j in after] == [("j", "paused", None), ("off", "running", None)]
    await second.scheduler.check()
    await second.client.post("/event-source/j/resume")
    await second.scheduler.check()
    assert (await second.job("j"))["next_run_at_ms"] is not None
    assert await second.published() == []  # the operator's pause outlives run_once


async def test_after_a_restart_skip_publishes_nothing_and_run_once_exactly_one(start_cron, tmp_path):
    runtime = tmp_path / "rt"
    first = await start_cron(runtime_dir=runtime)
    for job_id, misfire in (("skipper", "skip"), ("catcher", "run_once")):
        await first.add(id=job_id, expression="0 0 1 1 *", misfire=misfire)  # every New Year
    await first.kernel.lifecycle.shutdown()
    three_years_ago = int(datetime(datetime.now(UTC).year - 3, 6, 1, tzinfo=UTC).timestamp() * 1000)
    _rewind(runtime, skipper=three_years_ago, catcher=three_years_ago)

    second = await start_cron(runtime_dir=runtime)
    latest = f"{datetime.now(UTC).year}-01-01T00:00:00+00:00"
    await second.scheduler.check()  # the loop's next check, without waiting for it
    await second.scheduler.check()
    assert await second.published("catcher") == [latest]  # only the latest of three missed
    assert await second.published("skipper") == []
    assert (await second.job("catcher"))["last_run_at_ms"] == ms_of(latest)
    await wait_for(lambda: [e.payload["scheduled_at"] for e in second.ticks()] == [latest])
    await second.kernel.lifecycle.shutdown()

    third = await start_cron(runtime_dir=runtime)
    await third.scheduler.check()
    assert await third.published("catcher") == [latest]  # never the same scheduled time twice
    assert third.ticks() == []


async def test_a_prompt_becomes_a_turn_in_the_jobs_background_session(cron):
    clock = cron.fake_clock()
    await cron.add(id="nightly", expression="* * * * *", prompt="Write the report.")
    clock.advance(minutes=1)
    await cron.scheduler.check()
    session_id = (await cron.job("nightly"))["session_id"]
    assert session_id is not None
    state = {}
    for _ in range(2000):
        state = await (await cron.client.get(f"/chat/session/{session_id}/state")).get_json()
        if state["state"] == "IDLE":
            break
        await asyncio.sleep(0.005)
    assert state["session_type"] == "background"
    assert [(m["role"], m["content"]) for m in state["messages"]] == [
        ("user", "Write the report."), ("assistant", "echo: Write the report.")]
    received = [e for e in state["events"] if e["event_type"] == "message_received"]
    assert [e["source"] for e in received] == ["cron:nightly"]
    clock.advance(minutes=1)
    await cron.scheduler.check()  # the next tick reuses the session
    assert (await cron.job("nightly"))["session_id"] == session_id
