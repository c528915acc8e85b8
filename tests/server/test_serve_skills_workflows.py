"""Issue 4's acceptance path over real HTTP with real files on disk: skills load, search ranks
sensibly, an edited file is picked up live, versions and rollback round-trip; a workflow
instance moves on pushed events and on a timeout, retry and cancel work, and instances survive
a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.server
CONFIRM = {"x-aman-confirm": "yes"}

CONFIG = """
[skills.hot_reload]
debounce_ms = 100

[workflows]
timeout_poll_ms = 100
timeout_defer_ms = 0
"""
SKILLS = {
    "summarize/SKILL.md": "---\nname: summarize\nversion: \"1.0.0\"\ndescription: Summarize a document in five bullet points\n"
    "tags: [writing]\ntriggers: [summarize, tl;dr]\n---\nRead the whole text first.\n",
    "translate.yaml": "name: translate\nversion: \"1.0.0\"\ndescription: Translate text between languages\ntags: [language]\n",
    "on-upload.yaml": "name: on-upload\nversion: \"1.0.0\"\ndescription: React to new files in the inbox\n"
    "triggers:\n  - event_types: [file_created]\n",
}
APPROVAL = """
name: approval
states: [pending, reviewing, approved, expired, failed]
initial_state: pending
final_states: [approved, expired]
error_state: failed
transitions:
  - {from: pending, event: submit, to: reviewing}
  - {from: reviewing, event: approve, to: approved}
  - {from: reviewing, event: break, to: failed}
state_timeouts:
  - {state: reviewing, timeout_ms: 1500, on_timeout: expired}
"""


def poll(check: Callable[[], Any], deadline_sec: float = 20.0) -> Any:
    deadline = time.monotonic() + deadline_sec
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return result


@pytest.fixture(name="runtime")
def _runtime(tmp_path: Path) -> Path:
    runtime = tmp_path / "runtime"
    for relative, text in SKILLS.items():
        path = runtime / "skills" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (runtime / "workflows").mkdir(parents=True)
    (runtime / "workflows" / "approval.yaml").write_text(APPROVAL)
    (tmp_path / "aman.toml").write_text(CONFIG)
    return runtime


def test_skills_load_search_reload_live_and_roll_back(aman, runtime):
    server = aman(token="t", runtime_dir=runtime)
    with server.client() as c:
        assert [s["name"] for s in c.get("/skills").json()["items"]] == ["on-upload", "summarize", "translate"]
        hits = c.get("/skills/search", params={"q": "summarize document"}).json()["items"]
        assert [h["name"] for h in hits] == ["summarize"]  # no other skill has either word
        hit = c.get("/skills/search", params={"q": "summarize"}).json()["items"][0]
        assert (hit["name"], hit["matched_field"], hit["snippet"]) == ("summarize", "name", "summarize")
        ranked = [h["name"] for h in c.get("/skills/search", params={"q": "text language"}).json()["items"]]
        assert ranked[0] == "translate"  # both words in its description and tags
        assert c.get("/skill/summarize/content").json()["content"] == "Read the whole text first."

        path = runtime / "skills" / "translate.yaml"
        original = path.read_text()
        path.write_text(original.replace('"1.0.0"', '"1.1.0"').replace("between languages", "into any language"))
        poll(lambda: c.get("/skill/translate").json()["version"] == "1.1.0")
        versions = c.get("/skill/translate/versions").json()["items"]
        assert [(v["version"], v["current"]) for v in versions] == [("1.1.0", True), ("1.0.0", False)]

        assert c.post("/skill/translate/rollback", json={"version": "1.0.0"}).status_code == 409  # confirm
        rolled = c.post("/skill/translate/rollback", json={"version": "1.0.0"}, headers=CONFIRM)
        assert rolled.status_code == 200 and rolled.json()["skill"]["version"] == "1.0.0"
        assert path.read_text() == original
        missing = c.post("/skill/translate/rollback", json={"version": "9.9.9"}, headers=CONFIRM)
        assert missing.status_code == 404 and path.read_text() == original
    assert server.stop() == 0


def test_a_workflow_instance_moves_on_events_and_timeouts_and_survives_a_restart(aman, runtime):
    server = aman(token="t", runtime_dir=runtime)
    with server.client() as c:
        assert "approval" in c.get("/workflows").json()["items"]

        def state(instance_id: str) -> str:
            return c.get(f"/workflow-instance/{instance_id}").json()["current_state"]

        a = c.post("/workflow/approval/create", json={"data": {"doc": 1}}).json()["id"]
        moved = c.post(f"/workflow-instance/{a}/event", json={"event": "submit"}).json()
        assert (moved["from_state"], moved["to_state"], moved["transitioned"]) == ("PENDING", "REVIEWING", True)
        pushed = c.post(
            "/events/push",
            json={"source": "ops", "event_type": "workflow:event", "payload": {"workflow_instance_id": a, "event": "break"}},
        )
        assert pushed.status_code == 200
        poll(lambda: state(a) == "FAILED")
        retried = c.post(f"/workflow-instance/{a}/retry", headers=CONFIRM).json()
        assert (retried["from_state"], retried["to_state"]) == ("FAILED", "REVIEWING")
        poll(lambda: state(a) == "EXPIRED")  # the reviewing timeout fired

        b = c.post("/workflow/approval/create").json()["id"]
        c.post(f"/workflow-instance/{b}/event", json={"event": "submit"})
        c.post(f"/workflow-instance/{b}/event", json={"event": "approve"})
        assert state(b) == "APPROVED"
        refused = c.post(f"/workflow-instance/{b}/cancel", headers=CONFIRM)
        assert refused.status_code == 409 and "final state" in refused.json()["error"]
    assert server.stop() == 0

    again = aman(token="t", runtime_dir=runtime)
    with again.client() as c:
        states = {i["id"]: i["current_state"] for i in c.get("/workflow-instances", params={"workflow": "approval"}).json()["items"]}
        assert states == {a: "EXPIRED", b: "APPROVED"}
    assert again.stop() == 0
