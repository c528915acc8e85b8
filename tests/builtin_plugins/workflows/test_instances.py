"""Workflow instances over HTTP (http-api §8): create, list, get, events, guards, actions,
retry and cancel, with their errors and audit records; and instances driven by bus events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdk import SKILL_RUNNER, Conflict, NotFound, hookimpl
from sdk.testing import wait_for

from .conftest import APPROVAL, CONFIRM

STATES = ["queued", "running", "done", "failed", "cancelled"]
JOB = {
    "name": "job",
    "states": STATES,
    "initial_state": "queued",
    "final_states": ["done"],
    "error_state": "failed",
    "transitions": [
        {"from": "queued", "event": "start", "to": "running", "action": {"pipeline": "work"}},
        {"from": "queued", "event": "sync", "to": "running", "action": {"pipeline": "sync-work"}},
        {"from": "queued", "event": "skill", "to": "running", "action": {"skill": "notify"}},
        {"from": "queued", "event": "soft", "to": "running", "action": {"pipeline": "work"},
         "on_action_failure": "cancelled"},
        {"from": "queued", "event": "missing", "to": "running", "action": {"pipeline": "nope"}},
        {"from": "running", "event": "finish", "to": "done", "guard": "allowed"},
        {"from": "running", "event": "fail", "to": "failed"},
    ],
    "error_recovery": {"max_retry_count": 2, "on_retry_failure": "archive"},
}
AUTO = {
    **JOB,
    "name": "auto",
    "error_recovery": {"auto_retry_count": 2, "max_retry_count": 5, "retry_backoff": {"fixed": 0}},
}
LIMITED = {**JOB, "name": "limited", "error_recovery": {"max_retry_count": 0}}
BARE = {
    "name": "bare", "states": ["a", "b"], "initial_state": "a",
    "transitions": [{"from": "a", "event": "go", "to": "b", "action": {"pipeline": "work"}}],
}
STUCK = {
    "name": "stuck", "states": ["oops", "fine"], "initial_state": "oops", "error_state": "oops",
    "transitions": [{"from": "oops", "event": "go", "to": "fine"}],
}


class Jobs:
    """A plugin with workflows, a guard and pipelines whose behaviour the test sets."""

    name = "jobs"

    def __init__(self) -> None:
        self.fail = False
        self.partial = False
        self.sleep = 0.0
        self.allow = True
        self.calls: list[tuple[Any, Any]] = []
        self.guarded: list[tuple[Any, Any]] = []

    @hookimpl
    def register_workflows(self) -> list[dict[str, Any]]:
        return [JOB, AUTO, LIMITED, BARE, STUCK]

    @hookimpl
    def register_guards(self) -> dict[str, Any]:
        return {"allowed": self.allowed}

    @hookimpl
    def register_pipelines(self) -> dict[str, Any]:
        return {"work": self.work, "sync-work": self.sync_work}

    async def allowed(self, instance: Any, event: Any) -> bool:
        self.guarded.append((instance, event))
        return self.allow

    async def work(self, instance: Any, event: Any) -> Any:
        self.calls.append((instance, event))
        if self.sleep:
            await asyncio.sleep(self.sleep)
        return self._result()

    def sync_work(self, instance: Any, event: Any) -> Any:
        self.calls.append((instance, event))
        return self._result()

    def _result(self) -> Any:
        if self.fail:
            error = RuntimeError("boom")
            error.partial_rollback = self.partial  # type: ignore[attr-defined]
            raise error
        return {"partial_rollback": True} if self.partial else None


class Runner:
    """A stand-in for the skills plugin's runner."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, Any]] = []

    async def run(self, name: str, event: Any) -> None:
        if name != "notify":
            raise NotFound(f"skill not found: {name}")
        self.ran.append((name, event))


async def answer(resp) -> tuple[int, Any]:
    return resp.status_code, await resp.get_json()


