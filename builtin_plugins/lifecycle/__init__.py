"""Lifecycle: health, start, shutdown and runtime information (http-api §2, §3; essential)."""

from __future__ import annotations

from typing import Any

from sdk import PluginContext, Route, Unavailable, hookimpl


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    always: dict[str, Any] = {"availability": "always"}
    return [
        Route(method="GET", path="/health/live", handler=live, public=True, **always),
        Route(method="GET", path="/health/ready", handler=ready, public=True, **always),
        Route(method="GET", path="/health", handler=ready, public=True, **always),
        Route(
            method="POST",
            path="/agent/start",
            handler=start,
            audit="agent.start",
            target="agent",
            **always,
        ),
        Route(
            method="POST",
            path="/agent/shutdown",
            handler=shutdown,
            confirm=True,
            audit="agent.shutdown",
            target="agent",
            **always,
        ),
        Route(method="GET", path="/runtime/status", handler=status, **always),
        Route(method="GET", path="/runtime/config", handler=runtime_config, **always),
    ]


async def live(ctx: PluginContext) -> dict[str, Any]:
    if ctx.lifecycle.status == "stopped":
        raise Unavailable("runtime is stopped", retry_after=None, phase=0, status="stopped")
    return {"status": "live", "phase": ctx.lifecycle.phase}


async def ready(ctx: PluginContext) -> dict[str, Any]:
    life = ctx.lifecycle
    if life.status == "ready" and life.phase == 5:
        return {"status": "ready", "phase": 5}
    retry = None if life.status == "stopped" else 1
    raise Unavailable("not ready", retry_after=retry, phase=life.phase, status=life.status)


async def start(ctx: PluginContext) -> dict[str, Any]:
    await ctx.lifecycle.start()
    return {"ok": True, "phase": ctx.lifecycle.phase, "status": ctx.lifecycle.status}


async def shutdown(ctx: PluginContext) -> dict[str, Any]:
    if ctx.lifecycle.status in ("draining", "stopped"):
        return {"ok": True, "status": ctx.lifecycle.status}
    await ctx.lifecycle.shutdown()
    return {"ok": True, "status": ctx.lifecycle.status}


async def status(ctx: PluginContext) -> dict[str, Any]:
    life = ctx.lifecycle
    return {
        "phase": life.phase,
        "ready": life.phase == 5 and life.status == "ready",
        "live": life.status != "stopped",
        "status": life.status,
    }


def _setting(ctx: PluginContext, key: str, default: Any) -> Any:
    """A key of a feature plugin that may not be installed; its documented default otherwise."""
    try:
        return ctx.settings.get(key)
    except KeyError:
        return default


def _path(ctx: PluginContext, key: str, default: str) -> str:
    """``key`` resolved; ``<runtime.dir>/<default>`` when it is not declared or not set."""
    try:
        if ctx.settings.get(key):
            return str(ctx.settings.resolve_path(key))
    except KeyError:
        pass
    return str(ctx.settings.resolve_path("runtime.dir") / default)


async def runtime_config(ctx: PluginContext) -> dict[str, Any]:
    s = ctx.settings
    return {
        "bind_addr": s.get("http.bind"),
        "runtime_dir": str(s.resolve_path("runtime.dir")),
        "skills_dir": _path(ctx, "skills.dir", "skills"),
        "soul_path": _path(ctx, "soul.path", "SOUL.md"),
        "plugins_dir": str(s.resolve_path("plugins.dir")),
        "config_path": str(s.path) if s.path else None,
        "api_token_configured": bool(s.get("http.token")),
        "debug_endpoints_enabled": s.get("debug.force_enable_debug_endpoints"),
        "risky_capabilities_enabled": _setting(ctx, "security.risky_capabilities_enabled", False),
        "drain_timeout_sec": s.get("runtime.drain_timeout_sec"),
        "event_bus_mode": s.get("event_bus.mode"),
        "event_bus_max_queue_size": s.get("event_bus.max_queue_size"),
        "default_agent": _setting(ctx, "chat.default_agent", "aman"),
        "version": ctx.lifecycle.version,
    }
