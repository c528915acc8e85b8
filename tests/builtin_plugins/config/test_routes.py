"""``POST /config/set`` and ``GET /config`` (http-api §10; contract D10)."""

from __future__ import annotations

import asyncio
import tomllib
from typing import Any

import pytest

from sdk import hookimpl

CONFIRM = {"x-aman-confirm": "yes", "x-aman-operator": "ops"}


class Greeter:
    name = "greeter"

    def __init__(self) -> None:
        self.changes: list[dict[str, Any]] = []

    @hookimpl
    async def on_config_changed(self, ctx, changes) -> None:
        self.changes.append({"changes": dict(changes), "config": dict(ctx.config)})


@pytest.fixture(name="setup")
async def _setup(make_kernel, serve_kernel, tmp_path):
    path = tmp_path / "aman.toml"
    path.write_text('[http]\ntoken = "s3cret"\n\n[plugin.greeter]\ngreeting = "hi"\n')
    greeter = Greeter()
    kernel = make_kernel(greeter, config_path=path)
    client = await serve_kernel(kernel)
    events: list[Any] = []
    kernel.bus.observers.append(events.append)
    return client, kernel, path, greeter, events


AUTH = {"Authorization": "Bearer s3cret"}


async def config_set(client, changes: Any, **extra: Any):
    return await client.post("/config/set", json={"changes": changes, **extra}, headers={**AUTH, **CONFIRM})


async def test_set_applies_persists_audits_and_publishes(setup):
    client, kernel, path, _, events = setup
    resp = await config_set(
        client, {"event_bus.max_queue_size": 20000, "runtime.start_timeout_sec": 60, "audit.max_records": 5000}
    )
    assert await resp.get_json() == {
        "ok": True,
        "applied": ["audit.max_records", "event_bus.max_queue_size"],
        "restart_required": ["runtime.start_timeout_sec"],
        "overridden": [],
    }
    on_disk = tomllib.loads(path.read_text())
    assert on_disk["event_bus"] == {"max_queue_size": 20000}
    assert on_disk["runtime"]["start_timeout_sec"] == 60
    assert on_disk["http"]["token"] == "s3cret"  # keys not named are kept
    assert kernel.config.get("event_bus.max_queue_size") == 20000
    assert kernel.config.get("runtime.start_timeout_sec") == 30  # a restart key keeps its running value

    page = await kernel.audit.query(action="config.set")
    assert [(r.outcome, r.detail, r.operator) for r in page.items] == [
        ("ok", "audit.max_records,event_bus.max_queue_size,runtime.start_timeout_sec", "ops")
    ]
    changed = [e for e in events if e.event_type == "config_changed"]
    assert [e.payload for e in changed] == [
        {
            "keys": ["audit.max_records", "event_bus.max_queue_size", "runtime.start_timeout_sec"],
            "restart_required": ["runtime.start_timeout_sec"],
            "operator": "ops",
        }
    ]
    assert changed[0].delivery == "at_least_once"


async def test_config_changes_are_logged_with_secrets_redacted(setup):
    client, kernel, *_ = setup
    await config_set(client, {"http.token": "n3w", "http.max_body_bytes": 2048})
    rows = await kernel.store.fetchall("SELECT key, old_value, new_value, operator FROM config_log ORDER BY key")
    assert [tuple(r) for r in rows] == [
        ("http.max_body_bytes", None, "2048", "ops"),
        ("http.token", "[REDACTED]", "[REDACTED]", "ops"),
    ]
    assert (await client.get("/config", headers={"Authorization": "Bearer n3w"})).status_code == 200
    assert (await client.get("/config", headers=AUTH)).status_code == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "field 'changes' must be a non-empty object"),
        ({"changes": {}}, "field 'changes' must be a non-empty object"),
        ({"changes": []}, "field 'changes' must be a non-empty object"),
        ({"changed_fields": ["a"]}, "field 'changes' must be a non-empty object ('changed_fields' is not supported)"),
        ({"changes": {"event_bus.max_queue": 1}}, "unknown config key: event_bus.max_queue"),
        ({"changes": {"event_bus.max_queue_size": "big"}}, "invalid value for event_bus.max_queue_size: must be an integer"),
        ({"changes": {"event_bus.max_queue_size": 1}}, "invalid value for event_bus.max_queue_size: must be between 16 and 10000000"),
        ({"changes": {"http.bind": "0.0.0.0:9090", "http.token": None}},
         "invalid configuration: refusing to bind 0.0.0.0:9090 without an API token (set http.token or AMAN_HTTP_TOKEN)"),
        ({"changes": {"plugins.max_member_bytes": 2**30}},
         "invalid configuration: plugins.max_member_bytes must not exceed plugins.max_unpacked_bytes"),
    ],
)
async def test_a_failed_set_changes_nothing(setup, body, message):
    client, kernel, path, greeter, events = setup
    before = path.read_bytes()
    resp = await client.post("/config/set", json=body, headers={**AUTH, **CONFIRM})
    assert (resp.status_code, (await resp.get_json())["error"]) == (400, message)
    assert path.read_bytes() == before
    assert kernel.config.get("event_bus.max_queue_size") == 10000
    assert kernel.config.get("http.token") == "s3cret"
    assert [e for e in events if e.event_type == "config_changed"] == []
    page = await kernel.audit.query(action="config.set")
    assert [(r.outcome, r.detail) for r in page.items] == [("error", message)]