async def audits(kernel, action: str) -> list[tuple[str, str, str, str]]:
    page = await kernel.audit.query(action=action)
    return [(r.operator, r.target, r.outcome, r.detail) for r in reversed(page.items)]


@pytest.fixture(name="jobs")
def _jobs() -> Jobs:
    return Jobs()


@pytest.fixture(name="flows")
async def _flows(start_flows, jobs):
    return await start_flows(
        jobs, files={"approval.yaml": APPROVAL}, settings={"workflows.timeout_poll_ms": 100}
    )


# --- create, list, get -------------------------------------------------------------------------


async def test_create_answers_the_instance_publishes_and_audits(flows):
    resp = await flows.client.post(
        "/workflow/Approval/create", json={"data": {"k": 1}}, headers={"x-aman-operator": "ops"}
    )
    status, inst = await answer(resp)
    assert status == 200
    assert set(inst) == {
        "id", "workflow_name", "current_state", "last_active_state", "total_retry_count",
        "session_retry_count", "state_entered_at", "timeout_clock", "last_user_event_at", "data",
        "partial_rollback", "has_pending_retry", "created_at", "updated_at",
    }
    assert inst["workflow_name"] == "approval" and inst["current_state"] == "PENDING"
    assert inst["data"] == {"k": 1} and inst["last_active_state"] is None
    assert inst["timeout_clock"] == {
        "active_state": "PENDING", "active_started_at": inst["created_at"], "remaining_ms": {},
    }
    assert len(inst["id"]) == 20
    await wait_for(lambda: flows.recorder.seen)
    event = flows.recorder.seen[0]
    assert event.source == "workflow:approval" and event.delivery == "at_least_once"
    assert event.payload == {
        "instance_id": inst["id"], "workflow_name": "approval", "from_state": None,
        "to_state": "PENDING", "event": "CREATE", "reason": "Event",
    }
    assert await audits(flows.kernel, "workflow.create") == [
        ("ops", "workflow:Approval", "ok", inst["id"])
    ]
    assert await flows.instance(inst["id"]) == inst


async def test_create_without_body_and_errors(flows):
    status, inst = await answer(await flows.client.post("/workflow/approval/create"))
    assert status == 200 and inst["data"] is None
    assert await answer(await flows.client.post("/workflow/nope/create")) == (
        404, {"error": "workflow not found: nope"},
    )
    assert await answer(await flows.client.post("/workflow/message-session/create")) == (
        400, {"error": "use POST /chat/session/create to create chat sessions"},
    )
    assert [r[2] for r in await audits(flows.kernel, "workflow.create")] == ["ok", "error", "error"]


async def test_list_filters_sorts_and_clamps(flows):
    a = await flows.create("approval")
    b = await flows.create("job")
    c = await flows.create("approval")
    await flows.event(c["id"], "submit")
    items = (await (await flows.client.get("/workflow-instances")).get_json())["items"]
    assert [i["id"] for i in items] == sorted([a["id"], b["id"], c["id"]])

    async def ids(query: str) -> list[str]:
        body = await (await flows.client.get(f"/workflow-instances?{query}")).get_json()
        return [i["id"] for i in body["items"]]

    assert await ids("workflow=APPROVAL") == sorted([a["id"], c["id"]])
    assert await ids("state=reviewing") == [c["id"]]
    assert await ids("workflow=approval&state=Pending") == [a["id"]]
    assert await ids("workflow=none") == []
    assert len(await ids("limit=0")) == 1
    assert len(await ids("limit=5000")) == 3
    resp = await flows.client.get("/workflow-instances?limit=x")
    assert resp.status_code == 400


async def test_get_unknown_instance(flows):
    assert await answer(await flows.client.get("/workflow-instance/nope")) == (
        404, {"error": "workflow instance not found: nope"},
    )


# --- events ------------------------------------------------------------------------------------


