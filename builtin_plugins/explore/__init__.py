"""Explore: the info-hub exploration pipeline of an agent (http-api §15, formats §1.2).

``POST /explore/start`` checks the agent, the configured data sources (``info_hub.sources``) and
the four ``info_*`` tools an info-hub plugin provides (none is built in), picks a source at
random, opens a ``persistent`` chat session for the agent and runs the pipeline of
``pipeline.py`` in the background, at most one per agent. Running explorations are cancelled when
the plugin stops.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from attrs import frozen

from sdk import (
    CHAT,
    TOOLS,
    AuditNote,
    ConfigKey,
    Conflict,
    Invalid,
    PluginContext,
    Route,
    StashKey,
    Unrecoverable,
    cancel,
    hookimpl,
)

from .pipeline import NEEDED_TOOLS, Exploration, explore

__all__ = ["EXPLORATIONS", "RNG", "Explorations"]

#: The random source of the data-source choice; tests seed it (``RNG.seed(1)``).
RNG = random.Random()


class Explorations:
    """The running explorations, one task per agent."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self._lock = asyncio.Lock()
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self, agent_id: str, source: str, *, operator: str) -> Exploration:
        """Open the session and start the pipeline, unless one runs for the agent (409)."""
        async with self._lock:  # the check and the registration are one step
            if agent_id in self.tasks:
                raise Conflict(f"an exploration is already running for agent {agent_id}")
            session_id = await self._ctx.stash[CHAT].open_session(
                agent_id=agent_id, operator=operator
            )
            run = Exploration(
                agent_id=agent_id,
                session_id=session_id,
                source=source,
                lang=self._ctx.settings.get("info_hub.summary_lang"),
            )
            self.tasks[agent_id] = asyncio.get_running_loop().create_task(
                self._run(run), name=f"explore:{agent_id}"
            )
            return run

    async def _run(self, run: Exploration) -> None:
        try:
            with self._ctx.stash[CHAT].activity(run.agent_id, "explore", run.session_id):
                await explore(self._ctx, run)
        except Exception:  # logged (BLE001 allows it): the session went away, chat stopped
            self._ctx.log.exception("exploration of agent %s ended", run.agent_id)
        finally:
            del self.tasks[run.agent_id]

    async def stop(self) -> None:
        await cancel(*self.tasks.values())


EXPLORATIONS = StashKey[Explorations]()


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey]:
    return [
        ConfigKey(
            name="info_hub.sources",
            type=list[str],
            default=[],
            doc="Data sources for /explore/start.",
        ),
        ConfigKey(
            name="info_hub.summary_lang",
            type=str,
            default="en",
            doc="Language passed to info_summarize_articles.",
        ),
    ]


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    ctx.stash[EXPLORATIONS] = Explorations(ctx)


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    explorations = ctx.stash.get(EXPLORATIONS)
    if explorations is not None:
        del ctx.stash[EXPLORATIONS]
        await explorations.stop()


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="POST",
            path="/explore/start",
            handler=start,
            name="start_exploration",
            body=StartIn,
            audit="explore.start",
            target="agent",  # replaced by agent:<id> once the body is read
        )
    ]


@frozen
class StartIn:
    agent_key: str | None = None


async def start(
    ctx: PluginContext, body: StartIn, operator: str, audit: AuditNote
) -> dict[str, Any]:
    """The checks of §15 in their order, then the pipeline in the background."""
    agent_id = body.agent_key or ctx.settings.get("chat.default_agent")
    audit.target = f"agent:{agent_id}"
    ctx.stash[CHAT].usable(agent_id)
    sources = ctx.settings.get("info_hub.sources")
    if not sources:
        raise Invalid("no info-hub data sources configured")
    toolbox = ctx.stash.get(TOOLS)
    missing = [n for n in NEEDED_TOOLS if toolbox is None or toolbox.get(n) is None]
    if missing:
        raise Unrecoverable(
            f"explore needs the info-hub tools (missing: {', '.join(missing)}); "
            "install an info-hub plugin"
        )
    run = await ctx.stash[EXPLORATIONS].start(agent_id, RNG.choice(sources), operator=operator)
    audit.detail = f"session={run.session_id} source={run.source}"
    return {"session_id": run.session_id, "source": run.source}
