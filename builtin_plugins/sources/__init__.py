"""Sources: list, pause, resume and reconfigure event sources; reload IM channels (http-api §6).

The registry itself is the kernel's (``ctx.sources``); the sources come from plugins
(``register_sources``, ``ctx.sources.add``), IM platforms from ``register_im_channels``.
"""

from __future__ import annotations

from typing import Any

from sdk import (
    AuditNote,
    Failure,
    ImChannel,
    NotFound,
    PluginContext,
    Route,
    SdkError,
    SourceInfo,
    hookimpl,
)


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    routes = [Route(method="GET", path="/event-sources", handler=list_sources)]
    for prefix in ("/event-source", "/source"):  # the published paths and their aliases
        routes += [
            Route(
                method="POST",
                path=prefix + "/{source_id}/pause",
                handler=pause,
                audit="source.pause",
                target="source:{source_id}",
            ),
            Route(
                method="POST",
                path=prefix + "/{source_id}/resume",
                handler=resume,
                audit="source.resume",
                target="source:{source_id}",
            ),
            Route(
                method="PUT",
                path=prefix + "/{source_id}/config",
                handler=configure,
                body=dict,
                audit="source.config",
                target="source:{source_id}",
            ),
        ]
    routes.append(
        Route(
            method="POST",
            path="/im-channel/{platform}/{instance}/reload",
            handler=reload_im_channel,
            audit="im_channel.reload",
            target="{platform}/{instance}",
        )
    )
    return routes


async def list_sources(ctx: PluginContext) -> dict[str, list[SourceInfo]]:
    return {"items": ctx.sources.list()}


async def pause(ctx: PluginContext, source_id: str) -> dict[str, Any]:
    return {"ok": True, "source": await ctx.sources.pause(source_id)}


async def resume(ctx: PluginContext, source_id: str) -> dict[str, Any]:
    return {"ok": True, "source": await ctx.sources.resume(source_id)}


async def configure(
    ctx: PluginContext, source_id: str, body: dict[str, Any], audit: AuditNote
) -> dict[str, Any]:
    source = await ctx.sources.configure(source_id, body)
    audit.detail = ",".join(sorted(body))
    return {"ok": True, "source": source}


async def reload_im_channel(ctx: PluginContext, platform: str, instance: str) -> dict[str, Any]:
    """Shut the channel's source down and start a fresh one with re-read credentials."""
    channel = next(
        (
            (c.plugin, c.item)
            for c in ctx.plugins.contributions("register_im_channels")
            if isinstance(c.item, ImChannel) and c.item.platform == platform
        ),
        None,
    )
    if channel is None:
        raise NotFound(f"unsupported platform for hot-reload: {platform}")
    owner, im = channel
    try:
        source = im.factory(instance)
        info = await ctx.sources.replace(source, owner=owner)
    except SdkError:
        raise
    except Exception as exc:  # the plugin failed to start the source
        raise Failure(str(exc) or type(exc).__name__) from exc
    return {"ok": True, "source_id": info.id}