async def test_one_bad_key_among_good_ones_applies_nothing(setup):
    client, kernel, path, *_ = setup
    before = path.read_bytes()
    resp = await config_set(client, {"event_bus.max_queue_size": 20000, "nope": 1})
    assert resp.status_code == 400
    assert path.read_bytes() == before
    assert kernel.config.get("event_bus.max_queue_size") == 10000


async def test_plugin_table_changes_reach_the_plugin_live(setup):
    client, kernel, path, greeter, _ = setup
    resp = await config_set(client, {"plugin.greeter.greeting": "hello", "plugin.greeter.extra": [1, 2]})
    assert (await resp.get_json())["applied"] == ["plugin.greeter.extra", "plugin.greeter.greeting"]
    assert greeter.changes == [
        {
            "changes": {"plugin.greeter.extra": [1, 2], "plugin.greeter.greeting": "hello"},
            "config": {"greeting": "hello", "extra": [1, 2]},
        }
    ]
    assert tomllib.loads(path.read_text())["plugin"]["greeter"] == {"greeting": "hello", "extra": [1, 2]}


async def test_null_removes_a_key_so_its_default_applies(setup):
    client, kernel, path, *_ = setup
    await config_set(client, {"event_bus.max_queue_size": 20000})
    await config_set(client, {"event_bus.max_queue_size": None})
    assert kernel.config.get("event_bus.max_queue_size") == 10000
    assert "event_bus" not in tomllib.loads(path.read_text())


async def test_overridden_keys_are_saved_but_reported(make_kernel, serve_kernel, tmp_path):
    kernel = make_kernel(settings={"http.max_body_bytes": 4096})
    client = await serve_kernel(kernel)
    resp = await client.post("/config/set", json={"changes": {"http.max_body_bytes": 8192}}, headers=CONFIRM)
    assert (await resp.get_json())["overridden"] == ["http.max_body_bytes"]
    assert kernel.config.get("http.max_body_bytes") == 4096
    # Running on built-in defaults, the file is created in the working directory.
    assert tomllib.loads((tmp_path / "aman.toml").read_text()) == {"http": {"max_body_bytes": 8192}}


async def test_get_config_shows_effective_values_redacted(setup):
    client, kernel, path, *_ = setup
    body = await (await client.get("/config", headers=AUTH)).get_json()
    assert body["path"] == str(path)
    assert body["config"]["http"]["token"] == "[REDACTED]"
    assert body["config"]["event_bus"]["max_queue_size"] == 10000
    assert body["config"]["plugin"]["greeter"] == {"greeting": "hi"}
    assert "runtime.dir" in body["overridden"]


async def test_concurrent_sets_leave_a_valid_file(setup):
    client, kernel, path, *_ = setup
    sizes = list(range(1000, 1040))
    await asyncio.gather(*(config_set(client, {"event_bus.max_queue_size": n}) for n in sizes))
    value = tomllib.loads(path.read_text())["event_bus"]["max_queue_size"]
    assert value in sizes
    assert kernel.config.get("event_bus.max_queue_size") == value
