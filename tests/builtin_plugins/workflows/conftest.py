"""Fixtures of the workflow tests: a served kernel with the workflows plugin, a recorder of
``workflow_state_changed`` and helpers to write definition files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from builtin_plugins.workflows import ENGINE
from sdk.testing import Recorder

CONFIRM = {"x-aman-confirm": "yes"}

APPROVAL: dict[str, Any] = {
    "name": "approval",
    "states": ["pending", "reviewing", "approved", "rejected", "error", "cancelled"],
    "initial_state": "pending",
    "final_states": ["approved", "rejected", "cancelled"],
    "error_state": "error",
    "transitions": [
        {"from": "pending", "event": "submit", "to": "reviewing"},
        {"from": "reviewing", "event": "approve", "to": "approved", "guard": "has_permission",
         "on_fail": "rejected"},
        {"from": "reviewing", "event": "check", "to": "approved", "guard": "has_permission"},
        {"from": "reviewing", "event": "back", "to": "pending"},
        {"from": "pending", "event": "cancel", "to": "cancelled"},
        {"from": "*", "event": "withdraw", "to": "rejected"},
    ],
}



class StateChanges(Recorder):
    """Keeps every ``workflow_state_changed``; ``changes()`` gives them as tuples."""

    def changes(self, instance_id: str | None = None) -> list[tuple[Any, ...]]:
        return [
            (e.payload["from_state"], e.payload["to_state"], e.payload["event"], e.payload["reason"])
            for e in self.seen
            if instance_id is None or e.payload["instance_id"] == instance_id
        ]


class Flows:
    """A served kernel with helpers."""

    def __init__(self, client: Any, kernel: Any, recorder: Recorder) -> None:
        self.client, self.kernel, self.recorder = client, kernel, recorder

    @property
    def engine(self) -> Any:
        return self.kernel.stash[ENGINE]

    async def create(self, name: str = "approval", data: Any = None) -> dict[str, Any]:
        resp = await self.client.post(f"/workflow/{name}/create", json={"data": data})
        assert resp.status_code == 200, await resp.get_json()
        return await resp.get_json()

    async def event(self, instance_id: str, event: str, **payload: Any) -> Any:
        return await self.client.post(
            f"/workflow-instance/{instance_id}/event", json={"event": event, "payload": payload}
        )

    async def instance(self, instance_id: str) -> dict[str, Any]:
        return await (await self.client.get(f"/workflow-instance/{instance_id}")).get_json()

    async def state(self, instance_id: str) -> str:
        return (await self.instance(instance_id))["current_state"]


def write(directory: Path, name: str, content: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


@pytest.fixture(name="flow_dir")
def _flow_dir(tmp_path: Path) -> Path:
    return tmp_path / "flows"


@pytest.fixture(name="start_flows")
def _start_flows(make_kernel, serve_kernel, flow_dir) -> Callable[..., Any]:
    """``flows = await start_flows(*plugins, settings={...}, files={...}, runtime_dir=...)``."""

    async def start(*plugins: object, files: dict[str, Any] | None = None, **options: Any) -> Flows:
        for name, content in (files or {}).items():
            write(flow_dir, name, content)
        settings = {"workflows.dir": str(flow_dir), **options.pop("settings", {})}
        recorder = StateChanges("workflow_state_changed", name="wf-recorder")
        kernel = make_kernel(recorder, *plugins, settings=settings, **options)
        client = await serve_kernel(kernel)
        return Flows(client, kernel, recorder)

    return start


@pytest.fixture(name="flows")
async def _flows(start_flows) -> Flows:
    return await start_flows(files={"approval.yaml": APPROVAL})
