"""The dead-letter queue: guaranteed events that could not be delivered (http-api §5.1, §9).

One entry per event, keyed by the event id, in the store. The bus adds entries when a
subscriber's attempts are exhausted; a manual retry redelivers the event to the subscribers that
failed and deletes the entry once they all completed it.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from typing import TYPE_CHECKING, Any

import attrs
from attrs import frozen

from sdk import Conflict, Event, Invalid, Migration, NotFound, Unrecoverable

from .convert import converter
from .ids import now_ms

if TYPE_CHECKING:
    from collections.abc import Callable

    from .store import SqliteStore

__all__ = ["MIGRATIONS", "DeadLetter", "DeadLetters"]

DAY_MS = 86_400_000

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE dead_letters (
            id TEXT PRIMARY KEY, event TEXT NOT NULL, reason TEXT NOT NULL,
            failed_subscribers TEXT NOT NULL, state TEXT NOT NULL, retry_count INTEGER NOT NULL,
            original_retry_count INTEGER NOT NULL, enqueued_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL,
            retry_history TEXT NOT NULL, alerts_sent TEXT NOT NULL DEFAULT '[]',
            source TEXT NOT NULL, event_type TEXT NOT NULL
        );
        CREATE INDEX dead_letters_order ON dead_letters (enqueued_at_ms DESC, id DESC);
        CREATE TABLE dead_letters_archive (
            id TEXT PRIMARY KEY, entry TEXT NOT NULL, archived_at_ms INTEGER NOT NULL
        );
        """,
    )
]

_COLUMNS = (
    "id, event, reason, failed_subscribers, state, retry_count, original_retry_count,"
    " enqueued_at_ms, updated_at_ms, expires_at_ms, retry_history"
)


@frozen(kw_only=True)
class DeadLetter:
    """The DeadLetterEntry object of http-api §9."""

    id: str
    event: Any  # the Event JSON
    reason: str
    failed_subscribers: list[str]
    state: str
    retry_count: int
    original_retry_count: int
    enqueued_at_ms: int
    updated_at_ms: int
    expires_at_ms: int
    retry_history: list[dict[str, Any]]


def _entry(row: sqlite3.Row) -> DeadLetter:
    return DeadLetter(
        id=row["id"],
        event=json.loads(row["event"]),
        reason=row["reason"],
        failed_subscribers=json.loads(row["failed_subscribers"]),
        state=row["state"],
        retry_count=row["retry_count"],
        original_retry_count=row["original_retry_count"],
        enqueued_at_ms=row["enqueued_at_ms"],
        updated_at_ms=row["updated_at_ms"],
        expires_at_ms=row["expires_at_ms"],
        retry_history=json.loads(row["retry_history"]),
    )


