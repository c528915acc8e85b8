"""Config: read and change the configuration while the runtime serves (http-api §10; D10)."""

from __future__ import annotations

from typing import Any

from attrs import frozen

from sdk import AuditNote, ConfigChange, Invalid, PluginContext, Route, hookimpl

_NON_EMPTY = "field 'changes' must be a non-empty object"


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="POST",
            path="/config/set",
            handler=set_config,
            body=ConfigSetIn,
            confirm=True,
            audit="config.set",
            target="config",
        ),
        Route(method="GET", path="/config", handler=get_config),
    ]


@frozen
class ConfigSetIn:
    changes: Any = None
    changed_fields: Any = None


async def set_config(
    ctx: PluginContext, body: ConfigSetIn, operator: str, audit: AuditNote
) -> dict[str, Any]:
    if not isinstance(body.changes, dict) or not body.changes:
        if body.changed_fields is not None and body.changes is None:
            raise Invalid(_NON_EMPTY + " ('changed_fields' is not supported)")
        raise Invalid(_NON_EMPTY)
    result: ConfigChange = await ctx.settings.set(body.changes, operator=operator)
    audit.detail = ",".join(sorted(body.changes))
    return {"ok": True, **ctx.converter.unstructure(result)}


async def get_config(ctx: PluginContext) -> dict[str, Any]:
    path = ctx.settings.path
    return {
        "config": ctx.settings.effective_tree(redact=True),
        "path": str(path) if path else None,
        "overridden": ctx.settings.overridden(),
    }
