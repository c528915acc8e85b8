"""Soul: the assistant's identity, preferences and boundaries from ``SOUL.md`` (http-api §12;
formats §4).

The global soul lives at ``soul.path`` (default ``<runtime.dir>/SOUL.md``; ``""`` disables souls),
an agent's own soul at ``agents.<id>.soul_path`` (default ``<runtime.dir>/agents/<id>/SOUL.md``
when it exists). They are loaded at start (``souls.py``), watched while ``soul.watch`` is true
(``watch.py``) and offered to other plugins as :data:`sdk.SOULS`. The ``soul_boundary`` input
policy blocks chat texts that violate the boundaries of the agent's soul (http-api §11.4).
Parsing, the soul prompt and the boundary check are ``parse.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import frozen

from sdk import (
    SOULS,
    AuditNote,
    ConfigKey,
    Event,
    EventHandler,
    Forbidden,
    InputPolicy,
    InputVerdict,
    NotFound,
    PluginContext,
    Route,
    StashKey,
    TextInput,
    hookimpl,
)

from .parse import MAX_BYTES, violated
from .souls import Loaded, Owner, Souls, agent_ids, digest, target

__all__ = ["STATE", "Souls"]

STATE = StashKey[Souls]()
#: The body limit of ``/soul/update``: a JSON string may take six bytes per character of content,
#: so a body over the soul limit still reaches the size check and gets its own message (§12).
UPDATE_BODY_MAX = 6 * MAX_BYTES + 4096
NO_SOUL = "no soul configured"
#: Events after which the agents, and so their soul files, may be different.
AGENT_CHANGES = ("config_changed", "agent:reloaded")


# --- hooks ------------------------------------------------------------------------------------


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey]:
    return [
        ConfigKey(
            name="soul.path",
            type=Path,
            default=None,
            doc='Global soul file (relative to the config file); unset: <runtime.dir>/SOUL.md; "" '
            "disables souls.",
        ),
        ConfigKey(name="soul.watch", type=bool, default=True, doc="Reload the soul on edits."),
    ]


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    souls = Souls(ctx)
    await souls.sync(announce=False)
    souls.sync_watcher()
    ctx.stash[STATE] = souls
    ctx.stash[SOULS] = souls


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    souls = ctx.stash.get(STATE)
    with contextlib.suppress(KeyError):
        del ctx.stash[SOULS]
    if souls is not None:
        del ctx.stash[STATE]
        await souls.stop_watcher()


@hookimpl
async def on_config_changed(ctx: PluginContext, changes: Mapping[str, Any]) -> None:
    souls = ctx.stash.get(STATE)
    if souls is None:
        return
    if "soul.path" in changes:
        await souls.sync()
    if "soul.watch" in changes:
        if ctx.settings.get("soul.watch"):
            souls.sync_watcher()
        else:
            await souls.stop_watcher()


@hookimpl
def register_event_handlers(ctx: PluginContext) -> list[EventHandler]:
    """Agents come and go with the configuration and ``/agent/{id}/reload``: follow them."""

    async def follow(_event: Event) -> None:
        await ctx.stash[STATE].sync()

    return [EventHandler(name="agents", handler=follow, event_types=AGENT_CHANGES)]


@hookimpl
def register_policies(ctx: PluginContext) -> list[InputPolicy]:
    def soul_boundary(item: TextInput) -> InputVerdict | None:
        """formats §4.3 against the soul of the text's agent (http-api §11.4 step 2)."""
        souls = ctx.stash.get(SOULS)
        soul = souls.for_agent(item.agent_id) if souls is not None else None
        boundary = violated(item.text, soul.boundaries) if soul is not None else None
        if boundary is None:
            return None
        return InputVerdict(
            outcome="blocked",
            detail=f"boundary:{boundary}",
            error=Forbidden(f"blocked by soul boundary: {boundary}"),
        )

    return [InputPolicy(name="soul_boundary", order=200, check=soul_boundary)]


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(method="GET", path="/soul/info", handler=info, name="soul_info", query=SoulQuery),
        Route(method="GET", path="/soul/raw", handler=raw, name="soul_raw", query=SoulQuery),
        Route(
            method="POST",
            path="/soul/update",
            handler=update,
            name="soul_update",
            body=UpdateIn,
            query=SoulQuery,
            audit="soul.update",
            target="soul",
            max_body_bytes=UPDATE_BODY_MAX,
        ),
    ]


# --- handlers ---------------------------------------------------------------------------------


@frozen
class SoulQuery:
    agent_id: str | None = None


@frozen
class UpdateIn:
    content: str


async def _owner(ctx: PluginContext, query: SoulQuery) -> Owner:
    """The soul a request works on (``?agent_id=``, http-api §12), the souls brought up to date
    with the configuration first."""
    if query.agent_id is not None and query.agent_id not in agent_ids(ctx):
        raise NotFound(f"agent not found: {query.agent_id}")
    await ctx.stash[STATE].sync()
    return query.agent_id


async def _loaded(ctx: PluginContext, query: SoulQuery) -> Loaded:
    loaded = ctx.stash[STATE].get(await _owner(ctx, query))
    if loaded is None:
        raise NotFound(NO_SOUL)
    return loaded


async def info(ctx: PluginContext, query: SoulQuery) -> dict[str, Any]:
    loaded = await _loaded(ctx, query)
    return {
        "name": loaded.soul.name,
        "last_changed_at": loaded.changed_at,
        "path": str(loaded.path),
        "sections": list(loaded.soul.sections),
        "boundaries": list(loaded.soul.boundaries),
    }


async def raw(ctx: PluginContext, query: SoulQuery) -> dict[str, Any]:
    loaded = await _loaded(ctx, query)
    return {"raw": loaded.text, "path": str(loaded.path)}


async def update(
    ctx: PluginContext, query: SoulQuery, body: UpdateIn, audit: AuditNote
) -> dict[str, Any]:
    owner = await _owner(ctx, query)
    audit.target = target(owner)
    loaded = await ctx.stash[STATE].update(owner, body.content)
    audit.detail = digest(body.content)
    return {"ok": True, "name": loaded.soul.name, "last_changed_at": loaded.changed_at}
