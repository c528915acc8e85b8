"""The notifications table and the Notification object of http-api §13."""

from __future__ import annotations

import sqlite3
from typing import Any

from sdk import Invalid, Migration, NotFound, PluginContext, now_ms, uuid7

__all__ = ["CATEGORIES", "MIGRATIONS", "SEVERITIES", "Notifications"]

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
CATEGORIES: tuple[str, ...] = (
    "backpressure",
    "security",
    "workflow",
    "llm",
    "plugin",
    "skill",
    "dlq",
    "gateway",
    "secret",
    "idle",
)
TITLE_MAX = 200
MESSAGE_MAX = 2000

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE notifications (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            severity TEXT NOT NULL,
            category TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            title TEXT NOT NULL,
            message TEXT NOT NULL,
            dismissed INTEGER NOT NULL DEFAULT 0,
            dismissible INTEGER NOT NULL,
            action_label TEXT,
            action_route TEXT,
            event_id TEXT,
            source TEXT
        );
        CREATE INDEX notifications_dismissed ON notifications (dismissed, seq);
        """,
    )
]
_COLUMNS = (
    "id",
    "severity",
    "category",
    "created_at",
    "title",
    "message",
    "dismissed",
    "dismissible",
    "action_label",
    "action_route",
    "event_id",
    "source",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM notifications"


def _object(row: sqlite3.Row) -> dict[str, Any]:
    item = {name: row[name] for name in _COLUMNS}
    item["dismissed"] = bool(item["dismissed"])
    item["dismissible"] = bool(item["dismissible"])
    return item


class Notifications:
    """The stored notifications; also the :class:`sdk.Notifier` other plugins find in the stash."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self.unread = 0

    def _max_items(self) -> int:
        return int(self._ctx.settings.get("notifications.max_items"))

    async def notify(
        self,
        *,
        severity: str,
        category: str,
        title: str,
        body: str = "",
        source: str = "",
        action_label: str | None = None,
        action_route: str | None = None,
    ) -> str:
        """Raise a notification (:class:`sdk.Notifier`); unknown severities or categories are
        refused with :class:`sdk.Invalid`."""
        return await self.create(
            severity=severity,
            category=category,
            title=title,
            message=body,
            source=source or None,
            action_label=action_label,
            action_route=action_route,
        )

    async def create(
        self,
        *,
        severity: str,
        category: str,
        title: str,
        message: str = "",
        source: str | None = None,
        action_label: str | None = None,
        action_route: str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Store a notification, prune the oldest beyond ``max_items``, publish
        ``notification:created``; answer its id."""
        if severity not in SEVERITIES:
            raise Invalid(
                f"invalid value for 'severity': '{severity}'"
                f" (expected one of: {', '.join(SEVERITIES)})"
            )
        if category not in CATEGORIES:
            raise Invalid(
                f"invalid value for 'category': '{category}'"
                f" (expected one of: {', '.join(CATEGORIES)})"
            )
        notification_id = uuid7()
        title, message = title[:TITLE_MAX], message[:MESSAGE_MAX]
        row = (
            notification_id,
            severity,
            category,
            now_ms(),
            title,
            message,
            0,
            0 if severity == "critical" else 1,
            action_label,
            action_route,
            event_id,
            source,
        )
        keep = self._max_items()

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO notifications ({', '.join(_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(_COLUMNS))})",
                row,
            )
            conn.execute(
                "DELETE FROM notifications WHERE seq <="
                " (SELECT seq FROM notifications ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (keep,),
            )

        await self._ctx.store.write(insert)
        await self.recount()
        try:
            await self._ctx.bus.publish(
                "notification:created",
                {"id": notification_id, "severity": severity, "category": category, "title": title},
                source="notifications",
                delivery="at_most_once",
            )
        except Exception:  # stored already; a refused event does not undo it
            self._ctx.log.exception("notification:created for %s not published", notification_id)
        return notification_id

    async def get(self, notification_id: str) -> dict[str, Any] | None:
        rows = await self._ctx.store.fetchall(f"{_SELECT} WHERE id = ?", (notification_id,))
        return _object(rows[0]) if rows else None

    async def list(
        self,
        *,
        active_only: bool = True,
        severity: str | None = None,
        category: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if active_only:
            where.append("dismissed = 0")
        if severity is not None:
            where.append("severity = ?")
            params.append(severity)
        if category is not None:
            where.append("category = ?")
            params.append(category)
        sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        rows = await self._ctx.store.fetchall(sql, (*params, limit, offset))
        return [_object(row) for row in rows]

    async def unread_count(self) -> int:
        rows = await self._ctx.store.fetchall(
            "SELECT COUNT(*) AS n FROM notifications WHERE dismissed = 0"
        )
        return int(rows[0]["n"])

    async def dismiss(self, notification_id: str) -> None:
        item = await self.get(notification_id)
        if item is None:
            raise NotFound(f"notification not found: {notification_id}")
        if not item["dismissible"]:
            raise NotFound(f"notification not found or not dismissible: {notification_id}")
        await self._mark(notification_id)

    async def ack(self, notification_id: str) -> None:
        if await self.get(notification_id) is None:
            raise NotFound(f"notification not found: {notification_id}")
        await self._mark(notification_id)

    async def _mark(self, notification_id: str) -> None:
        await self._ctx.store.execute(
            "UPDATE notifications SET dismissed = 1 WHERE id = ?", (notification_id,)
        )
        await self.recount()

    async def dismiss_all(self) -> int:
        changed = await self._ctx.store.execute(
            "UPDATE notifications SET dismissed = 1 WHERE dismissed = 0 AND dismissible = 1"
        )
        await self.recount()
        return changed

    async def recount(self) -> None:
        """Refresh :attr:`unread` after a change."""
        self.unread = await self.unread_count()
