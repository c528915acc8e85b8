"""``GET /cron``, ``POST /cron/add``, ``/cron/{id}/update``, ``/cron/{id}/remove`` (http-api §19),
and cron jobs as event sources (http-api §6)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sdk import ConfigError, hookimpl

CONFIRM = {"x-aman-confirm": "yes"}
OPS = {"x-aman-operator": "ops"}
JOB_KEYS = {
    "id", "expression", "timezone", "enabled", "agent_key", "prompt", "misfire", "session_id",
    "state", "created_at_ms", "updated_at_ms", "next_run_at_ms", "last_run_at_ms",
}


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


async def answer(resp) -> tuple[int, dict]:
    return resp.status_code, await resp.get_json()


async def audits(kernel, action: str) -> list[tuple[str, str, str, str]]:
    page = await kernel.audit.query(action=action)
    return [(r.operator, r.target, r.outcome, r.detail) for r in reversed(page.items)]


class Feed:
    """A plugin source whose id a cron job may not take."""

    id, kind, mode, trust_level = "feed", "plugin", "push", "trusted"

    def settings(self):
        return {}

    async def start(self, emit): ...
    async def stop(self): ...
    async def pause(self): ...
    async def resume(self): ...
    async def reconfigure(self, changes): ...


class FeedOwner:
    name = "feed-owner"

    @hookimpl
    def register_sources(self):
        return [Feed()]


# --- add and list ------------------------------------------------------------------------------


async def test_add_answers_the_job_and_lists_it(cron):
    clock = cron.fake_clock()
    status, body = await answer(
        await cron.client.post(
            "/cron/add",
            json={"id": "nightly-report", "expression": "0 2 * * *", "timezone": "Europe/Berlin",
                  "agent_key": "aman", "prompt": "Write the nightly report."},
            headers=OPS,
        )
    )
    assert status == 200 and body["ok"] is True
    job = body["job"]
    assert set(job) == JOB_KEYS
    now = int(clock.now.timestamp() * 1000)
    assert job == {
        "id": "nightly-report", "expression": "0 2 * * *", "timezone": "Europe/Berlin", "enabled": True,
        "agent_key": "aman", "prompt": "Write the nightly report.", "misfire": "skip", "session_id": None,
        "state": "running", "created_at_ms": now, "updated_at_ms": now,
        "next_run_at_ms": ms(2030, 1, 1, 1), "last_run_at_ms": None,  # 02:00 in Berlin is 01:00 UTC
    }
    assert await answer(await cron.client.get("/cron")) == (200, {"items": [job]})
    assert await audits(cron.kernel, "cron.add") == [("ops", "cron:nightly-report", "ok", "0 2 * * *")]


async def test_defaults_and_the_list_is_sorted_by_id(start_cron):
    cron = await start_cron(settings={"cron.default_timezone": "America/New_York"})
    for job_id in ("b", "a", "C"):
        assert (await cron.add(id=job_id, expression="@daily")).status_code == 200
    items = (await (await cron.client.get("/cron")).get_json())["items"]
    assert [i["id"] for i in items] == ["C", "a", "b"]
    assert {(i["timezone"], i["enabled"], i["agent_key"], i["prompt"], i["misfire"]) for i in items} == {
        ("America/New_York", True, "", None, "skip")
    }


ADD_ERRORS = [
    ({"id": "bad id", "expression": "@daily"}, 400, "invalid cron job id: bad id"),
    ({"id": "", "expression": "@daily"}, 400, "invalid cron job id: "),
    ({"id": "-x", "expression": "@daily"}, 400, "invalid cron job id: -x"),
    ({"id": "x" * 129, "expression": "@daily"}, 400, "invalid cron job id: " + "x" * 129),
    ({"id": "j", "expression": "0 0 31 2 *"}, 400, "invalid cron expression '0 0 31 2 *': never fires"),
    ({"id": "j", "expression": "* * *"}, 400, "invalid cron expression '* * *': expected 5 or 6 fields, got 3"),
    ({"id": "j", "expression": "@daily", "timezone": "Mars/Olympus"}, 400, "unknown time zone: Mars/Olympus"),
    ({"id": "j", "expression": "@daily", "agent_key": "bob"}, 404, "agent not found: bob"),
    ({"id": "j", "expression": "@daily", "prompt": ""}, 400, "field 'prompt' must be between 1 and 10000 characters"),
    ({"id": "j", "expression": "@daily", "prompt": "x" * 10_001}, 400, "field 'prompt' must be between 1 and 10000 characters"),
    ({"id": "j", "expression": "@daily", "misfire": "twice"}, 400, "invalid value for 'misfire': 'twice' (expected one of: skip, run_once)"),
    ({"id": "j"}, 400, "missing required field 'expression'"),
    ({"expression": "@daily"}, 400, "missing required field 'id'"),
    ({"id": "j", "expression": "@daily", "enabled": "yes"}, 400, "field 'enabled' must be a boolean"),
    ({"id": 5, "expression": "@daily"}, 400, "field 'id' must be a string"),
    # the order of the error table: id, expression, time zone, agent
    ({"id": "bad id", "expression": "bad", "timezone": "Mars/Olympus"}, 400, "invalid cron job id: bad id"),
    ({"id": "j", "expression": "bad", "timezone": "Mars/Olympus"}, 400, "invalid cron expression 'bad': expected 5 or 6 fields, got 1"),
    ({"id": "j", "expression": "@daily", "timezone": "Mars/Olympus", "agent_key": "bob"}, 400, "unknown time zone: Mars/Olympus"),
]


async def test_add_errors(cron):
    for body, status, error in ADD_ERRORS:  # one kernel for every row keeps the suite fast
        assert await answer(await cron.add(**body)) == (status, {"error": error}), body
    assert await answer(await cron.client.get("/cron")) == (200, {"items": []})
    assert [r[3] for r in await audits(cron.kernel, "cron.add")] == [error for _, _, error in ADD_ERRORS]


async def test_add_error_audits_name_the_job(cron):
    await cron.add(id="j", expression="0 0 31 2 *")
    await cron.add(id="k")
    assert await audits(cron.kernel, "cron.add") == [
        ("api", "cron:j", "error", "invalid cron expression '0 0 31 2 *': never fires"),
        ("api", "cron", "error", "missing required field 'expression'"),  # refused before the handler
    ]


async def test_the_agent_is_none_or_the_default_agent(cron):
    assert (await cron.add(id="a", expression="@daily", agent_key="")).status_code == 200
    assert (await cron.add(id="b", expression="@daily", agent_key="aman")).status_code == 200


async def test_unknown_fields_of_add_are_ignored(cron):
    status, body = await answer(await cron.add(id="j", expression="@daily", colour="blue"))
    assert status == 200 and "colour" not in body["job"]


async def test_the_minimum_interval_comes_from_the_configuration(start_cron):
    cron = await start_cron(settings={"cron.min_interval_sec": 60})
    assert await answer(await cron.add(id="j", expression="*/30 * * * * *")) == (
        400,
        {"error": "cron expression '*/30 * * * * *' fires more often than every 60 s"},
    )
    assert (await cron.add(id="j", expression="* * * * *")).status_code == 200


async def test_ids_are_unique_among_all_sources(start_cron):
    cron = await start_cron(FeedOwner())
    assert (await cron.add(id="j", expression="@daily")).status_code == 200
    assert await answer(await cron.add(id="j", expression="@hourly")) == (409, {"error": "source already exists: j"})
    assert await answer(await cron.add(id="feed", expression="@hourly")) == (409, {"error": "source already exists: feed"})
    assert (await cron.job("j"))["expression"] == "@daily"
    assert [r[2:] for r in await audits(cron.kernel, "cron.add")][1:] == [
        ("error", "source already exists: j"), ("error", "source already exists: feed")
    ]


# --- update ------------------------------------------------------------------------------------


async def test_update_merges_fields_and_recomputes_the_next_run(cron):
    clock = cron.fake_clock()
    await cron.add(id="j", expression="0 0 1 1 *", prompt="Hello")
    assert (await cron.job("j"))["next_run_at_ms"] == ms(2031, 1, 1)
    clock.advance(seconds=10)
    status, body = await answer(
        await cron.client.post("/cron/j/update", json={"expression": "0 12 * * *"}, headers=OPS)
    )
    assert status == 200 and body["ok"] is True
    job = body["job"]
    assert (job["expression"], job["prompt"], job["next_run_at_ms"]) == ("0 12 * * *", "Hello", ms(2030, 1, 1, 12))
    assert job["updated_at_ms"] == job["created_at_ms"] + 10_000
    assert await cron.job("j") == job
    assert await audits(cron.kernel, "cron.update") == [("ops", "cron:j", "ok", "0 12 * * *")]

    job = (await (await cron.client.post("/cron/j/update", json={"timezone": "Asia/Tokyo"})).get_json())["job"]
    assert job["next_run_at_ms"] == ms(2030, 1, 1, 3)  # noon in Tokyo
    job = (await (await cron.client.post("/cron/j/update", json={"prompt": None})).get_json())["job"]
    assert job["prompt"] is None
    job = (await (await cron.client.post("/cron/j/update", json={"agent_key": "aman", "misfire": "run_once"})).get_json())["job"]
    assert (job["agent_key"], job["misfire"]) == ("aman", "run_once")


async def test_an_empty_update_changes_nothing(cron):
    job = (await (await cron.add(id="j", expression="@daily")).get_json())["job"]
    assert await answer(await cron.client.post("/cron/j/update")) == (200, {"ok": True, "job": job})
    assert await answer(await cron.client.post("/cron/j/update", json={})) == (200, {"ok": True, "job": job})
    same = {"expression": "@daily", "enabled": True, "prompt": None, "timezone": "UTC"}
    assert await answer(await cron.client.post("/cron/j/update", json=same)) == (200, {"ok": True, "job": job})
    assert [r[3] for r in await audits(cron.kernel, "cron.update")] == ["@daily", "@daily", "@daily"]


async def test_disabling_clears_the_next_run_and_enabling_sets_it(cron):
    await cron.add(id="j", expression="@daily")
    job = (await (await cron.client.post("/cron/j/update", json={"enabled": False})).get_json())["job"]
    assert (job["enabled"], job["state"], job["next_run_at_ms"]) == (False, "running", None)
    job = (await (await cron.client.post("/cron/j/update", json={"enabled": True})).get_json())["job"]
    assert job["enabled"] is True and job["next_run_at_ms"] is not None


UPDATE_ERRORS = [
    ({"colour": "blue"}, 400, "unknown cron job field: colour"),
    ({"expression": "@daily", "id": "k"}, 400, "unknown cron job field: id"),
    ({"expression": 5}, 400, "field 'expression' must be a string"),
    ({"timezone": None}, 400, "field 'timezone' must be a string"),
    ({"enabled": "no"}, 400, "field 'enabled' must be a boolean"),
    ({"agent_key": 1}, 400, "field 'agent_key' must be a string"),
    ({"prompt": 1}, 400, "field 'prompt' must be a string"),
    ({"misfire": None}, 400, "invalid value for 'misfire': 'None' (expected one of: skip, run_once)"),
    ({"expression": "* * * * 8"}, 400, "invalid cron expression '* * * * 8': value 8 out of range 0-7 in day-of-week field"),
    ({"timezone": "Nowhere"}, 400, "unknown time zone: Nowhere"),
    ({"agent_key": "bob"}, 404, "agent not found: bob"),
    ({"prompt": ""}, 400, "field 'prompt' must be between 1 and 10000 characters"),
]


async def test_update_errors_change_nothing(cron):
    job = (await (await cron.add(id="j", expression="@daily", prompt="p")).get_json())["job"]
    for body, status, error in UPDATE_ERRORS:
        assert await answer(await cron.client.post("/cron/j/update", json=body)) == (status, {"error": error}), body
    assert await cron.job("j") == job
    assert await audits(cron.kernel, "cron.update") == [("api", "cron:j", "error", e) for _, _, e in UPDATE_ERRORS]


async def test_update_of_an_unknown_job(cron):
    assert await answer(await cron.client.post("/cron/nope/update", json={})) == (
        404, {"error": "cron job not found: nope"}
    )
    assert await answer(await cron.client.post("/cron/nope/update", json=[1])) == (
        400, {"error": "request body must be a JSON object"}
    )
    assert (await cron.client.post("/cron/nope/update", data="x", headers={"content-type": "text/plain"})).status_code == 415


async def test_the_minimum_interval_applies_to_updated_expressions(start_cron):
    cron = await start_cron(settings={"cron.min_interval_sec": 120})
    await cron.add(id="j", expression="*/5 * * * *")
    assert await answer(await cron.client.post("/cron/j/update", json={"expression": "* * * * *"})) == (
        400, {"error": "cron expression '* * * * *' fires more often than every 120 s"}
    )


async def test_a_raised_minimum_spares_what_an_update_does_not_change(start_cron):
    cron = await start_cron()
    await cron.add(id="j", expression="* * * * *", timezone="UTC")
    await cron.client.post("/config/set", json={"changes": {"cron.min_interval_sec": 3600}},
                           headers={"x-aman-confirm": "yes"})
    status, body = await answer(await cron.client.post("/cron/j/update", json={"timezone": "UTC", "enabled": False}))
    assert (status, body["job"]["timezone"], body["job"]["enabled"]) == (200, "UTC", False)
    assert (await cron.client.post("/cron/j/update", json={"timezone": "Europe/Berlin"})).status_code == 400


# --- remove ------------------------------------------------------------------------------------


async def test_remove_deletes_the_job_and_its_source(cron):
    await cron.add(id="j", expression="@daily")
    await cron.add(id="k", expression="@daily")
    assert await answer(await cron.client.post("/cron/j/remove", headers=OPS)) == (200, {"ok": True})
    assert await answer(await cron.client.post("/cron/k/remove", json={"agent_key": "aman"})) == (200, {"ok": True})
    assert await answer(await cron.client.get("/cron")) == (200, {"items": []})
    sources = (await (await cron.client.get("/event-sources")).get_json())["items"]
    assert [s for s in sources if s["kind"] == "cron"] == []
    assert await answer(await cron.client.post("/cron/j/remove")) == (404, {"error": "cron job not found: j"})
    assert await audits(cron.kernel, "cron.remove") == [
        ("ops", "cron:j", "ok", ""), ("api", "cron:k", "ok", ""), ("api", "cron:j", "error", "cron job not found: j")
    ]
    assert (await cron.add(id="j", expression="@hourly")).status_code == 200  # the id is free again


async def test_a_new_job_does_not_inherit_the_pause_of_a_removed_one(cron):
    await cron.add(id="j", expression="@daily")
    await cron.client.post("/event-source/j/pause")
    await cron.client.post("/cron/j/remove")
    await cron.add(id="j", expression="@daily")
    assert (await cron.job("j"))["state"] == "running"


# --- jobs are event sources --------------------------------------------------------------------


async def test_a_job_is_a_cron_source(cron):
    await cron.add(id="j", expression="@daily", prompt="p")
    sources = (await (await cron.client.get("/event-sources")).get_json())["items"]
    (source,) = [s for s in sources if s["id"] == "j"]
    assert {k: source[k] for k in ("kind", "plugin", "mode", "trust_level", "state", "paused_by")} == {
        "kind": "cron", "plugin": "cron", "mode": "pull", "trust_level": "trusted", "state": "running", "paused_by": []
    }
    assert source["config"] == {
        "expression": "@daily", "timezone": "UTC", "enabled": True, "agent_key": "", "prompt": "p", "misfire": "skip"
    }


async def test_source_config_updates_the_job(cron):
    clock = cron.fake_clock()
    await cron.add(id="j", expression="@daily")
    status, body = await answer(await cron.client.put("/event-source/j/config", json={"expression": "0 6 * * *"}))
    assert status == 200 and body["source"]["config"]["expression"] == "0 6 * * *"
    job = await cron.job("j")
    assert (job["expression"], job["next_run_at_ms"]) == ("0 6 * * *", ms(2030, 1, 1, 6))
    assert await answer(await cron.client.put("/source/j/config", json={"bogus": 1})) == (
        400, {"error": "unknown config key for source j: bogus"}
    )
    assert await answer(await cron.client.put("/event-source/j/config", json={"expression": "@reboot"})) == (
        400, {"error": "invalid cron expression '@reboot': unsupported alias '@reboot'"}
    )
    assert await answer(await cron.client.put("/event-source/j/config", json={"enabled": 1})) == (
        400, {"error": "field 'enabled' must be a boolean"}
    )
    assert (await cron.job("j"))["expression"] == "0 6 * * *"
    del clock


async def test_pausing_the_source_pauses_the_job(cron):
    await cron.add(id="j", expression="@daily")
    assert (await cron.client.post("/event-source/j/pause")).status_code == 200
    job = await cron.job("j")
    assert (job["state"], job["next_run_at_ms"]) == ("paused", None)
    assert (await cron.client.post("/source/j/resume")).status_code == 200
    job = await cron.job("j")
    assert job["state"] == "running" and job["next_run_at_ms"] is not None


async def test_while_the_plugin_is_disabled_cron_routes_answer_503(cron):
    await cron.add(id="j", expression="@daily")
    assert (await cron.client.post("/plugin/cron/disable", headers=CONFIRM)).status_code == 200
    for method, path in (("GET", "/cron"), ("POST", "/cron/add"), ("POST", "/cron/j/update"), ("POST", "/cron/j/remove")):
        resp = await cron.client.open(path, method=method, json={})
        assert await answer(resp) == (503, {"error": "plugin cron is disabled"})
    sources = (await (await cron.client.get("/event-sources")).get_json())["items"]
    assert "j" not in [s["id"] for s in sources]
    assert (await cron.client.post("/plugin/cron/enable")).status_code == 200
    assert (await cron.job("j"))["state"] == "running"  # reloaded from the store


async def test_the_default_time_zone_must_exist(make_kernel, cron):
    with pytest.raises(ConfigError, match="unknown time zone: Mars/Olympus"):
        make_kernel(settings={"cron.default_timezone": "Mars/Olympus"})
    resp = await cron.client.post(
        "/config/set", json={"changes": {"cron.default_timezone": "Nowhere"}}, headers=CONFIRM
    )
    assert await answer(resp) == (
        400,
        {"error": "invalid configuration: invalid value for 'cron.default_timezone': unknown time zone: Nowhere"},
    )
    resp = await cron.client.post(
        "/config/set", json={"changes": {"cron.default_timezone": "Europe/Berlin"}}, headers=CONFIRM
    )
    assert resp.status_code == 200
    assert (await (await cron.add(id="j", expression="@daily")).get_json())["job"]["timezone"] == "Europe/Berlin"


async def test_a_source_table_cannot_take_a_job_id_and_a_start_up_survives_one(
    start_cron, tmp_path
):
    """A cron job ``timer:t1`` (a valid id) and a ``[sources.timer.t1]`` table would be two
    sources with one id: ``/config/set`` refuses the table, and a file that has it anyway (edited
    by hand) leaves the job running and the table without its source, instead of a failed start."""
    runtime = tmp_path / "rt"
    cron = await start_cron(runtime_dir=runtime)
    assert (await cron.add(id="timer:t1", expression="@daily")).status_code == 200
    resp = await cron.client.post(
        "/config/set", headers=CONFIRM,
        json={"changes": {"sources.timer.t1.interval_ms": 60_000,
                          "sources.webhook.w.event_type": "x.y"}},
    )
    assert await answer(resp) == (
        400, {"error": "invalid configuration: source timer:t1 already exists (a cron source)"})
    assert not (tmp_path / "aman.toml").exists()  # all or nothing: the webhook table neither
    await cron.kernel.lifecycle.shutdown()

    config = tmp_path / "aman.toml"
    config.write_text("[sources.timer.t1]\ninterval_ms = 60000\n")
    again = await start_cron(runtime_dir=runtime, config_path=config)
    assert again.kernel.lifecycle.status == "ready"
    listed = (await (await again.client.get("/event-sources")).get_json())["items"]
    assert [(s["id"], s["kind"]) for s in listed if s["id"] == "timer:t1"] == [("timer:t1", "cron")]
    assert (await again.job("timer:t1"))["state"] == "running"
