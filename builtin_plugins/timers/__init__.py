"""Timers: the timer and watch sources of ``[sources.timer.<name>]`` and ``[sources.watch.<name>]``.

Each enabled table is a source (formats §1.4): ``timer:<name>`` ticks every ``interval_ms``,
``watch:<name>`` reports files created, changed and deleted. Source keys are live: after a
``/config/set`` a new table creates its source, a removed (or disabled) one shuts it down and a
changed one is restarted with its new settings. ``PUT /event-source/{id}/config`` writes its
change back to ``aman.toml`` (http-api §6). While this plugin is disabled the sources are shut
down (http-api §7).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from sdk import (
    ConfigKey,
    ConfigRule,
    EventSource,
    NotFound,
    PluginContext,
    SdkError,
    StashKey,
    hookimpl,
    source_id_taken,
    source_ids_free,
)

from .base import ConfiguredSource
from .fields import FIELDS, config_items, settings_of
from .timer import TimerSource
from .watch import WatchSource

__all__ = ["TimerSource", "Timers", "WatchSource"]

KINDS: dict[str, type[ConfiguredSource]] = {"timer": TimerSource, "watch": WatchSource}


class Timers:
    """The plugin's sources, kept in step with the configuration."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self.sources: dict[str, ConfiguredSource] = {}
        self._lock = asyncio.Lock()

    def wanted(self) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """``{id: (kind, name, settings)}`` of every enabled table now in the configuration."""
        found = {}
        for kind in FIELDS:
            for name, table in sorted(self._ctx.settings.table(f"sources.{kind}").items()):
                if isinstance(table, dict) and table.get("enabled", True) is not False:
                    found[f"{kind}:{name}"] = (kind, name, settings_of(kind, table))
        return found

    def create_all(self) -> list[EventSource]:
        """The sources of the configuration, for ``register_sources``; one whose id another
        source has (a cron job's, edited into ``aman.toml`` by hand) is left out and logged."""
        self.sources = {
            source_id: KINDS[kind](self._ctx, name, settings)
            for source_id, (kind, name, settings) in self.wanted().items()
            if not source_id_taken(self._ctx, source_id)
        }
        return list(self.sources.values())

    async def sync(self) -> None:
        """Create, shut down and restart sources to match the configuration now."""
        async with self._lock:
            wanted = self.wanted()
            for source_id in [i for i in self.sources if i not in wanted]:
                del self.sources[source_id]
                with contextlib.suppress(NotFound):
                    await self._ctx.sources.remove(source_id)
            for source_id, (kind, name, settings) in wanted.items():
                source = self.sources.get(source_id)
                if source is None:
                    source = KINDS[kind](self._ctx, name, settings)
                    try:
                        await self._ctx.sources.add(source)
                    except SdkError as exc:  # another plugin's source has that id
                        self._ctx.log.error("cannot add source %s: %s", source_id, exc)
                        continue
                    self.sources[source_id] = source
                elif source.settings() != settings:
                    await source.apply(settings)


TIMERS = StashKey[Timers]()


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey | ConfigRule]:
    return [*config_items(), source_ids_free(ctx.sources, ctx.name, tuple(FIELDS))]


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    ctx.stash[TIMERS] = Timers(ctx)


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    with contextlib.suppress(KeyError):
        del ctx.stash[TIMERS]


@hookimpl
def register_sources(ctx: PluginContext) -> list[EventSource]:
    return ctx.stash[TIMERS].create_all()


@hookimpl
async def on_config_changed(ctx: PluginContext, changes: Mapping[str, Any]) -> None:
    timers = ctx.stash.get(TIMERS)
    if timers is not None:
        await timers.sync()
