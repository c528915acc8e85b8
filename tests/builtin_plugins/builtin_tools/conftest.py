"""Fixtures of the builtin-tools tests: a real ``ToolContext`` on ``tmp_path`` and ``run``, which
calls a tool's handler the way the ``tools`` plugin does (after schema validation; sync handlers
in a worker thread)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from builtin_plugins.builtin_tools import register_tools
from sdk import Tool, ToolContext

TOOLS: dict[str, Tool] = {tool.name: tool for tool in register_tools(ctx=None)}


@pytest.fixture(name="workspace")
def _workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture(name="tc")
def _tc(workspace: Path) -> ToolContext:
    return ToolContext(workspace=workspace, timeout_sec=5, call_id="t", origin="api")


async def call(tc: ToolContext, name: str, args: dict[str, Any]) -> Any:
    tool = TOOLS[name]
    Draft202012Validator(tool.parameters).validate(args)
    if inspect.iscoroutinefunction(tool.handler):
        return await tool.handler(args, tc)
    return await asyncio.to_thread(tool.handler, args, tc)


@pytest.fixture(name="run")
def _run(tc: ToolContext) -> Callable[..., Awaitable[Any]]:
    """``await run("read", path="a.txt")``: the output, or the handler's exception."""
    return lambda name, **args: call(tc, name, args)


@pytest.fixture(name="run_within")
def _run_within(workspace: Path) -> Callable[..., Awaitable[Any]]:
    """``await run_within(0.1, "grep", pattern="x")``: ``run`` with another time limit."""

    def run_within(seconds: float, name: str, **args: Any) -> Awaitable[Any]:
        tc = ToolContext(workspace=workspace, timeout_sec=seconds, call_id="t", origin="api")
        return call(tc, name, args)

    return run_within