def _encode(enqueued: int, entry_id: str) -> str:
    return base64.urlsafe_b64encode(f"d{enqueued}:{entry_id}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, _, entry_id = raw[1:].partition(":")
        if raw[:1] != "d" or not ms.isdigit() or not entry_id:
            raise ValueError(raw)
        return int(ms), entry_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid("invalid cursor") from None


class DeadLetters:
    """The DLQ on the store. ``depth`` (entries in state ``dead``) is kept in memory."""

    def __init__(self, store: SqliteStore, settings: Callable[[str], Any]) -> None:
        self._store = store
        self._get = settings
        self.depth = 0
        # retrying entries: the updated_at_ms to restore and the subscribers the retry is for
        self._retrying: dict[str, tuple[int, frozenset[str]]] = {}

    async def open(self) -> None:
        """Phase 1: entries whose manual retry was cut short by a stop go back to ``dead``."""

        def reset(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE dead_letters SET state = 'dead' WHERE state = 'retrying'")
            return int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])

        self.depth = await self._store.write(reset)

    def add_in(
        self,
        conn: sqlite3.Connection,
        event: Event,
        event_json: str,
        *,
        subscriber: str | None,
        reason: str,
        original_retry_count: int,
        ttl_days: int | None = None,
    ) -> bool:
        """Add ``subscriber`` to the event's entry (creating it) inside a store transaction.
        Returns True when a new entry was created."""
        now = now_ms()
        row = conn.execute(
            "SELECT failed_subscribers, state FROM dead_letters WHERE id = ?", (event.id,)
        ).fetchone()
        if row is None:
            ttl = ttl_days if ttl_days is not None else self._get("dlq.ttl_days")
            conn.execute(
                f"INSERT INTO dead_letters ({_COLUMNS}, source, event_type)"
                " VALUES (?, ?, ?, ?, 'dead', 0, ?, ?, ?, ?, '[]', ?, ?)",
                (
                    event.id,
                    event_json,
                    reason,
                    json.dumps([subscriber] if subscriber else []),
                    original_retry_count,
                    now,
                    now,
                    now + ttl * DAY_MS,
                    event.source,
                    event.event_type,
                ),
            )
            return True
        failed = json.loads(row["failed_subscribers"])
        if subscriber and subscriber not in failed:
            failed.append(subscriber)
        conn.execute(
            "UPDATE dead_letters SET failed_subscribers = ?, reason = ?, updated_at_ms = ? WHERE id = ?",
            (json.dumps(failed), reason, now, event.id),
        )
        return False

    async def enqueue(self, event: Event, *, reason: str, ttl_days: int | None = None) -> bool:
        """Put an event straight into the DLQ (``/debug/dlq/enqueue``); True when new."""
        body = json.dumps(converter.unstructure(event), separators=(",", ":"), ensure_ascii=False)
        created = await self._store.write(
            lambda conn: self.add_in(
                conn,
                event,
                body,
                subscriber=None,
                reason=reason,
                original_retry_count=0,
                ttl_days=ttl_days,
            )
        )
        if created:
            self.depth += 1
        return created

    async def get(self, entry_id: str) -> DeadLetter:
        rows = await self._store.fetchall(
            f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (entry_id,)
        )
        if not rows:
            raise NotFound(f"dlq entry not found: {entry_id}")
        return _entry(rows[0])

    async def page(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        reason: str | None = None,
        source: str | None = None,
        event_type: str | None = None,
    ) -> tuple[list[DeadLetter], str | None]:
        where, params = ["state = 'dead'"], []  # type: tuple[list[str], list[Any]]
        if cursor is not None:
            ms, entry_id = _decode(cursor)
            where.append("(enqueued_at_ms < ? OR (enqueued_at_ms = ? AND id < ?))")
            params += [ms, ms, entry_id]
        if reason is not None:
            where.append("lower(substr(reason, 1, ?)) = lower(?)")
            params += [len(reason), reason]
        if source is not None:
            where.append("source = ? COLLATE NOCASE")
            params.append(source)
        if event_type is not None:
            where.append("event_type = ? COLLATE NOCASE")
            params.append(event_type)
        sql = (
            f"SELECT {_COLUMNS} FROM dead_letters WHERE {' AND '.join(where)}"
            " ORDER BY enqueued_at_ms DESC, id DESC LIMIT ?"
        )
        rows = await self._store.fetchall(sql, [*params, limit + 1])
        items = [_entry(r) for r in rows[:limit]]
        last = items[-1] if len(rows) > limit else None
        return items, _encode(last.enqueued_at_ms, last.id) if last else None

    async def start_retry(self, entry_id: str, *, operator: str, reason: str) -> DeadLetter:
        """Mark the entry ``retrying`` and record the retry; the bus then redelivers it."""

        def begin(conn: sqlite3.Connection) -> tuple[sqlite3.Row, int]:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (entry_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"dlq entry not found: {entry_id}")
            if row["state"] == "retrying":
                raise Conflict(f"dlq entry {entry_id} is being retried")
            limit = self._get("dlq.max_manual_retries")
            if row["retry_count"] >= limit:
                raise Unrecoverable(
                    f"dlq entry {entry_id} reached the manual retry limit ({limit}); discard it instead"
                )
            now = now_ms()
            history = [
                *json.loads(row["retry_history"]),
                {"operator": operator, "at_ms": now, "reason": reason},
            ]
            conn.execute(
                "UPDATE dead_letters SET state = 'retrying', retry_count = retry_count + 1,"
                " updated_at_ms = ?, retry_history = ? WHERE id = ?",
                (now, json.dumps(history), entry_id),
            )
            after = conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (entry_id,)
            ).fetchone()
            return after, row["updated_at_ms"]

        row, updated_before = await self._store.write(begin)
        entry = _entry(row)
        self._retrying[entry_id] = (updated_before, frozenset(entry.failed_subscribers))
        self.depth -= 1
        return entry

    async def finish_retry(self, entry_id: str, failed: list[str], reason: str | None) -> None:
        """After a redelivery: delete the entry, or put it back with what still fails: the
        retry's failures, and the subscribers whose own failures of the event were added to the
        entry while it was being retried (their deliveries of the first publish ran on)."""
        _, retried = self._retrying.pop(entry_id, (0, frozenset()))

        def end(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT failed_subscribers, reason FROM dead_letters WHERE id = ?", (entry_id,)
            ).fetchone()
            if row is None:
                return False
            added = [s for s in json.loads(row["failed_subscribers"]) if s not in retried]
            still = sorted({*failed, *added})
            if not still:
                conn.execute("DELETE FROM dead_letters WHERE id = ?", (entry_id,))
                return False
            conn.execute(
                "UPDATE dead_letters SET state = 'dead', failed_subscribers = ?, reason = ?,"
                " updated_at_ms = ? WHERE id = ?",
                (json.dumps(still), reason if failed else row["reason"], now_ms(), entry_id),
            )
            return True

        if await self._store.write(end):
            self.depth += 1

    async def cancel_retry(self, entry_id: str) -> None:
        """The redelivery was refused (backpressure): undo ``start_retry`` completely."""
        updated = self._retrying.pop(entry_id, (None, frozenset()))[0]

        def undo(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT retry_history FROM dead_letters WHERE id = ?", (entry_id,)
            ).fetchone()
            history = json.loads(row["retry_history"])[:-1]
            conn.execute(
                "UPDATE dead_letters SET state = 'dead', retry_count = retry_count - 1,"
                " retry_history = ?, updated_at_ms = coalesce(?, updated_at_ms) WHERE id = ?",
                (json.dumps(history), updated, entry_id),
            )

        await self._store.write(undo)
        self.depth += 1

    async def discard(self, entry_id: str) -> DeadLetter:
        def remove(conn: sqlite3.Connection) -> Any:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (entry_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"dlq entry not found: {entry_id}")
            if row["state"] == "retrying":
                raise Conflict(f"dlq entry {entry_id} is being retried")
            conn.execute("DELETE FROM dead_letters WHERE id = ?", (entry_id,))
            return row

        entry = _entry(await self._store.write(remove))
        self.depth -= 1
        return entry

    async def due_alerts(self, thresholds: list[int]) -> list[tuple[str, int, str]]:
        """The entries that reached a days-left threshold not alerted yet, as
        ``(id, days, event_type)``, marked as alerted: once per threshold, and one alert when an
        entry crosses several at once (a short TTL)."""
        now = now_ms()

        def pick(conn: sqlite3.Connection) -> list[tuple[str, int, str]]:
            due_now = []
            rows = conn.execute(
                "SELECT id, expires_at_ms, alerts_sent, event_type FROM dead_letters WHERE state = 'dead'"
            ).fetchall()
            for row in rows:
                days_left = (row["expires_at_ms"] - now) / DAY_MS
                sent = set(json.loads(row["alerts_sent"]))
                crossed = [t for t in thresholds if days_left <= t and t not in sent]
                if crossed:
                    conn.execute(
                        "UPDATE dead_letters SET alerts_sent = ? WHERE id = ?",
                        (json.dumps(sorted(sent | set(crossed))), row["id"]),
                    )
                    due_now.append((row["id"], min(crossed), row["event_type"]))
            return due_now

        return await self._store.write(pick)

    async def expire(self) -> list[str]:
        """Move entries whose TTL passed to the archive; returns their ids."""
        now = now_ms()

        def move(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE expires_at_ms <= ? AND state = 'dead'",
                (now,),
            ).fetchall()
            for row in rows:
                entry = _entry(row)
                conn.execute(
                    "INSERT OR REPLACE INTO dead_letters_archive VALUES (?, ?, ?)",
                    (entry.id, json.dumps(attrs.asdict(entry)), now),
                )
                conn.execute("DELETE FROM dead_letters WHERE id = ?", (entry.id,))
            return [r["id"] for r in rows]

        expired = await self._store.write(move)
        self.depth -= len(expired)
        return expired
