"""Tools: the registry of every plugin's tools and their one call path (http-api §18).

Tools come from the running plugins' ``register_tools`` hooks, read on every call, so enabling,
disabling or installing a plugin changes them at once. Every call — an agent's (the chat turn),
an operator's (``POST /tools/{name}/execute``) or a pipeline's (explore) — goes through
:class:`~builtin_plugins.tools.toolbox.Tools`, which the plugin puts at :data:`sdk.TOOLS`. Agent
calls may wait for an operator's approval (``/tool-auth/*``, §18.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import frozen

from sdk import (
    TOOLS,
    AuditNote,
    ConfigKey,
    PluginContext,
    Route,
    StashKey,
    hookimpl,
)

from .approval import Approvals, Pending, args_digest
from .toolbox import Tools, refusal_error

__all__ = ["TOOLBOX", "Tools"]

#: The concrete service (the same object as ``ctx.stash[TOOLS]``), for this plugin's routes.
TOOLBOX = StashKey[Tools]()


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey]:
    return [
        ConfigKey(
            name="runtime.tool_timeout_sec",
            type=int,
            default=60,
            minimum=1,
            maximum=3600,
            env="AMAN_RUNTIME_TOOL_TIMEOUT_SEC",
            doc="Limit for one tool call (agents and /tools/{name}/execute).",
        ),
        ConfigKey(
            name="security.risky_capabilities_enabled",
            type=bool,
            default=False,
            env="AMAN_SECURITY_RISKY_CAPABILITIES_ENABLED",
            doc="Allows high-sensitivity tools through /tools/{name}/execute.",
        ),
        ConfigKey(
            name="security.tool_approval",
            type=str,
            default="sensitive",
            choices=("never", "sensitive", "always"),
            doc="When agent tool calls need approval (http-api §18.2).",
        ),
        ConfigKey(
            name="security.tool_approval_timeout_sec",
            type=int,
            default=60,
            minimum=1,
            maximum=3600,
            doc="Unanswered approval requests expire after this; the call does not run.",
        ),
        ConfigKey(
            name="tools.workspace_dir",
            type=Path,
            default="workspace",
            doc="Base for relative tool paths (relative to runtime.dir); created if missing.",
        ),
    ]


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    tools = Tools(ctx, Approvals(ctx))
    tools.workspace()
    ctx.stash[TOOLBOX] = tools
    ctx.stash[TOOLS] = tools


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    tools = ctx.stash.get(TOOLBOX)
    for key in (TOOLS, TOOLBOX):
        if key in ctx.stash:
            del ctx.stash[key]
    if tools is not None:
        await tools.approvals.close()


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(method="GET", path="/tools", handler=list_tools, name="list_tools"),
        Route(
            method="POST",
            path="/tools/{name}/execute",
            handler=execute,
            name="execute_tool",
            body=dict,
            audit="tool.execute",
            target="tool:{name}",
        ),
        Route(method="GET", path="/tool-auth/pending", handler=pending, name="pending_approvals"),
        Route(
            method="POST",
            path="/tool-auth/respond",
            handler=respond,
            name="respond_approval",
            body=RespondIn,
            audit="tool_auth.respond",
            target="tool_auth",
        ),
    ]


@frozen
class RespondIn:
    auth_id: str
    approved: bool


async def list_tools(ctx: PluginContext) -> dict[str, list[dict[str, Any]]]:
    """``GET /tools`` (http-api §18)."""
    return {
        "items": [
            {
                "name": c.item.name,
                "description": c.item.description,
                "parameters": c.item.parameters,
                "sensitivity": c.item.sensitivity,
                "plugin": c.plugin,
            }
            for c in ctx.stash[TOOLBOX].contributions()
        ]
    }


async def execute(
    ctx: PluginContext, name: str, body: dict[str, Any], audit: AuditNote
) -> dict[str, Any]:
    """``POST /tools/{name}/execute``: the operator runs a tool, without approval (§18)."""
    outcome = await ctx.stash[TOOLBOX].call(name, body, origin="api", source="api")
    if not outcome.ok:
        raise refusal_error(outcome)
    audit.detail = f"args_hash:{args_digest(body)[:16]} duration_ms={outcome.duration_ms}"
    return {"tool": name, "duration_ms": outcome.duration_ms, "output": outcome.output}


async def pending(ctx: PluginContext) -> dict[str, list[Pending]]:
    """``GET /tool-auth/pending``, oldest first."""
    return {"items": ctx.stash[TOOLBOX].approvals.pending()}


async def respond(
    ctx: PluginContext, body: RespondIn, operator: str, audit: AuditNote
) -> dict[str, Any]:
    """``POST /tool-auth/respond``: approve or deny a pending request (§18)."""
    audit.target = f"tool_auth:{body.auth_id}"
    answered = await ctx.stash[TOOLBOX].approvals.respond(
        body.auth_id, body.approved, operator=operator
    )
    audit.detail = f"approved={str(body.approved).lower()} tool={answered.tool}"
    return {"ok": True, "auth_id": body.auth_id, "approved": body.approved}
