"""Loading workflow definitions (formats §3), ``GET /workflows`` and ``GET /workflow/{name}``."""

from __future__ import annotations

import re
from typing import Any

import pytest

from builtin_plugins.workflows.definition import (
    DefinitionError,
    backoff_ms,
    message_session,
    parse,
)
from sdk import hookimpl, xid

from .conftest import APPROVAL, write

COMPAT = """
name: Legacy
states: [{name: new}, {name: running}, {name: failed}, {name: done}]
initial_state: new
final_states: [done]
error_state: failed
transitions:
  - {from: {Specific: new}, event: start, to: {Specific: running}, action: {Pipeline: deploy},
     on_action_failure: {Specific: failed}}
  - {from: Any, event: finish, to: {Specific: done}, on_fail: {Specific: failed}, guard: max_retry}
  - {from: {Specific: failed}, event: back, to: LastActiveState}
state_timeouts:
  - {state: running, timeout_ms: 1000, on_timeout: LastActiveState}
error_recovery:
  auto_retry_count: 2
  max_retry_count: 5
  retry_backoff: {Sequence: [10, 20]}
  on_retry_failure: Archive
"""


def minimal(**over: Any) -> dict[str, Any]:
    return {"name": "w", "states": ["a", "b"], "initial_state": "a", **over}


class Provider:
    """A plugin with a workflow, a guard and a pipeline."""

    name = "flow-provider"

    @hookimpl
    def register_workflows(self) -> list[dict[str, Any]]:
        return [
            {"name": "deploy", "states": ["queued", "done"], "initial_state": "queued",
             "transitions": [{"from": "queued", "event": "go", "to": "done", "guard": "business"}]},
            {"name": "approval", "states": ["x"], "initial_state": "x"},  # wins over the file
        ]

    @hookimpl
    def register_guards(self) -> dict[str, Any]:
        return {"business": lambda instance, event: True}


# --- the model ---------------------------------------------------------------------------------


def test_canonical_names_are_normalised_and_shown_as_declared():
    d = parse(APPROVAL, origin="file", path="/x.yaml")
    assert d.states == ("PENDING", "REVIEWING", "APPROVED", "REJECTED", "ERROR", "CANCELLED")
    assert d.initial_state == "PENDING" and d.error_state == "ERROR"
    assert d.final_states == {"APPROVED", "REJECTED", "CANCELLED"}
    assert d.find("REVIEWING", "WITHDRAW").to == "REJECTED"  # "*" matches
    assert d.describe()["initial_state"] == "pending"
    assert d.describe()["states"][0] == {"name": "pending"}
    assert d.describe()["origin"] == "file" and d.describe()["path"] == "/x.yaml"


