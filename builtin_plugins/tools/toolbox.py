"""The one call path of every tool (http-api §18): :class:`Tools` is the :class:`sdk.Toolbox`.

A call is checked in the order of §18 — the tool exists, the arguments match its schema, a
``high`` tool called through the API needs ``security.risky_capabilities_enabled``, the tool
guards of ``register_policies`` pass, an agent's call is approved — and then run within
``runtime.tool_timeout_sec``. Every way a call can end is one row of :data:`REFUSALS`, with the
text an agent's model gets (§11.3 step 4), the text an operator gets and the HTTP error of
``/tools/{name}/execute``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import frozen

from sdk import (
    Contribution,
    Forbidden,
    Invalid,
    NotFound,
    Origin,
    PluginContext,
    Plugins,
    SdkError,
    Tool,
    ToolContext,
    ToolDenial,
    ToolError,
    ToolGuard,
    ToolOutcome,
    ToolRequest,
    uuid7,
)

if TYPE_CHECKING:
    from .approval import Approvals

__all__ = ["REFUSALS", "Refusal", "Tools", "refusal_error"]

Processes = set[asyncio.subprocess.Process]


@frozen
class Refusal:
    """The texts and HTTP error of one way a call can end without a result."""

    api: str  # for operators and pipelines (http-api §18, /tools/{name}/execute)
    agent: str  # fed back to the model (http-api §11.3 step 4)
    error: type[SdkError]  # the error /tools/{name}/execute answers


_BLOCKED, _DENIED = "hardline blocked: {reason}", "path denied: {reason}"
REFUSALS: dict[str, Refusal] = {
    "not_found": Refusal("tool not found: {tool}", "tool not found: {tool}", NotFound),
    "invalid": Refusal(
        "invalid arguments for tool {tool}: {reason}",
        "invalid arguments for tool {tool}: {reason}",
        Invalid,
    ),
    "risky": Refusal(
        "tool {tool} requires security.risky_capabilities_enabled = true",
        "tool {tool} requires security.risky_capabilities_enabled = true",
        Forbidden,
    ),
    "hardline": Refusal(_BLOCKED, "hardline_blocked: {reason}", Forbidden),
    "path_denied": Refusal(_DENIED, "path_denied: {reason}", Forbidden),
    "approval_denied": Refusal("approval_denied: {tool}", "approval_denied: {tool}", Forbidden),
    "approval_expired": Refusal(
        "approval_expired: {tool} (no answer within {limit} s)",
        "approval_expired: {tool} (no answer within {limit} s)",
        Forbidden,
    ),
    "timeout": Refusal(
        "tool {tool} timed out after {limit} s", "tool {tool} timed out after {limit} s", Invalid
    ),
    "failed": Refusal("{reason}", "{reason}", Invalid),
}


def refusal_error(outcome: ToolOutcome) -> SdkError:
    """The HTTP error for a call that did not succeed."""
    return REFUSALS[outcome.refusal or "failed"].error(outcome.error)


@frozen(kw_only=True)
class _Call:
    """One call's identity: what its outcome and events carry."""

    tool: str
    call_id: str
    origin: Origin
    source: str
    session_id: str | None

    def refused(self, refusal: str, duration_ms: int = 0, **values: Any) -> ToolOutcome:
        texts = REFUSALS[refusal]
        template = texts.agent if self.origin == "agent" else texts.api
        return ToolOutcome(
            tool=self.tool,
            call_id=self.call_id,
            ok=False,
            error=template.format(tool=self.tool, **values),
            refusal=refusal,
            duration_ms=duration_ms,
        )

    def payload(self, **extra: Any) -> dict[str, Any]:
        """A ``tool:*`` event payload (http-api §5.2)."""
        base: dict[str, Any] = {"tool": self.tool, "call_id": self.call_id}
        if self.session_id is not None:
            base["session_id"] = self.session_id
        return base | extra


