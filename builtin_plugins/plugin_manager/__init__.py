"""Plugin manager: list, enable, disable, install and uninstall plugins at run time (http-api
§7; essential)."""

from __future__ import annotations

from typing import Any

from attrs import frozen

from sdk import (
    AuditNote,
    PluginChange,
    PluginContext,
    PluginInstalled,
    PluginUninstalled,
    Request,
    Route,
    hookimpl,
)

from .upload import read_upload


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
        Route(
            method="POST",
            path="/plugin/install",
            handler=install,
            audit="plugin.install",
            target="plugin",
            max_body_bytes=lambda: int(ctx.settings.get("plugins.max_archive_bytes")),
        ),
        Route(
            method="POST",
            path="/plugin/{name}/uninstall",
            handler=uninstall,
            query=UninstallQuery,
            audit="plugin.uninstall",
            target="plugin:{name}",
        ),
    ]


async def list_plugins(ctx: PluginContext) -> dict[str, Any]:
    return {"items": ctx.plugins.list()}


async def enable(ctx: PluginContext, name: str, operator: str) -> PluginChange:
    return await ctx.plugins.enable(name, operator=operator)


async def disable(ctx: PluginContext, name: str, operator: str) -> PluginChange:
    return await ctx.plugins.disable(name, operator=operator)


async def install(
    ctx: PluginContext, request: Request, operator: str, audit: AuditNote
) -> PluginInstalled:
    archive, sha256 = read_upload(
        request.headers.get("content-type", ""), request.body, request.query.get("sha256")
    )
    return await ctx.plugins.install(archive, sha256=sha256, operator=operator, audit=audit)


@frozen
class UninstallQuery:
    purge: bool = False


async def uninstall(
    ctx: PluginContext, name: str, query: UninstallQuery, operator: str, audit: AuditNote
) -> PluginUninstalled:
    result = await ctx.plugins.uninstall(name, purge=query.purge, operator=operator)
    audit.detail = result.version
    return result