async def test_events_move_the_instance_and_are_audited(flows):
    inst = await flows.create()
    iid = inst["id"]
    resp = await flows.client.post(
        f"/workflow-instance/{iid}/event", json={"event": " submit "},
        headers={"x-aman-operator": "ops"},
    )
    assert await answer(resp) == (200, {
        "instance_id": iid, "from_state": "PENDING", "to_state": "REVIEWING",
        "transitioned": True, "reason": "Event",
    })
    got = await flows.instance(iid)
    assert got["current_state"] == "REVIEWING" and got["last_user_event_at"] is not None
    assert got["timeout_clock"]["active_state"] == "REVIEWING"
    assert (await answer(await flows.event(iid, "withdraw")))[1]["to_state"] == "REJECTED"  # "*"
    await wait_for(lambda: len(flows.recorder.changes(iid)) == 3)
    assert flows.recorder.changes(iid) == [
        (None, "PENDING", "CREATE", "Event"),
        ("PENDING", "REVIEWING", "SUBMIT", "Event"),
        ("REVIEWING", "REJECTED", "WITHDRAW", "Event"),
    ]
    assert await audits(flows.kernel, "workflow.event") == [
        ("ops", f"workflow-instance:{iid}", "ok", "SUBMIT PENDING->REVIEWING"),
        ("api", f"workflow-instance:{iid}", "ok", "WITHDRAW REVIEWING->REJECTED"),
    ]


async def test_event_errors(flows):
    iid = (await flows.create())["id"]
    status, _ = await answer(await flows.client.post(f"/workflow-instance/{iid}/event", json={}))
    assert status == 400
    status, body = await answer(await flows.event(iid, "x" * 129))
    assert (status, body) == (400, {"error": "field 'event' must be between 1 and 128 characters"})
    for name in ("retry", "Cancel"):
        assert await answer(await flows.event(iid, name)) == (400, {
            "error": f"use POST /workflow-instance/{iid}/retry or /cancel for RETRY and CANCEL"
        })
    assert await answer(await flows.event("nope", "submit")) == (
        404, {"error": "workflow instance not found: nope"},
    )
    assert await answer(await flows.event(iid, "approve")) == (
        409, {"error": "workflow approval has no transition from PENDING on event APPROVE"},
    )
    await flows.event(iid, "withdraw")
    assert await answer(await flows.event(iid, "withdraw")) == (
        409, {"error": f"workflow instance {iid} is in final state REJECTED"},
    )
    session = await flows.engine.create("message-session")
    for path in ("event", "retry", "cancel"):
        resp = await flows.client.post(
            f"/workflow-instance/{session.id}/{path}", json={"event": "MESSAGE_RECEIVED"},
            headers=CONFIRM,
        )
        assert await answer(resp) == (409, {
            "error": f"chat sessions are controlled through /chat/session/{session.id}/…"
        })
    outcomes = [r[2] for r in await audits(flows.kernel, "workflow.event")]
    assert outcomes == ["error"] * 6 + ["ok", "error", "error"]


async def test_has_permission_guard_with_and_without_on_fail(flows):
    iid = (await flows.create())["id"]
    await flows.event(iid, "submit")
    assert (await answer(await flows.event(iid, "check")))[1] == {
        "instance_id": iid, "from_state": "REVIEWING", "to_state": "REVIEWING",
        "transitioned": False, "reason": "GuardRejected",
    }
    assert (await answer(await flows.event(iid, "check", has_permission="yes")))[1][
        "transitioned"] is False
    assert (await answer(await flows.event(iid, "approve")))[1] == {
        "instance_id": iid, "from_state": "REVIEWING", "to_state": "REJECTED",
        "transitioned": True, "reason": "GuardRejected",
    }
    other = (await flows.create())["id"]
    await flows.event(other, "submit")
    result = (await answer(await flows.event(other, "approve", has_permission=True)))[1]
    assert result["to_state"] == "APPROVED" and result["reason"] == "Event"
    assert ("WITHDRAW" not in str(await audits(flows.kernel, "workflow.event")))