class Tools:
    """Every running plugin's tools (read on each call) and the one way to call them."""

    def __init__(self, ctx: PluginContext, approvals: Approvals) -> None:
        self._ctx = ctx
        self.approvals = approvals

    def contributions(self) -> list[Contribution]:
        """The tools with the plugins providing them, sorted by tool name."""
        found = [
            c for c in self._ctx.plugins.contributions("register_tools") if isinstance(c.item, Tool)
        ]
        return sorted(found, key=lambda c: c.item.name)

    def tools(self) -> list[Tool]:
        return [c.item for c in self.contributions()]

    def get(self, name: str) -> Tool | None:
        return next((tool for tool in self.tools() if tool.name == name), None)

    def owner(self, tool: Tool) -> str:
        """The plugin that provides ``tool``."""
        return next(c.plugin for c in self.contributions() if c.item is tool)

    def guards(self) -> list[ToolGuard]:
        """The running plugins' tool guards, in ascending order (load order among equals)."""
        found = [
            c.item
            for c in self._ctx.plugins.contributions("register_policies")
            if isinstance(c.item, ToolGuard)
        ]
        return sorted(found, key=lambda guard: guard.order)

    def workspace(self) -> Path:
        """``tools.workspace_dir``, absolute, created if missing (formats §1.2)."""
        path = self._ctx.settings.resolve_path("tools.workspace_dir")
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def call(
        self,
        name: str,
        args: Mapping[str, Any],
        *,
        origin: Origin,
        source: str,
        agent_id: str | None = None,
        session_id: str | None = None,
        processes: Processes | None = None,
    ) -> ToolOutcome:
        """Check and run one call (:meth:`sdk.Toolbox.call`)."""
        call = _Call(
            tool=name, call_id=uuid7(), origin=origin, source=source, session_id=session_id
        )
        tool = self.get(name)
        if tool is None:
            return call.refused("not_found")
        reason = _schema_error(tool.parameters, args)
        if reason is not None:
            return call.refused("invalid", reason=reason)
        if (
            origin == "api"
            and tool.sensitivity == "high"
            and not self._ctx.settings.get("security.risky_capabilities_enabled")
        ):
            return call.refused("risky")
        try:
            workspace = self.workspace()
        except OSError as exc:
            return call.refused("failed", reason=f"tools.workspace_dir unusable: {exc}")
        request = ToolRequest(
            tool=name,
            args=dict(args),
            sensitivity=tool.sensitivity,
            origin=origin,
            workspace=workspace,
            agent_id=agent_id,
            session_id=session_id,
        )
        denial = self._check(request)
        if denial is not None:
            kind = "path_denied" if denial.block_type == "path_denied" else "hardline"
            outcome = call.refused(kind, reason=denial.reason)
            await self._emit(
                "tool:security_denied", call.payload(block_type=kind, error=outcome.error), source
            )
            return outcome
        if origin == "agent":
            verdict = await self.approvals.approve(
                name, args, tool.sensitivity, agent_id=agent_id, session_id=session_id
            )
            if verdict != "approved":
                limit = self._ctx.settings.get("security.tool_approval_timeout_sec")
                return call.refused(f"approval_{verdict}", limit=limit)
        limit = int(self._ctx.settings.get("runtime.tool_timeout_sec"))
        tc = ToolContext(
            workspace=workspace,
            timeout_sec=float(limit),
            call_id=call.call_id,
            origin=origin,
            agent_id=agent_id,
            session_id=session_id,
            processes=processes if processes is not None else set(),
        )
        return await self._run(call, tool, dict(args), tc, limit)

    def _check(self, request: ToolRequest) -> ToolDenial | None:
        """The first denial of the guards; a guard that raises denies (fail closed)."""
        for guard in self.guards():
            try:
                denial = guard.check(request)
            except Exception as exc:  # a broken guard refuses the call (logged)
                self._ctx.log.exception("tool guard %s failed on %s", guard.name, request.tool)
                return ToolDenial(
                    block_type="hardline",
                    reason=f"tool guard {guard.name} failed: {type(exc).__name__}",
                )
            if denial is not None:
                return denial
        return None

    async def _run(
        self, call: _Call, tool: Tool, args: dict[str, Any], tc: ToolContext, limit: int
    ) -> ToolOutcome:
        await self._emit("tool:dispatched", call.payload(), call.source)
        started = time.perf_counter()
        try:
            output = await _execute(self._ctx.plugins, self.owner(tool), tool, args, tc, limit)
            json.dumps(output)  # a result that is not JSON fails the call
        except asyncio.CancelledError:  # the turn was stopped
            error = f"tool {call.tool} was cancelled"
            payload = call.payload(error=error, duration_ms=_ms(started))
            await asyncio.shield(self._emit("tool:failed", payload, call.source))
            raise
        except Exception as exc:  # a failing tool is an outcome (logged below)
            outcome = _failure(call, exc, limit, _ms(started))
            if not isinstance(exc, ToolError | _Expired):
                self._ctx.log.warning("tool %s failed", call.tool, exc_info=exc)
            await self._emit(
                "tool:failed",
                call.payload(error=outcome.error, duration_ms=outcome.duration_ms),
                call.source,
            )
            return outcome
        duration = _ms(started)
        await self._emit("tool:completed", call.payload(duration_ms=duration), call.source)
        return ToolOutcome(
            tool=call.tool, call_id=call.call_id, ok=True, output=output, duration_ms=duration
        )

    async def _emit(self, event_type: str, payload: dict[str, Any], source: str) -> None:
        """Publish a ``tool:*`` event; a refused publish never changes the call's outcome."""
        try:
            await self._ctx.bus.publish(event_type, payload, source=source)
        except SdkError as exc:
            self._ctx.log.warning("%s not published: %s", event_type, exc.message)


