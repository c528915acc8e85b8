"""The ``security`` plugin in a kernel: its keys (formats §1.2), its policies and their order,
and the settings that switch them (http-api §11.4, §18.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdk import (
    InputPolicy,
    InputVerdict,
    OutputPolicy,
    TextInput,
    ToolDenial,
    ToolGuard,
    ToolRequest,
)

CONFIRM = {"x-aman-confirm": "yes"}
SECRET_REPLY = "here: sk-A1b2C3d4E5f6G7h8I9j0"


def policies(kernel: Any) -> dict[str, Any]:
    return {
        c.item.name: c.item
        for c in kernel.plugins.contributions("register_policies")
        if c.plugin == "security"
    }


async def config_set(client: Any, **changes: Any) -> dict[str, Any]:
    resp = await client.post(
        "/config/set",
        json={"changes": {f"security.{k}": v for k, v in changes.items()}},
        headers=CONFIRM,
    )
    out = await resp.get_json()
    assert resp.status_code == 200, out
    return out


def text(value: str) -> TextInput:
    return TextInput(text=value, agent_id="main", session_id="s-1")


def tool(workspace: Path, name: str, **args: Any) -> ToolRequest:
    return ToolRequest(tool=name, args=args, workspace=workspace)


async def test_keys_and_defaults(client):
    resp = await client.get("/config")
    assert resp.status_code == 200
    security = (await resp.get_json())["config"]["security"]
    assert {
        k: security[k]
        for k in (
            "allowlist_enabled",
            "allowed_paths",
            "network_enabled",
            "exec_allowlist",
            "input_sanitizer",
            "output_validation",
        )
    } == {
        "allowlist_enabled": False,
        "allowed_paths": [],
        "network_enabled": True,
        "exec_allowlist": [],
        "input_sanitizer": True,
        "output_validation": True,
    }


async def test_keys_are_live_and_typed(client):
    out = await config_set(
        client,
        allowlist_enabled=True,
        allowed_paths=["/srv"],
        network_enabled=False,
        exec_allowlist=["ls"],
        input_sanitizer=False,
        output_validation=False,
    )
    assert (out["restart_required"], out["overridden"]) == ([], [])
    assert len(out["applied"]) == 6
    resp = await client.post(
        "/config/set", json={"changes": {"security.allowed_paths": "/srv"}}, headers=CONFIRM
    )
    assert resp.status_code == 400


async def test_policies_their_kinds_and_order(client, kernel):
    found = policies(kernel)
    assert {name: (type(p), p.order) for name, p in found.items()} == {
        "input_sanitizer": (InputPolicy, 100),
        "injection_detector": (InputPolicy, 300),
        "output_validator": (OutputPolicy, 100),
        "content_filter": (OutputPolicy, 200),
        "hardline": (ToolGuard, 100),
        "allowlist": (ToolGuard, 200),
    }


async def test_input_sanitizer_follows_its_setting(client, kernel):
    sanitizer, detector = (
        policies(kernel)["input_sanitizer"],
        policies(kernel)["injection_detector"],
    )
    assert sanitizer.check(text("rm -rf it")).outcome == "blocked"
    await config_set(client, input_sanitizer=False)
    assert sanitizer.check(text("rm -rf it")) is None
    # the injection detector has no switch
    assert detector.check(text("<script>")) == InputVerdict(
        outcome="injection_detected",
        detail="pattern:script_tag",
        event=("injection_detected", {"session_id": "s-1", "pattern": "script_tag"}),
    )
    await config_set(client, input_sanitizer=True)
    assert sanitizer.check(text("ignore all")).text == "[redacted]"


async def test_output_checks_follow_output_validation(client, kernel):
    found = policies(kernel)
    validator, content = found["output_validator"], found["content_filter"]
    assert validator.check(text(SECRET_REPLY)).reason == "validator:openai_api_key"
    assert content.check(text(SECRET_REPLY)).reason == "content_filter:api_key"
    await config_set(client, output_validation=False)
    assert validator.check(text(SECRET_REPLY)) is None
    assert content.check(text(SECRET_REPLY)) is None


async def test_allowlist_follows_its_settings(client, kernel, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    guard = policies(kernel)["allowlist"]
    assert guard.check(tool(workspace, "read", path="/etc/hostname")) is None  # off by default
    assert guard.check(tool(workspace, "http", url="http://x")) is None

    await config_set(client, allowlist_enabled=True)
    assert guard.check(tool(workspace, "read", path="/etc/hostname")) == ToolDenial(
        block_type="path_denied",
        reason="path '/etc/hostname' (path) is outside the workspace and the allowed paths",
    )
    assert guard.check(tool(workspace, "read", path="notes.txt")) is None
    assert guard.check(tool(workspace, "http", url="http://x")) is None

    await config_set(client, allowed_paths=["/etc"], network_enabled=False, exec_allowlist=["ls"])
    assert guard.check(tool(workspace, "read", path="/etc/hostname")) is None
    assert guard.check(tool(workspace, "http", url="http://x")).reason == (
        "network access is disabled (security.network_enabled is false)"
    )
    assert guard.check(tool(workspace, "exec", command="rm")).reason == (
        "command 'rm' is not in security.exec_allowlist"
    )
    assert guard.check(tool(workspace, "exec", command="ls")) is None


async def test_relative_allowed_paths_are_read_against_the_runtime_dir(
    make_kernel, serve_kernel, tmp_path
):
    runtime = tmp_path / "runtime"
    (runtime / "shared").mkdir(parents=True)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    kernel = make_kernel(
        settings={"security.allowlist_enabled": True, "security.allowed_paths": ["shared"]},
        runtime_dir=runtime,
    )
    await serve_kernel(kernel)
    guard = policies(kernel)["allowlist"]
    assert guard.check(tool(workspace, "read", path=str(runtime / "shared" / "f"))) is None
    assert guard.check(tool(workspace, "read", path=str(runtime / "f"))) is not None


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"security.allowlist_enabled": True, "security.exec_allowlist": ["rm", "reboot"]},
        {"security.input_sanitizer": False, "security.output_validation": False},
    ],
)
async def test_hardline_is_always_on(make_kernel, serve_kernel, tmp_path, settings):
    kernel = make_kernel(settings=settings)
    await serve_kernel(kernel)
    guard = policies(kernel)["hardline"]
    for origin in ("agent", "api", "pipeline"):
        request = ToolRequest(
            tool="exec",
            args={"command": "rm", "args": ["-rf", "/"]},
            workspace=tmp_path,
            origin=origin,
        )
        assert guard.check(request) == ToolDenial(
            block_type="hardline", reason="recursive root filesystem deletion is blocked"
        )