async def test_hook_register_guards(flows, jobs):
    """A plugin guard gets the instance and the event; its answer decides."""
    iid = (await flows.create("job", data={"n": 1}))["id"]
    await flows.event(iid, "start")
    jobs.allow = False
    assert (await answer(await flows.event(iid, "finish", note="x")))[1]["reason"] == "GuardRejected"
    instance, event = jobs.guarded[-1]
    assert instance.id == iid and instance.data == {"n": 1} and instance.current_state == "RUNNING"
    assert event.source == "workflow:control" and event.payload == {"note": "x", "operator": "api"}
    jobs.allow = True
    assert (await answer(await flows.event(iid, "finish")))[1]["to_state"] == "DONE"


# --- actions, error state, retry, cancel -------------------------------------------------------


async def test_failing_pipeline_goes_to_the_error_state_then_retry_and_archive(flows, jobs):
    iid = (await flows.create("job"))["id"]
    jobs.fail = True
    assert (await answer(await flows.event(iid, "start")))[1] == {
        "instance_id": iid, "from_state": "QUEUED", "to_state": "FAILED",
        "transitioned": True, "reason": "ActionFailed",
    }
    got = await flows.instance(iid)
    assert got["last_active_state"] == "QUEUED" and got["has_pending_retry"] is True
    resp = await flows.client.post(f"/workflow-instance/{iid}/retry", headers=CONFIRM)
    assert await answer(resp) == (200, {
        "instance_id": iid, "from_state": "FAILED", "to_state": "QUEUED",
        "transitioned": True, "reason": "Event",
    })
    got = await flows.instance(iid)
    assert (got["total_retry_count"], got["session_retry_count"], got["has_pending_retry"]) == (
        1, 1, False,
    )
    await flows.event(iid, "start")
    got = await flows.instance(iid)
    assert got["session_retry_count"] == 0 and got["total_retry_count"] == 1  # a new stay
    await flows.client.post(f"/workflow-instance/{iid}/retry", headers=CONFIRM)
    await flows.event(iid, "start")
    resp = await flows.client.post(f"/workflow-instance/{iid}/retry", headers=CONFIRM)
    assert await answer(resp) == (200, {
        "instance_id": iid, "from_state": "FAILED", "to_state": "ARCHIVED",
        "transitioned": True, "reason": "RetryExceeded",
    })
    assert await answer(await flows.client.post(f"/workflow-instance/{iid}/cancel", headers=CONFIRM)) == (
        409, {"error": f"workflow instance {iid} is in final state ARCHIVED"},
    )
    assert await answer(await flows.client.post(f"/workflow-instance/{iid}/retry", headers=CONFIRM)) == (
        409, {"error": f"workflow instance {iid} is not in its error state (current state ARCHIVED)"},
    )
    assert [r[3] for r in await audits(flows.kernel, "workflow.retry")] == [
        "FAILED->QUEUED", "FAILED->QUEUED", "FAILED->ARCHIVED",
        f"workflow instance {iid} is not in its error state (current state ARCHIVED)",
    ]
    assert (await audits(flows.kernel, "workflow.cancel"))[0][2:] == (
        "error", f"workflow instance {iid} is in final state ARCHIVED",
    )


async def test_retry_exceeded_manual_only_stays(flows, jobs):
    jobs.fail = True
    iid = (await flows.create("limited"))["id"]
    await flows.event(iid, "start")
    resp = await flows.client.post(f"/workflow-instance/{iid}/retry", headers=CONFIRM)
    assert await answer(resp) == (200, {
        "instance_id": iid, "from_state": "FAILED", "to_state": "FAILED",
        "transitioned": False, "reason": "RetryExceeded",
    })
    assert (await flows.instance(iid))["has_pending_retry"] is True