def _schema_error(schema: Mapping[str, Any], args: Mapping[str, Any]) -> str | None:
    """Why ``args`` do not match ``schema`` (the most relevant error), or None."""
    # Imported on the first call: jsonschema costs ~45 ms of every start-up otherwise.
    from jsonschema.exceptions import SchemaError, best_match
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        return f"the tool's schema is invalid: {exc.message}"
    error = best_match(cls(schema).iter_errors(dict(args)))
    if error is None:
        return None
    return f"{error.json_path}: {error.message}" if error.path else error.message


class _Expired(Exception):
    """The call ran out of ``runtime.tool_timeout_sec``."""


def _failure(call: _Call, exc: Exception, limit: int, duration: int) -> ToolOutcome:
    """The outcome of a call that raised or ran out of time."""
    if isinstance(exc, _Expired):
        return call.refused("timeout", duration, limit=limit)
    if isinstance(exc, ToolError):
        return call.refused("failed", duration, reason=str(exc) or "tool error")
    return call.refused("failed", duration, reason=f"{type(exc).__name__}: {exc}")


async def _execute(
    plugins: Plugins, owner: str, tool: Tool, args: dict[str, Any], tc: ToolContext, limit: int
) -> Any:
    """Run the handler within ``limit`` seconds. When time is up or the caller is cancelled, the
    child processes the handler added to ``tc.processes`` are killed first, while they are still
    there, and then the handler is cancelled."""
    before = set(tc.processes)
    task = asyncio.ensure_future(_invoke(plugins, owner, tool, args, tc))
    try:
        done, _ = await asyncio.wait({task}, timeout=limit)
    finally:
        if not task.done():
            _kill(tc.processes - before)
            task.cancel()
            await asyncio.wait({task})
    if not done:
        raise _Expired
    return task.result()


async def _invoke(
    plugins: Plugins, owner: str, tool: Tool, args: dict[str, Any], tc: ToolContext
) -> Any:
    """Run the handler: async ones on the loop, sync ones in a worker thread of the plugin that
    provides the tool (one that overruns holds that thread, never the runtime's exit)."""
    if inspect.iscoroutinefunction(tool.handler):
        result = await tool.handler(args, tc)
    else:
        result = await plugins.run_sync(owner, tool.handler, args, tc)
    return await result if inspect.isawaitable(result) else result


def _kill(processes: Processes) -> None:
    """Kill the child processes a call started that still run."""
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
