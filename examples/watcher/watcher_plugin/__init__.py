"""watcher: an example plugin with a bus subscription and an event source.

- ``register_sources`` adds the pull source ``watcher:ticker``: it publishes ``watcher:tick``
  every ``[plugin.watcher] interval_sec`` seconds (default 1) and can be paused, resumed and
  reconfigured through ``/event-source/watcher:ticker/...``.
- ``register_event_handlers`` subscribes to every event and counts them by type.
- ``GET /api/v1/watcher/stats`` (public, as the manifest's ``public_routes`` says) shows the
  counts.

(The issue asks for a tool; tools arrive with issue 6, so this example shows an event source.)
"""

from __future__ import annotations

from collections import Counter

from sdk import EventHandler, Route, StashKey, hookimpl

from .ticker import Ticker

COUNTS = StashKey[Counter]()  # the counts, per kernel


@hookimpl
def on_startup(ctx):
    ctx.stash[COUNTS] = Counter()


@hookimpl
def register_sources(ctx):
    return [Ticker(interval_sec=float(ctx.config.get("interval_sec", 1.0)))]


@hookimpl
def register_event_handlers(ctx):
    async def count(event):
        ctx.stash[COUNTS][event.event_type] += 1

    return [EventHandler(name="count", handler=count)]


@hookimpl
def register_routes(ctx):
    return [Route(method="GET", path="/stats", handler=stats)]


async def stats(ctx):
    counts = ctx.stash[COUNTS]
    return {"total": sum(counts.values()), "by_type": dict(sorted(counts.items()))}