def test_compatibility_encodings_are_read_and_shown_canonically():
    import yaml

    d = parse(yaml.safe_load(COMPAT), origin="file", guards=())
    assert d.transitions[0].action == ("pipeline", "deploy")
    assert d.transitions[1].source == "*" and d.transitions[2].to == "$LAST_ACTIVE"
    assert d.recovery.retry_backoff == ("sequence", (10, 20))
    assert d.recovery.on_retry_failure == "archive"
    c = d.describe()
    assert c["transitions"][0] == {
        "from": "new", "event": "start", "to": "running", "guard": None, "on_fail": None,
        "action": {"pipeline": "deploy"}, "on_action_failure": "failed",
    }
    assert c["transitions"][1]["from"] == "*" and c["transitions"][2]["to"] == "$last_active"
    assert c["state_timeouts"] == [
        {"state": "running", "timeout_ms": 1000, "on_timeout": "$last_active",
         "on_timeout_alert": False}
    ]
    assert c["error_recovery"] == {
        "auto_retry_count": 2, "max_retry_count": 5, "retry_backoff": {"sequence": [10, 20]},
        "on_retry_failure": "archive",
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "must be a mapping"),
        ({"states": ["a"], "initial_state": "a"}, "missing required field 'name'"),
        (minimal(states=None), "missing required field 'states'"),
        (minimal(states=[]), "non-empty"),
        (minimal(states=["a", " A "]), "collide"),
        (minimal(states=["a", "x" * 65]), "invalid state name"),
        ({"name": "w", "states": ["a"]}, "missing required field 'initial_state'"),
        (minimal(initial_state="zz"), "unknown state"),
        (minimal(final_states=["a"]), "'initial_state' must not be a final state"),
        (minimal(final_states=["b"], error_state="b"), "'error_state' must not be a final state"),
        (minimal(transitions=[{"from": "a", "event": "e"}]), "transitions[0].to"),
        (minimal(transitions=[{"from": "q", "event": "e", "to": "b"}]), "unknown state"),
        (minimal(transitions=[{"from": "a", "event": "e", "to": "b", "guard": "nope"}]),
         "unknown guard"),
        (minimal(transitions=[{"from": "a", "event": "e", "to": "b", "action": {"run": "x"}}]),
         "action"),
        (minimal(state_timeouts=[{"state": "a", "timeout_ms": 0, "on_timeout": "b"}]),
         "between 1 and"),
        (minimal(state_timeouts=[{"state": "a", "timeout_ms": 31_536_000_001, "on_timeout": "b"}]),
         "between 1 and"),
        (minimal(state_timeouts=[{"state": "a", "timeout_ms": 5, "on_timeout": "b"},
                                 {"state": "a", "timeout_ms": 6, "on_timeout": "b"}]),
         "more than one timeout"),
        (minimal(error_recovery={"retry_backoff": "linear"}), "invalid value"),
        (minimal(error_recovery={"on_retry_failure": "explode"}), "invalid value"),
        (minimal(error_recovery={"auto_retry_count": 101}), "between 0 and 100"),
        (minimal(error_recovery={"max_retry_count": True}), "must be an integer"),
    ],
)
def test_validation_failures(raw, message):
    with pytest.raises(DefinitionError, match=re.escape(message)):
        parse(raw, origin="file")


def test_archived_is_always_a_valid_target():
    d = parse(minimal(transitions=[{"from": "a", "event": "e", "to": "archived"}]), origin="file")
    assert d.find("A", "E").to == "ARCHIVED" and d.is_final("ARCHIVED")


def test_backoff_kinds():
    assert [backoff_ms(("immediate", None), n) for n in (1, 2)] == [0, 0]
    assert [backoff_ms(("exponential", None), n) for n in (1, 2, 3, 7, 8)] == [
        1000, 2000, 4000, 60_000, 60_000,
    ]
    assert backoff_ms(("fixed", 250), 3) == 250
    assert [backoff_ms(("sequence", (1, 5)), n) for n in (1, 2, 3)] == [1, 5, 5]


def test_message_session_follows_the_chat_state_machine():
    d = message_session()
    assert d.initial_state == "ACTIVE" and d.error_state == "ERROR" and d.final_states == set()
    assert len(d.transitions) == 25
    assert d.find("CLOSED", "MESSAGE_RECEIVED").to == "IDLE"
    assert d.find("ERROR", "RETRY_CMD").to == "RETRYING"
    assert {s: t.timeout_ms for s, t in d.timeouts.items()} == {
        "ACTIVE": 300_000, "PROCESSING": 120_000, "IDLE": 600_000, "ERROR": 120_000,
        "TIMEOUT": 120_000,
    }
    assert d.timeouts["ERROR"].on_timeout == "CLOSED"
    assert d.recovery.auto_retry_count == 0


def test_xid_shape_and_order():
    a, b = xid(1_700_000_000), xid(1_700_000_001)
    assert re.fullmatch(r"[0-9a-v]{20}", a) and a < b
    assert xid(1_700_000_000)[:7] == a[:7]  # the seconds lead


# --- loading at start --------------------------------------------------------------------------


