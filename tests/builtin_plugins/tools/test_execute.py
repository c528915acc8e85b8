"""``GET /tools``, ``POST /tools/{name}/execute`` and the checks of ``Toolbox.call`` (http-api §18)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

import pytest

from sdk import Tool, ToolDenial, ToolGuard, hookimpl
from sdk.testing import wait_for

CONFIRM = {"x-aman-confirm": "yes"}


async def test_list_tools_sorted_with_their_plugin(start):
    env = await start()
    status, body = await env.answer(await env.client.get("/tools"))
    assert status == 200
    kit = [item for item in body["items"] if item["plugin"] == "kit"]
    assert [item["name"] for item in body["items"]] == sorted(
        item["name"] for item in body["items"]
    )
    assert [item["name"] for item in kit] == [
        "kit_broken",
        "kit_crash",
        "kit_echo",
        "kit_nap",
        "kit_note",
        "kit_spawn",
        "kit_wipe",
    ]
    echo = next(item for item in kit if item["name"] == "kit_echo")
    assert echo == {
        "name": "kit_echo",
        "description": "Echo a text",
        "sensitivity": "low",
        "plugin": "kit",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}, "limit": {"type": "integer", "minimum": 0}},
            "required": ["text"],
        },
    }
    note = next(item for item in kit if item["name"] == "kit_note")
    assert (note["sensitivity"], note["parameters"]) == (
        "medium",
        {"type": "object", "properties": {}},
    )


async def test_execute_runs_a_sync_tool_in_a_worker_thread_with_its_context(start, tmp_path):
    env = await start()
    status, body = await env.execute("kit_echo", {"text": "hi"})
    assert status == 200, body
    assert body == {
        "tool": "kit_echo",
        "duration_ms": body["duration_ms"],
        "output": {"text": "hi", "in_worker_thread": True},
    }
    assert isinstance(body["duration_ms"], int)
    [(_, args, tc)] = env.kit.calls
    assert args == {"text": "hi"}
    workspace = (tmp_path / "runtime" / "workspace").resolve()
    assert (tc.workspace, tc.workspace.is_dir()) == (workspace, True)
    assert (tc.origin, tc.agent_id, tc.session_id, tc.timeout_sec, tc.processes) == (
        "api",
        None,
        None,
        1.0,
        set(),
    )
    await wait_for(lambda: env.events("tool:completed"))
    [dispatched], [completed] = env.events("tool:dispatched"), env.events("tool:completed")
    assert (dispatched.source, dispatched.delivery) == ("api", "at_most_once")
    assert dispatched.payload == {"tool": "kit_echo", "call_id": tc.call_id}
    assert completed.payload == {
        "tool": "kit_echo",
        "call_id": tc.call_id,
        "duration_ms": body["duration_ms"],
    }
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", tc.call_id
    )


async def test_execute_runs_an_async_tool_and_an_empty_body_is_an_empty_object(start):
    env = await start()
    status, body = await env.execute("kit_note")
    assert (status, body["output"]) == (200, {"noted": 0})
    assert env.kit.calls[0][1] == {}


async def test_unknown_tool_is_404(start):
    env = await start()
    assert await env.execute("nope", {}) == (404, {"error": "tool not found: nope"})


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({}, "'text' is a required property"),
        ({"text": 5}, "$.text: 5 is not of type 'string'"),
        ({"text": "a", "limit": -1}, "$.limit: -1 is less than the minimum of 0"),
    ],
)
async def test_arguments_must_match_the_schema(start, args, reason):
    env = await start()
    assert await env.execute("kit_echo", args) == (
        400,
        {"error": f"invalid arguments for tool kit_echo: {reason}"},
    )
    assert env.kit.calls == [] and env.events("tool:dispatched") == []


async def test_the_body_must_be_a_json_object(start):
    env = await start()
    status, body = await env.execute("kit_echo", ["text"])
    assert (status, body) == (400, {"error": "request body must be a JSON object"})


async def test_a_high_tool_needs_the_risky_flag_which_is_live(start):
    env = await start()
    assert await env.execute("kit_wipe", {}) == (
        403,
        {"error": "tool kit_wipe requires security.risky_capabilities_enabled = true"},
    )
    assert env.kit.calls == []
    resp = await env.client.post(
        "/config/set",
        json={"changes": {"security.risky_capabilities_enabled": True}},
        headers=CONFIRM,
    )
    assert resp.status_code == 200
    status, body = await env.execute("kit_wipe", {})
    assert (status, body["output"]) == (200, "wiped")


@pytest.mark.parametrize(
    ("text", "error", "block_type"),
    [
        ("forbidden", "hardline blocked: forbidden text", "hardline"),
        ("/etc/passwd", "path denied: /etc/passwd is outside the workspace", "path_denied"),
        ("boom", "hardline blocked: tool guard kit-guard failed: RuntimeError", "hardline"),
    ],
)
async def test_a_guard_refuses_with_403_and_publishes_security_denied(
    start, text, error, block_type
):
    env = await start()
    assert await env.execute("kit_echo", {"text": text}) == (403, {"error": error})
    await wait_for(lambda: env.events("tool:security_denied"))
    [denied] = env.events("tool:security_denied")
    assert denied.source == "api"
    assert denied.payload == {
        "tool": "kit_echo",
        "call_id": denied.payload["call_id"],
        "block_type": block_type,
        "error": error,
    }
    assert env.kit.calls == [] and env.events("tool:dispatched") == []


async def test_guards_run_in_ascending_order(make_kernel, serve_kernel):
    seen: list[str] = []

    class Guards:
        name = "guards"

        @hookimpl
        def register_tools(self):
            return [
                Tool(
                    name="ordered", description="", sensitivity="low", handler=lambda args, tc: None
                )
            ]

        @hookimpl
        def register_policies(self):
            def guard(name, denial=None):
                return ToolGuard(
                    name=name,
                    order=int(name[1:]),
                    check=lambda request: seen.append(name) or denial,
                )

            return [
                guard("g30"),
                guard("g10"),
                guard("g20", ToolDenial(block_type="path_denied", reason="stop")),
            ]

    client = await serve_kernel(make_kernel(Guards()))
    resp = await client.post("/tools/ordered/execute")
    assert (resp.status_code, seen) == (403, ["g10", "g20"])


async def test_timeout_fails_with_400_and_tool_failed(start):
    env = await start()
    assert await env.execute("kit_nap", {}) == (400, {"error": "tool kit_nap timed out after 1 s"})
    await wait_for(lambda: env.events("tool:failed"))
    [failed] = env.events("tool:failed")
    assert failed.payload["error"] == "tool kit_nap timed out after 1 s"
    assert failed.payload["duration_ms"] >= 1000
    assert len(env.events("tool:dispatched")) == 1


@pytest.mark.parametrize(
    ("name", "error"), [("kit_broken", "disk on fire"), ("kit_crash", "ValueError: bad input")]
)
async def test_a_failing_tool_is_400_with_its_error(start, name, error):
    env = await start()
    assert await env.execute(name, {}) == (400, {"error": error})
    await wait_for(lambda: env.events("tool:failed"))
    [failed] = env.events("tool:failed")
    assert (failed.source, failed.payload["tool"], failed.payload["error"]) == ("api", name, error)
    assert env.events("tool:completed") == []


async def test_audit_records_the_args_hash_and_never_the_arguments(start):
    env = await start()
    args = {"text": "very secret words", "limit": 3}
    status, body = await env.execute("kit_echo", args)
    assert status == 200
    await env.execute("kit_broken", {})
    records = await env.audit("tool.execute")
    assert [r["target"] for r in records] == ["tool:kit_broken", "tool:kit_echo"]
    broken, echo = records
    digest = hashlib.sha256(
        json.dumps(args, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert (echo["outcome"], echo["detail"]) == (
        "ok",
        f"args_hash:{digest[:16]} duration_ms={body['duration_ms']}",
    )
    assert (broken["outcome"], broken["detail"]) == ("error", "disk on fire")
    assert "secret" not in json.dumps(records)


async def test_a_timed_out_call_kills_its_child_processes(start):
    env = await start()
    status, body = await env.execute("kit_spawn", {})
    assert (status, body) == (400, {"error": "tool kit_spawn timed out after 1 s"})
    [child] = env.kit.children
    assert await asyncio.wait_for(child.wait(), 5) != 0


async def test_cancelling_a_call_cancels_the_handler_and_kills_its_children(start):
    env = await start({"runtime.tool_timeout_sec": 60})
    processes: set[asyncio.subprocess.Process] = set()
    task = asyncio.create_task(
        env.tools.call(
            "kit_spawn", {}, origin="pipeline", source="explore:pipeline", processes=processes
        )
    )
    await wait_for(lambda: processes)  # the caller's set holds the running child
    [child] = processes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(child.wait(), 5) != 0
    await wait_for(lambda: env.events("tool:failed"))
    [failed] = env.events("tool:failed")
    assert (failed.source, failed.payload["error"]) == (
        "explore:pipeline",
        "tool kit_spawn was cancelled",
    )


async def test_agent_refusals_use_the_texts_fed_to_the_model(start):
    env = await start({"security.tool_approval": "never"})
    call = env.tools.call

    async def agent(name, args):
        return await call(
            name, args, origin="agent", source="agent:aman", agent_id="aman", session_id="s1"
        )

    hard = await agent("kit_echo", {"text": "forbidden"})
    assert (hard.ok, hard.refusal, hard.error) == (
        False,
        "hardline",
        "hardline_blocked: forbidden text",
    )
    path = await agent("kit_echo", {"text": "/etc/x"})
    assert (path.refusal, path.error) == (
        "path_denied",
        "path_denied: /etc/x is outside the workspace",
    )
    missing = await agent("nope", {})
    assert (missing.refusal, missing.error) == ("not_found", "tool not found: nope")
    wiped = await agent("kit_wipe", {})  # the risky gate is for the API only
    assert (wiped.ok, wiped.output, wiped.refusal, wiped.error) == (True, "wiped", None, "")
    await wait_for(lambda: len(env.events("tool:security_denied")) == 2)
    denied = env.events("tool:security_denied")[0]
    assert (denied.source, denied.payload["session_id"], denied.payload["error"]) == (
        "agent:aman",
        "s1",
        "hardline_blocked: forbidden text",
    )
    tc = env.kit.calls[-1][2]
    assert (tc.origin, tc.agent_id, tc.session_id) == ("agent", "aman", "s1")


async def test_pipeline_calls_skip_the_risky_gate_and_approval(start):
    env = await start({"security.tool_approval": "always"})
    outcome = await env.tools.call("kit_wipe", {}, origin="pipeline", source="explore:pipeline")
    assert (outcome.ok, outcome.output) == (True, "wiped")
    failed = await env.tools.call("kit_broken", {}, origin="pipeline", source="explore:pipeline")
    assert (failed.ok, failed.refusal, failed.error) == (False, "failed", "disk on fire")


class Extra:
    """A plugin contributing one tool and one guard, to enable and disable."""

    name = "extra"

    @hookimpl
    def register_tools(self):
        return [
            Tool(
                name="extra_ping",
                description="Ping",
                sensitivity="low",
                handler=lambda args, tc: "pong",
            )
        ]


class Strict:
    name = "strict"

    @hookimpl
    def register_policies(self):
        return [
            ToolGuard(
                name="strict",
                order=50,
                check=lambda request: ToolDenial(block_type="hardline", reason="strict mode"),
            )
        ]


async def test_hook_register_tools(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(Extra()))
    resp = await client.post("/tools/extra_ping/execute")
    assert (resp.status_code, (await resp.get_json())["output"]) == (200, "pong")

    await client.post("/plugin/extra/disable", headers=CONFIRM)
    resp = await client.post("/tools/extra_ping/execute")
    assert (resp.status_code, await resp.get_json()) == (
        404,
        {"error": "tool not found: extra_ping"},
    )
    names = [item["name"] for item in (await (await client.get("/tools")).get_json())["items"]]
    assert "extra_ping" not in names

    await client.post("/plugin/extra/enable")
    assert (await client.post("/tools/extra_ping/execute")).status_code == 200


async def test_hook_register_policies(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(Extra(), Strict()))
    resp = await client.post("/tools/extra_ping/execute")
    assert (resp.status_code, await resp.get_json()) == (
        403,
        {"error": "hardline blocked: strict mode"},
    )

    await client.post("/plugin/strict/disable", headers=CONFIRM)
    assert (await client.post("/tools/extra_ping/execute")).status_code == 200
