"""Plugin manager: list, enable and disable plugins at run time (http-api §7; essential)."""

from __future__ import annotations

from typing import Any

from sdk import PluginChange, PluginContext, Route, hookimpl


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(method="GET", path="/plugins", handler=list_plugins),
        Route(
            method="POST",
            path="/plugin/{name}/enable",
            handler=enable,
            audit="plugin.enable",
            target="plugin:{name}",
        ),
        Route(
            method="POST",
            path="/plugin/{name}/disable",
            handler=disable,
            confirm=True,
            audit="plugin.disable",
            target="plugin:{name}",
        ),
    ]


async def list_plugins(ctx: PluginContext) -> dict[str, Any]:
    return {"items": ctx.plugins.list()}


async def enable(ctx: PluginContext, name: str, operator: str) -> PluginChange:
    return await ctx.plugins.enable(name, operator=operator)


async def disable(ctx: PluginContext, name: str, operator: str) -> PluginChange:
    return await ctx.plugins.disable(name, operator=operator)
