"""A test plugin with one tool of each kind, and a started kernel around it."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from attrs import define

from sdk import TOOLS, Tool, ToolContext, ToolDenial, ToolError, ToolGuard, ToolRequest, hookimpl
from sdk.testing import Recorder

TEXT = {
    "type": "object",
    "properties": {"text": {"type": "string"}, "limit": {"type": "integer", "minimum": 0}},
    "required": ["text"],
}


class Kit:
    """Tools ``kit_*``: low/medium/high, sync and async, slow, failing, one that spawns a child
    process; and a guard (``kit-guard``) that blocks ``forbidden``, ``/etc`` and raises on
    ``boom``."""

    name = "kit"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], ToolContext]] = []
        self.children: list[asyncio.subprocess.Process] = []

    @hookimpl
    def register_tools(self) -> list[Tool]:
        return [
            Tool(
                name="kit_echo",
                description="Echo a text",
                parameters=TEXT,
                sensitivity="low",
                handler=self.echo,
            ),
            Tool(name="kit_note", description="Note anything", handler=self.note),  # medium, async
            Tool(name="kit_wipe", description="Dangerous", sensitivity="high", handler=self.wipe),
            Tool(
                name="kit_nap", description="Sleeps too long", sensitivity="low", handler=self.nap
            ),
            Tool(name="kit_broken", description="Fails", sensitivity="low", handler=self.broken),
            Tool(name="kit_crash", description="Raises", sensitivity="low", handler=self.crash),
            Tool(
                name="kit_spawn", description="Child process", sensitivity="low", handler=self.spawn
            ),
        ]

    @hookimpl
    def register_policies(self) -> list[ToolGuard]:
        return [ToolGuard(name="kit-guard", order=10, check=self.guard)]

    def guard(self, request: ToolRequest) -> ToolDenial | None:
        text = str(request.args.get("text", ""))
        if text == "boom":
            raise RuntimeError("guard bug")
        if text == "forbidden":
            return ToolDenial(block_type="hardline", reason="forbidden text")
        if text.startswith("/etc"):
            return ToolDenial(block_type="path_denied", reason=f"{text} is outside the workspace")
        return None

    def echo(self, args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
        self.calls.append(("kit_echo", args, tc))
        return {
            "text": args["text"],
            "in_worker_thread": threading.current_thread() is not threading.main_thread(),
        }

    async def note(self, args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
        self.calls.append(("kit_note", args, tc))
        return {"noted": len(args)}

    def wipe(self, args: dict[str, Any], tc: ToolContext) -> str:
        self.calls.append(("kit_wipe", args, tc))
        return "wiped"

    async def nap(self, args: dict[str, Any], tc: ToolContext) -> None:
        await asyncio.sleep(30)

    def broken(self, args: dict[str, Any], tc: ToolContext) -> None:
        raise ToolError("disk on fire")

    async def crash(self, args: dict[str, Any], tc: ToolContext) -> None:
        raise ValueError("bad input")

    async def spawn(self, args: dict[str, Any], tc: ToolContext) -> int:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(30)"
        )
        self.children.append(child)
        tc.processes.add(child)
        try:
            return await child.wait()
        finally:
            tc.processes.discard(child)


@define
class Env:
    client: Any
    kernel: Any
    kit: Kit
    recorder: Recorder

    @property
    def tools(self) -> Any:
        return self.kernel.stash[TOOLS]

    def events(self, event_type: str) -> list[Any]:
        return self.recorder.of_type(event_type)

    async def answer(self, resp: Any) -> tuple[int, Any]:
        return resp.status_code, await resp.get_json()

    async def execute(self, name: str, body: Any = None) -> tuple[int, Any]:
        if body is None:
            return await self.answer(await self.client.post(f"/tools/{name}/execute"))
        return await self.answer(await self.client.post(f"/tools/{name}/execute", json=body))

    async def audit(self, action: str) -> list[dict[str, Any]]:
        return (await self.answer(await self.client.get(f"/audit-log?action={action}")))[1]["items"]


@pytest.fixture(name="start")
def _start(
    make_kernel: Callable[..., Any], serve_kernel: Callable[[Any], Awaitable[Any]]
) -> Callable[..., Awaitable[Env]]:
    """``env = await start({"security.tool_approval": "always"})``: a served kernel with
    :class:`Kit`, every event recorded, ``runtime.tool_timeout_sec`` = 1."""

    async def start(settings: dict[str, Any] | None = None) -> Env:
        kit, recorder = Kit(), Recorder()
        kernel = make_kernel(
            kit, recorder, settings={"runtime.tool_timeout_sec": 1, **(settings or {})}
        )
        client = await serve_kernel(kernel)
        return Env(client=client, kernel=kernel, kit=kit, recorder=recorder)

    return start