async def test_retry_errors_and_confirmation(flows):
    iid = (await flows.create("job"))["id"]
    resp = await flows.client.post(f"/workflow-instance/{iid}/retry")
    assert await answer(resp) == (409, {"error": "confirmation required"})
    resp = await flows.client.post("/workflow-instance/nope/retry")
    assert await answer(resp) == (409, {"error": "confirmation required"})  # before the lookup
    resp = await flows.client.post("/workflow-instance/nope/retry", headers=CONFIRM)
    assert await answer(resp) == (404, {"error": "workflow instance not found: nope"})
    resp = await flows.client.post(f"/workflow-instance/{iid}/retry", headers=CONFIRM)
    assert await answer(resp) == (409, {
        "error": f"workflow instance {iid} is not in its error state (current state QUEUED)"
    })
    stuck = (await flows.create("stuck"))["id"]
    resp = await flows.client.post(f"/workflow-instance/{stuck}/retry", headers=CONFIRM)
    assert await answer(resp) == (409, {
        "error": f"workflow instance {stuck} has no state to return to"
    })
    assert [r[1:3] for r in await audits(flows.kernel, "workflow.retry")][:2] == [
        (f"workflow-instance:{iid}", "confirm_required"),
        ("workflow-instance:nope", "confirm_required"),
    ]


async def test_cancel_rules(flows, jobs):
    # a CANCEL transition is taken
    iid = (await flows.create())["id"]
    resp = await flows.client.post(f"/workflow-instance/{iid}/cancel", headers=CONFIRM)
    assert await answer(resp) == (200, {
        "instance_id": iid, "from_state": "PENDING", "to_state": "CANCELLED",
        "transitioned": True, "reason": "Event",
    })
    resp = await flows.client.post(f"/workflow-instance/{iid}/cancel", headers=CONFIRM)
    assert await answer(resp) == (409, {
        "error": f"workflow instance {iid} is in final state CANCELLED"
    })
    # no transition, not in the error state
    other = (await flows.create())["id"]
    await flows.event(other, "submit")
    resp = await flows.client.post(f"/workflow-instance/{other}/cancel", headers=CONFIRM)
    assert await answer(resp) == (409, {
        "error": "workflow approval has no transition from REVIEWING on event CANCEL"
    })
    # in the error state, the workflow declares CANCELLED
    jobs.fail = True
    job = (await flows.create("job"))["id"]
    await flows.event(job, "start")
    resp = await flows.client.post(f"/workflow-instance/{job}/cancel", headers=CONFIRM)
    assert (await answer(resp))[1] == {
        "instance_id": job, "from_state": "FAILED", "to_state": "CANCELLED",
        "transitioned": True, "reason": "Event",
    }
    # in the error state without CANCELLED: stays
    stuck = (await flows.create("stuck"))["id"]
    resp = await flows.client.post(f"/workflow-instance/{stuck}/cancel", headers=CONFIRM)
    assert (await answer(resp))[1] == {
        "instance_id": stuck, "from_state": "OOPS", "to_state": "OOPS",
        "transitioned": False, "reason": "GuardRejected",
    }
    resp = await flows.client.post(f"/workflow-instance/{stuck}/cancel")
    assert await answer(resp) == (409, {"error": "confirmation required"})
    resp = await flows.client.post("/workflow-instance/nope/cancel", headers=CONFIRM)
    assert resp.status_code == 404
    details = [r[2:] for r in await audits(flows.kernel, "workflow.cancel")]
    assert details[0] == ("ok", "PENDING->CANCELLED")
    assert ("ok", "FAILED->CANCELLED") in details and ("ok", "OOPS->OOPS") in details
    assert ("confirm_required", "") in details


