"""Tools: functions an agent can call and an operator can run (http-api §18).

Plugins contribute :class:`Tool` objects through ``register_tools``. The ``tools`` plugin owns
them all and runs every call through one path, :meth:`Toolbox.call`: the schema, the tool guards
of ``register_policies`` (hardline rules, allowlist), the approval of agent calls, the time limit
and the ``tool:*`` events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from attrs import field, frozen

from .llm import ToolSpec
from .models import StashKey

__all__ = [
    "TOOLS",
    "Origin",
    "Sensitivity",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolOutcome",
    "Toolbox",
]

Sensitivity = Literal["low", "medium", "high"]
#: Who calls: an agent's turn (approval applies), the operator through
#: ``/tools/{name}/execute`` (the risky gate applies) or a runtime pipeline such as explore.
Origin = Literal["agent", "api", "pipeline"]


class ToolError(Exception):
    """A tool failed; the message is what the caller (the model or the operator) sees."""


@frozen(kw_only=True)
class ToolContext:
    """What a tool handler gets besides its arguments.

    :ivar workspace: ``tools.workspace_dir`` (absolute, created); relative paths resolve here.
    :ivar timeout_sec: the call's time limit (``runtime.tool_timeout_sec``).
    :ivar processes: child processes the call starts must be added here while they run, so
        ``/chat/session/{id}/kill`` can kill them.
    """

    workspace: Path
    timeout_sec: float
    call_id: str
    origin: Origin
    agent_id: str | None = None
    session_id: str | None = None
    processes: set[asyncio.subprocess.Process] = field(factory=set, eq=False)


@frozen(kw_only=True)
class Tool:
    """A tool a plugin contributes.

    :param name: unique among all tools (a collision fails the contributing plugin's load).
    :param parameters: the JSON Schema of the argument object.
    :param handler: ``handler(args, tc)`` returning a JSON-compatible result, sync (run in a worker
        thread) or async; it raises :class:`ToolError` (or any exception) on failure.
    :param sensitivity: ``low``, ``medium`` (the default) or ``high`` (http-api §18.2).
    """

    name: str
    description: str
    handler: Callable[[dict[str, Any], ToolContext], Any | Awaitable[Any]]
    parameters: Mapping[str, Any] = field(factory=lambda: {"type": "object", "properties": {}})
    sensitivity: Sensitivity = "medium"

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


@frozen(kw_only=True)
class ToolOutcome:
    """How one call ended.

    ``refusal`` names why it did not run or failed: ``not_found``, ``invalid`` (schema),
    ``risky`` (a high tool through the API without the flag), ``hardline``, ``path_denied``,
    ``approval_denied``, ``approval_expired`` (no answer in time), ``timeout`` or ``failed``; ``error`` is the text for the caller
    (for an agent: what is fed back to the model, e.g. ``hardline_blocked: <reason>``).
    """

    tool: str
    call_id: str
    ok: bool
    output: Any = None
    error: str = ""
    refusal: str | None = None
    duration_ms: int = 0


class Toolbox(Protocol):
    """The ``tools`` plugin's service under :data:`TOOLS`."""

    def tools(self) -> list[Tool]:
        """Every available tool, sorted by name."""
        ...

    def get(self, name: str) -> Tool | None: ...

    async def call(
        self,
        name: str,
        args: Mapping[str, Any],
        *,
        origin: Origin,
        source: str,
        agent_id: str | None = None,
        session_id: str | None = None,
        processes: set[asyncio.subprocess.Process] | None = None,
    ) -> ToolOutcome:
        """Run one call through the checks of http-api §18 (in its order) and publish
        ``tool:dispatched`` then ``tool:completed``/``tool:failed``, or ``tool:security_denied``,
        from ``source``. Never raises for a refused or failed call; cancellation propagates
        (and cancels a pending approval)."""
        ...


#: The ``tools`` plugin puts its :class:`Toolbox` here while it runs.
TOOLS: StashKey[Toolbox] = StashKey()
