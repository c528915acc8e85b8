"""DLQ: list, retry and discard dead-lettered events, and archive expired ones (http-api §9).

The queue itself is the kernel's (``ctx.bus.dead_letters``): the bus fills it when a guaranteed
delivery exhausts its retries and redelivers an entry on a manual retry. This plugin serves it
over HTTP and moves entries whose TTL passed to the archive, once a minute.
"""

from __future__ import annotations

import asyncio
from typing import Any

from attrs import field, frozen

from sdk import (
    NOTIFIER,
    AuditNote,
    Invalid,
    PluginContext,
    Route,
    StashKey,
    cancel,
    hookimpl,
    in_range,
)

__all__ = ["EXPIRE_EVERY_SEC", "expire_entries"]

#: How often expired entries are archived (http-api §9: "every minute").
EXPIRE_EVERY_SEC = 60.0
REASON_MAX = 1000
_SWEEPER = StashKey[asyncio.Task[None]]()


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(method="GET", path="/dlq", handler=list_entries, query=DlqQuery),
        Route(method="GET", path="/dlq/depth", handler=depth),
        Route(
            method="POST",
            path="/debug/dlq/enqueue",
            handler=enqueue,
            body=EnqueueIn,
            debug_gate=True,
            audit="dlq.enqueue",
            target="dlq",
        ),
        Route(
            method="POST",
            path="/dlq/{id}/retry",
            handler=retry,
            body=RetryIn,
            confirm=True,
            audit="dlq.retry",
            target="dlq:{id}",
        ),
        Route(
            method="POST",
            path="/dlq/{id}/discard",
            handler=discard,
            audit="dlq.discard",
            target="dlq:{id}",
        ),
    ]


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    loop = asyncio.get_running_loop()
    ctx.stash[_SWEEPER] = loop.create_task(_sweep(ctx), name="aman-dlq-expiry")


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    task = ctx.stash.get(_SWEEPER)
    if task is not None:
        del ctx.stash[_SWEEPER]
        await cancel(task)


@frozen
class DlqQuery:
    limit: int = field(default=50, metadata={"clamp": (1, 1000)})
    cursor: str | None = None
    reason: str | None = None
    source: str | None = None
    event_type: str | None = None


@frozen
class EnqueueIn:
    source: str
    event_type: str
    payload: Any
    reason: str = "DebugEnqueued"
    ttl_days: int | None = field(default=None, validator=in_range(1, 3650))


@frozen
class RetryIn:
    reason: str = "manual retry"


async def list_entries(ctx: PluginContext, query: DlqQuery) -> dict[str, Any]:
    items, next_cursor = await ctx.bus.dead_letters.page(
        limit=query.limit,
        cursor=query.cursor,
        reason=query.reason,
        source=query.source,
        event_type=query.event_type,
    )
    return {"items": items, "next_cursor": next_cursor}


async def depth(ctx: PluginContext) -> dict[str, int]:
    return {"depth": ctx.bus.dead_letters.depth}


async def enqueue(ctx: PluginContext, body: EnqueueIn, audit: AuditNote) -> dict[str, str]:
    """Put a new event straight into the DLQ, unpublished, so DLQ handling can be exercised."""
    if not 1 <= len(body.reason) <= REASON_MAX:
        raise Invalid(f"field 'reason' must be between 1 and {REASON_MAX} characters")
    event = ctx.bus.build(
        body.event_type,
        body.payload,
        source=body.source,
        priority="normal",
        delivery="at_least_once",
        trust_level="trusted",
    )
    await ctx.bus.dead_letters.enqueue(event, reason=body.reason, ttl_days=body.ttl_days)
    audit.target, audit.detail = f"dlq:{event.id}", body.reason
    await ctx.bus.publish(
        "dlq:enqueued",
        {"id": event.id, "event_type": event.event_type, "reason": body.reason},
        source="dlq",
    )
    return {"id": event.id}


async def retry(
    ctx: PluginContext, id: str, body: RetryIn, operator: str, audit: AuditNote
) -> dict[str, Any]:
    """Redeliver the entry's event to the subscribers that failed it. The answer comes once the
    redelivery is scheduled; the bus deletes the entry when they all complete it, or puts it
    back to ``dead`` with what still fails."""
    dead_letters = ctx.bus.dead_letters
    entry = await dead_letters.start_retry(id, operator=operator, reason=body.reason)
    try:
        subscribers = await ctx.bus.redeliver(entry)
    except Exception:  # refused under backpressure: nothing changed
        await dead_letters.cancel_retry(id)
        raise
    audit.detail = body.reason
    return {
        "ok": True,
        "id": entry.id,
        "event_id": entry.event["id"],
        "retry_count": entry.retry_count,
        "subscribers": subscribers,
    }


async def discard(ctx: PluginContext, id: str) -> Any:
    """Delete the entry; its event is never delivered to the subscribers that failed it."""
    return await ctx.bus.dead_letters.discard(id)


async def expire_entries(ctx: PluginContext) -> list[str]:
    """Archive the entries whose TTL passed, with one system audit record each."""
    expired = await ctx.bus.dead_letters.expire()
    for entry_id in expired:
        await ctx.audit.record(
            operator="system", action="dlq.expire", target=f"dlq:{entry_id}", outcome="ok"
        )
    await _warn_of_expiry(ctx)
    return expired


async def _warn_of_expiry(ctx: PluginContext) -> None:
    """A warning notification when an entry has ``dlq.expiry_alert_days`` (7, 3, 1) days left,
    once per threshold (http-api §9), while the notifications plugin runs."""
    notifier = ctx.stash.get(NOTIFIER)
    if notifier is None:
        return
    for entry_id, days, event_type in await ctx.bus.dead_letters.due_alerts(
        ctx.settings.get("dlq.expiry_alert_days")
    ):
        await notifier.notify(
            severity="warning",
            category="dlq",
            title=f"DLQ entry {entry_id} ({event_type}) expires in {days} day(s)",
            body="Retry it (POST /dlq/{id}/retry) or discard it before it is archived.",
            source="dlq",
        )


async def _sweep(ctx: PluginContext) -> None:
    while True:
        try:
            await expire_entries(ctx)
        except Exception:  # the next round tries again
            ctx.log.exception("archiving expired DLQ entries failed")
        await asyncio.sleep(EXPIRE_EVERY_SEC)
