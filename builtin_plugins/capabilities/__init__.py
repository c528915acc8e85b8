"""Capabilities: what the runtime can do, and which plugins provide it (http-api §17).

Gathered on every request from the running plugins, so a plugin's capabilities appear and
disappear with it: ``chat`` (the runtime itself, ``gateway``), ``llm`` (plugins contributing
LLM provider types), ``skills`` (skill executors), ``sources`` (plugins owning event sources),
``api`` (third-party plugins serving routes under ``/api/v1``), and every name a plugin
declares with ``register_capabilities``.
"""

from __future__ import annotations

from typing import Any

from sdk import PluginContext, PluginInfo, Route, hookimpl

_STATUS = {"healthy": "Healthy", "degraded": "Degraded", "error": "Error"}
_DERIVED = {
    "register_llm_providers": "llm",
    "register_skill_executors": "skills",
    "register_tools": "tools",
}


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [Route(method="GET", path="/capabilities", handler=capabilities)]


def _provided(ctx: PluginContext) -> dict[str, set[str]]:
    """Capability name → names of the running plugins that provide it."""
    provided: dict[str, set[str]] = {}
    for hook, name in _DERIVED.items():
        for c in ctx.plugins.contributions(hook):
            provided.setdefault(name, set()).add(c.plugin)
    for c in ctx.plugins.contributions("register_capabilities"):
        if isinstance(c.item, str) and c.item:
            provided.setdefault(c.item, set()).add(c.plugin)
    for source in ctx.sources.list():
        if source.plugin is not None:
            provided.setdefault("sources", set()).add(source.plugin)
    return provided


async def capabilities(ctx: PluginContext) -> dict[str, list[dict[str, Any]]]:
    plugins: dict[str, PluginInfo] = {p.name: p for p in ctx.plugins.list() if p.state == "running"}
    provided = _provided(ctx)
    for plugin in plugins.values():
        if not plugin.builtin and plugin.routes:
            provided.setdefault("api", set()).add(plugin.name)
    ready = ctx.lifecycle.status == "ready"
    answer: dict[str, list[dict[str, Any]]] = {
        "chat": [
            {
                "capability": "chat",
                "plugin": "gateway",
                "version": ctx.lifecycle.version,
                "status": "Healthy" if ready else "Degraded",
            }
        ]
    }
    for name, owners in provided.items():
        entries = [
            {
                "capability": name,
                "plugin": owner,
                "version": plugins[owner].version,
                "status": _STATUS.get(plugins[owner].health.get("status", ""), "Error"),
            }
            for owner in sorted(owners)
            if owner in plugins
        ]
        if entries:
            answer.setdefault(name, []).extend(entries)
    return dict(sorted(answer.items()))
