"""Notifications: short messages for a human operator (http-api §13).

Notifications are kept in the plugin's table of the runtime store, at most
``notifications.max_items`` (the oldest are removed). The ``notifications`` subscriber turns the
events of §13's table into notifications; every new one publishes ``notification:created``.
Other plugins raise notifications through the :data:`sdk.NOTIFIER` service in the stash, without
importing this plugin. The endpoints write no audit records (§1.8).
"""

from __future__ import annotations

import asyncio
from typing import Any

from attrs import field, frozen

from sdk import (
    INT_MAX,
    NOTIFIER,
    ConfigKey,
    EventHandler,
    Forbidden,
    Invalid,
    Migration,
    PluginContext,
    Route,
    StashKey,
    cancel,
    hookimpl,
)

from .store import CATEGORIES, MIGRATIONS, SEVERITIES, Notifications
from .subscriber import EVENT_TYPES, Subscriber

__all__ = ["NOTIFICATIONS", "Notifications"]

NOTIFICATIONS = StashKey[Notifications]()
_SUBSCRIBER = StashKey[Subscriber]()
_WATCHER = StashKey["asyncio.Task[None]"]()
TITLE_MAX = 200
MESSAGE_MAX = 2000


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey]:
    return [
        ConfigKey(
            name="notifications.max_items",
            type=int,
            default=500,
            minimum=1,
            maximum=100_000,
            doc="Notifications kept.",
        )
    ]


@hookimpl
def register_migrations(ctx: PluginContext) -> list[Migration]:
    return MIGRATIONS


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    notifications = Notifications(ctx)
    await notifications.recount()
    ctx.stash[NOTIFICATIONS] = notifications
    ctx.stash[NOTIFIER] = notifications
    subscriber = Subscriber(notifications, ctx)
    ctx.stash[_SUBSCRIBER] = subscriber
    loop = asyncio.get_running_loop()
    ctx.stash[_WATCHER] = loop.create_task(subscriber.watch(), name="aman-notifications-watch")


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    task = ctx.stash.get(_WATCHER)
    if task is not None:
        del ctx.stash[_WATCHER]
        await cancel(task)
    for key in (NOTIFIER, NOTIFICATIONS, _SUBSCRIBER):
        if key in ctx.stash:
            del ctx.stash[key]


@hookimpl
def register_event_handlers(ctx: PluginContext) -> list[EventHandler]:
    subscriber = ctx.stash[_SUBSCRIBER]
    return [EventHandler(name="notifications", handler=subscriber.handle, event_types=EVENT_TYPES)]


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="GET",
            path="/notifications",
            handler=list_notifications,
            name="list_notifications",
            query=ListQuery,
        ),
        Route(
            method="GET",
            path="/notifications/unread-count",
            handler=unread_count,
            name="unread_count",
        ),
        Route(
            method="POST",
            path="/notifications/dismiss-all",
            handler=dismiss_all,
            name="dismiss_all",
        ),
        Route(method="POST", path="/notifications/test", handler=test, name="test", body=TestIn),
        Route(method="POST", path="/notifications/send", handler=send, name="send", body=SendIn),
        Route(method="POST", path="/notifications/{id}/dismiss", handler=dismiss, name="dismiss"),
        Route(method="POST", path="/notifications/{id}/ack", handler=ack, name="ack"),
    ]


@frozen
class ListQuery:
    active_only: bool = True
    severity: str | None = None
    category: str | None = None
    limit: int = field(default=50, metadata={"clamp": (1, 500)})
    offset: int = field(default=0, metadata={"clamp": (0, INT_MAX)})


@frozen
class TestIn:
    severity: str = "warning"
    title: str = "Test notification"
    message: str = "This is a test notification."
    action_label: str | None = None
    action_route: str | None = None


@frozen
class SendIn:
    message: str
    title: str | None = None
    severity: str = "info"
    category: str = "plugin"
    action_label: str | None = None
    action_route: str | None = None


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise Invalid(
            f"invalid value for '{name}': '{value}' (expected one of: {', '.join(choices)})"
        )


def _length(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise Invalid(f"field '{name}' must be at most {limit} characters")


def _action(label: str | None, route: str | None) -> tuple[str | None, str | None]:
    return (label, route) if label is not None and route is not None else (None, None)


async def list_notifications(ctx: PluginContext, query: ListQuery) -> list[dict[str, Any]]:
    if query.severity is not None:
        _choice("severity", query.severity, SEVERITIES)
    if query.category is not None:
        _choice("category", query.category, CATEGORIES)
    return await ctx.stash[NOTIFICATIONS].list(
        active_only=query.active_only,
        severity=query.severity,
        category=query.category,
        limit=query.limit,
        offset=query.offset,
    )


async def unread_count(ctx: PluginContext) -> dict[str, int]:
    return {"count": await ctx.stash[NOTIFICATIONS].unread_count()}


async def dismiss(ctx: PluginContext, id: str) -> dict[str, bool]:
    await ctx.stash[NOTIFICATIONS].dismiss(id)
    return {"ok": True}


async def ack(ctx: PluginContext, id: str) -> dict[str, bool]:
    await ctx.stash[NOTIFICATIONS].ack(id)
    return {"ok": True}


async def dismiss_all(ctx: PluginContext) -> dict[str, Any]:
    return {"ok": True, "dismissed": await ctx.stash[NOTIFICATIONS].dismiss_all()}


async def test(ctx: PluginContext, body: TestIn) -> dict[str, Any]:
    if ctx.settings.get("http.token"):
        raise Forbidden("test notifications are disabled when an API token is configured")
    _choice("severity", body.severity, SEVERITIES)
    _length("title", body.title, TITLE_MAX)
    _length("message", body.message, MESSAGE_MAX)
    label, route = _action(body.action_label, body.action_route)
    notification_id = await ctx.stash[NOTIFICATIONS].create(
        severity=body.severity,
        category="gateway",
        title=body.title,
        message=body.message,
        source="api",
        action_label=label,
        action_route=route,
    )
    return {"ok": True, "id": notification_id}


async def send(ctx: PluginContext, body: SendIn, operator: str) -> dict[str, Any]:
    _length("message", body.message, MESSAGE_MAX)
    if body.title is not None:
        _length("title", body.title, TITLE_MAX)
    _choice("severity", body.severity, SEVERITIES)
    _choice("category", body.category, CATEGORIES)
    label, route = _action(body.action_label, body.action_route)
    notification_id = await ctx.stash[NOTIFICATIONS].create(
        severity=body.severity,
        category=body.category,
        title=body.title if body.title is not None else body.message[:50],
        message=body.message,
        source=f"api:{operator}",
        action_label=label,
        action_route=route,
    )
    return {"ok": True, "id": notification_id}