async def test_action_failure_targets(flows, jobs):
    jobs.fail = True
    soft = (await flows.create("job"))["id"]
    result = (await answer(await flows.event(soft, "soft")))[1]
    assert (result["to_state"], result["reason"]) == ("CANCELLED", "ActionFailed")
    assert (await flows.instance(soft))["has_pending_retry"] is False
    bare = (await flows.create("bare"))["id"]
    assert (await answer(await flows.event(bare, "go")))[1] == {
        "instance_id": bare, "from_state": "A", "to_state": "A",
        "transitioned": False, "reason": "ActionFailed",
    }
    jobs.fail = False
    missing = (await flows.create("job"))["id"]
    assert (await answer(await flows.event(missing, "missing")))[1]["reason"] == "ActionFailed"


async def test_hook_register_pipelines(flows, jobs):
    """Plugin pipelines, sync and async, get the instance and the event; partial rollback."""
    iid = (await flows.create("job", data=[1]))["id"]
    assert (await answer(await flows.event(iid, "sync", x=1)))[1]["to_state"] == "RUNNING"
    instance, event = jobs.calls[-1]
    assert instance.current_state == "QUEUED" and instance.data == [1]
    assert event.event_type == "SYNC" and event.payload == {"x": 1, "operator": "api"}
    jobs.partial = True
    other = (await flows.create("job"))["id"]
    await flows.event(other, "start")
    got = await flows.instance(other)
    assert got["current_state"] == "RUNNING" and got["partial_rollback"] is True
    jobs.fail = True
    third = (await flows.create("job"))["id"]
    await flows.event(third, "start")
    got = await flows.instance(third)
    assert got["current_state"] == "FAILED" and got["partial_rollback"] is True


async def test_action_time_limit(start_flows, jobs):
    flows = await start_flows(jobs, settings={"workflows.action_timeout_sec": 1})
    jobs.sleep = 3
    iid = (await flows.create("job"))["id"]
    result = (await answer(await flows.event(iid, "start")))[1]
    assert (result["to_state"], result["reason"]) == ("FAILED", "ActionFailed")


async def test_skill_actions(flows):
    iid = (await flows.create("job"))["id"]
    result = (await answer(await flows.event(iid, "skill")))[1]  # no skills runner
    assert result["reason"] == "ActionFailed"
    runner = Runner()
    flows.kernel.stash[SKILL_RUNNER] = runner
    other = (await flows.create("job"))["id"]
    assert (await answer(await flows.event(other, "skill", k=2)))[1]["to_state"] == "RUNNING"
    assert runner.ran[0][0] == "notify" and runner.ran[0][1].payload == {"k": 2, "operator": "api"}


async def test_automatic_retries_feed_the_failed_event_again(flows, jobs):
    jobs.fail = True
    iid = (await flows.create("auto"))["id"]
    await flows.event(iid, "start")

    async def settled() -> dict[str, Any]:
        return await flows.instance(iid)

    snapshot: dict[str, Any] = {}

    async def poll() -> None:
        for _ in range(200):
            snapshot.update(await settled())
            if snapshot["total_retry_count"] == 2 and snapshot["current_state"] == "FAILED":
                return
            await asyncio.sleep(0.02)

    await poll()
    assert snapshot["total_retry_count"] == 2 and snapshot["session_retry_count"] == 2
    assert snapshot["current_state"] == "FAILED" and snapshot["has_pending_retry"] is True
    assert len(jobs.calls) == 3
    await asyncio.sleep(0.3)  # no third automatic retry
    assert len(jobs.calls) == 3
    await wait_for(lambda: len(flows.recorder.changes(iid)) == 6)
    assert flows.recorder.changes(iid) == [
        (None, "QUEUED", "CREATE", "Event"),
        ("QUEUED", "FAILED", "START", "ActionFailed"),
        ("FAILED", "QUEUED", "RETRY", "Event"),
        ("QUEUED", "FAILED", "START", "ActionFailed"),
        ("FAILED", "QUEUED", "RETRY", "Event"),
        ("QUEUED", "FAILED", "START", "ActionFailed"),
    ]
    jobs.fail = False
    resp = await flows.client.post(f"/workflow-instance/{iid}/retry", headers=CONFIRM)
    assert (await answer(resp))[1]["to_state"] == "QUEUED"
    assert (await answer(await flows.event(iid, "start")))[1]["to_state"] == "RUNNING"