async def test_files_load_in_path_order_and_bad_ones_are_skipped(start_flows, flow_dir):
    files = {
        "a-approval.yaml": APPROVAL,
        "b-legacy.yml": COMPAT,
        "c-broken.yaml": "name: [unclosed",
        "c-deep.yaml": "name: deep\nstates: " + "[" * 1_000_000 + "]" * 1_000_000 + "\n",
        "c-huge.yaml": "name: w\nstates: [" + "x" * 5000 + "]\n",  # quoted in the reason
        "d-list.yaml": "- 1\n- 2\n",
        "e-dup.yaml": {**APPROVAL, "name": "APPROVAL"},
        "f-badguard.yaml": minimal(name="g", transitions=[
            {"from": "a", "event": "e", "to": "b", "guard": "nope"}]),
        "g-builtin-dup.yaml": minimal(name="Message-Session"),
        "ignored.txt": minimal(name="txt"),
    }
    flows = await start_flows(files=files)
    resp = await flows.client.get("/workflows")
    assert (resp.status_code, await resp.get_json()) == (
        200, {"items": ["Legacy", "approval", "message-session"]},
    )
    rejected = dict(flows.engine.rejected)
    assert set(rejected) == {
        str(flow_dir / n) for n in ("c-broken.yaml", "c-deep.yaml", "c-huge.yaml", "d-list.yaml",
                                    "e-dup.yaml", "f-badguard.yaml", "g-builtin-dup.yaml")
    }
    assert "not valid YAML" in rejected[str(flow_dir / "c-broken.yaml")]
    assert rejected[str(flow_dir / "c-deep.yaml")] == "not valid YAML: nested deeper than 64 levels (line 2)"
    huge = rejected[str(flow_dir / "c-huge.yaml")]
    assert huge.startswith("workflow w: invalid state name: 'xxx") and len(huge) == 501
    assert "duplicate workflow name: APPROVAL" in rejected[str(flow_dir / "e-dup.yaml")]


async def test_get_workflow_is_case_insensitive_and_404s(flows, flow_dir):
    resp = await flows.client.get("/workflow/APPROVAL")
    body = await resp.get_json()
    assert resp.status_code == 200 and body["name"] == "approval"
    assert body["origin"] == "file" and body["path"] == str(flow_dir / "approval.yaml")
    resp = await flows.client.get("/workflow/message-session")
    body = await resp.get_json()
    assert body["origin"] == "builtin" and body["path"] is None and body["error_state"] == "ERROR"
    resp = await flows.client.get("/workflow/nope")
    assert (resp.status_code, await resp.get_json()) == (404, {"error": "workflow not found: nope"})


async def test_default_dir_is_under_the_runtime_dir(make_kernel, serve_kernel, tmp_path):
    write(tmp_path / "rt" / "workflows", "x.yaml", minimal(name="in-runtime"))
    client = await serve_kernel(make_kernel(runtime_dir=tmp_path / "rt"))
    assert "in-runtime" in (await (await client.get("/workflows")).get_json())["items"]


async def test_plugin_definitions_come_before_files(start_flows):
    flows = await start_flows(Provider(), files={"approval.yaml": APPROVAL})
    body = await (await flows.client.get("/workflow/approval")).get_json()
    assert body["origin"] == "plugin" and body["states"] == [{"name": "x"}]
    assert [w for w, _ in flows.engine.rejected] == [str(flows.engine.rejected[0][0])]
    assert "duplicate" in flows.engine.rejected[0][1]
    assert (await (await flows.client.get("/workflow/deploy")).get_json())["origin"] == "plugin"


async def test_plugin_enabled_later_contributes(start_flows):
    flows = await start_flows(Provider())
    resp = await flows.client.post("/plugin/flow-provider/disable", headers={"x-aman-confirm": "yes"})
    assert resp.status_code == 200
    assert "deploy" not in (await (await flows.client.get("/workflows")).get_json())["items"]
    resp = await flows.client.post("/plugin/flow-provider/enable")
    assert resp.status_code == 200
    assert "deploy" in (await (await flows.client.get("/workflows")).get_json())["items"]
    inst = await flows.create("deploy")
    resp = await flows.event(inst["id"], "go")
    assert (await resp.get_json())["to_state"] == "DONE"


async def test_hook_register_workflows(start_flows):
    """A plugin's definitions load (validated with its guards) and get instances."""
    flows = await start_flows(Provider())
    body = await (await flows.client.get("/workflow/DEPLOY")).get_json()
    assert body["origin"] == "plugin" and body["path"] is None
    assert body["transitions"][0]["guard"] == "business"
    inst = await flows.create("deploy")
    assert (await (await flows.event(inst["id"], "go")).get_json())["to_state"] == "DONE"