async def test_an_automatic_retry_that_succeeds(flows, jobs):
    jobs.fail = True
    iid = (await flows.create("auto"))["id"]
    await flows.event(iid, "start")
    jobs.fail = False
    await wait_for(lambda: ("QUEUED", "RUNNING", "START", "Event") in flows.recorder.changes(iid))
    got = await flows.instance(iid)
    assert got["current_state"] == "RUNNING" and got["total_retry_count"] == 1


# --- bus events --------------------------------------------------------------------------------


async def test_bus_events_drive_instances(flows):
    iid = (await flows.create())["id"]
    publish = flows.kernel.bus.publish
    await publish("workflow:event", {"workflow_instance_id": iid, "event": "submit"},
                  delivery="at_least_once")
    await wait_for(lambda: ("PENDING", "REVIEWING", "SUBMIT", "Event") in flows.recorder.changes(iid))
    await publish(
        "workflow:event", {"workflow_instance_id": iid, "event": " Approve", "has_permission": True},
    )
    await wait_for(lambda: ("REVIEWING", "APPROVED", "APPROVE", "Event") in flows.recorder.changes(iid))
    got = await flows.instance(iid)
    assert got["current_state"] == "APPROVED" and got["last_user_event_at"] is not None


async def test_bus_events_that_cannot_be_taken_are_dropped(flows):
    iid = (await flows.create())["id"]
    session = await flows.engine.create("message-session")
    for payload in (
        {"workflow_instance_id": "nope", "event": "submit"},
        {"workflow_instance_id": iid, "event": "approve"},  # no transition
        {"workflow_instance_id": iid},
        {"workflow_instance_id": iid, "event": ""},
        {"workflow_instance_id": session.id, "event": "MESSAGE_RECEIVED"},
        [iid],
    ):
        await flows.kernel.bus.publish("workflow:event", payload, delivery="at_least_once")
    await flows.kernel.bus.publish(  # other event types are not looked at
        "submit", {"workflow_instance_id": iid, "event": "submit"}, delivery="at_least_once"
    )
    await flows.kernel.bus.publish(
        "workflow:event", {"workflow_instance_id": iid, "event": "cancel"},
        trust_level="untrusted", source="outside",
    )
    await asyncio.sleep(0.2)
    assert await flows.state(iid) == "PENDING"
    assert (await flows.engine.get(session.id)).current_state == "ACTIVE"
    assert flows.kernel.bus.dead_letters.depth == 0
    await flows.kernel.bus.publish("workflow:event", {"workflow_instance_id": iid, "event": "CANCEL"})
    await wait_for(lambda: ("PENDING", "CANCELLED", "CANCEL", "Event") in flows.recorder.changes(iid))


async def test_engine_errors_for_library_callers(flows):
    with pytest.raises(NotFound):
        await flows.engine.create("nope")
    session = await flows.engine.create("message-session")
    event = flows.engine.control_event("MESSAGE_RECEIVED", {})
    result = await flows.engine.send(session.id, "message_received", event=event)
    assert result.to_state == "PROCESSING"
    with pytest.raises(Conflict):
        await flows.engine.send(session.id, "nope", event=event)


async def test_event_body_types(flows):
    iid = (await flows.create())["id"]
    url = f"/workflow-instance/{iid}/event"
    assert await answer(await flows.client.post(url, json={"event": 5})) == (
        400, {"error": "field 'event' must be a string"},
    )
    assert await answer(await flows.client.post(url, json={"event": "submit", "payload": [1]})) == (
        400, {"error": "field 'payload' must be an object"},
    )
    assert await answer(await flows.client.post(url, json={"event": "   "})) == (
        400, {"error": "field 'event' must be between 1 and 128 characters"},
    )
