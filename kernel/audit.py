"""The append-only audit log (http-api §1.8, §20), kept in the store.

Records made before the store opens (phase < 1) wait in memory and are written when it opens.
The newest ``audit.max_records`` are kept. Pages are ordered by insertion (newest first) and a
cursor marks a position, so new records never shift later pages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdk import AuditPage, AuditRecord, Invalid, Migration

from .ids import now_ms, uuid7
from .store import SqliteStore

__all__ = ["MIGRATIONS", "SqliteAudit"]

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE, timestamp_ms INTEGER NOT NULL, operator TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL
        );
        CREATE INDEX audit_ts ON audit (timestamp_ms);
        CREATE INDEX audit_action ON audit (action);
        """,
    )
]
_PRUNE_EVERY = 128
_Row = tuple[str, int, str, str, str, str, str]


def _encode(seq: int) -> str:
    return base64.urlsafe_b64encode(f"a{seq}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw[:1] != "a" or not raw[1:].isdigit():
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid("invalid cursor") from None


class SqliteAudit:
    """The :class:`sdk.AuditLog` of the kernel."""

    def __init__(self, store: SqliteStore, max_records: Callable[[], int]) -> None:
        self._store = store
        self._max_records = max_records
        self._pending: list[_Row] = []

    async def record(
        self, *, operator: str, action: str, target: str, outcome: str, detail: str = ""
    ) -> None:
        ts = now_ms()
        # target and detail are bounded: a path parameter can be as long as a URL
        row: _Row = (f"{ts}-{uuid7()}", ts, operator, action, target[:1000], outcome, detail[:1000])
        if self._store.is_open:
            await self._store.write(lambda c: self._insert(c, [row]))
        elif self._store.path is not None:  # closed by a shutdown: the last records still count
            await asyncio.to_thread(self._insert_direct, self._store.path, row)
        else:
            self._pending.append(row)

    def _insert_direct(self, path: Path, row: _Row) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                self._insert(conn, [row])
        finally:
            conn.close()

    @property
    def pending(self) -> int:
        """Records held in memory because the store has not been opened yet."""
        return len(self._pending)

    async def flush(self) -> None:
        """Write the records held in memory while the store was closed."""
        rows, self._pending = self._pending, []
        if rows:
            await self._store.write(lambda c: self._insert(c, rows))

    async def _fetch(self, sql: str, params: list[Any]) -> list[sqlite3.Row]:
        """Read through the store; while it is closed (before start, after a failed start or a
        shutdown), straight from the file, so the log stays readable in every phase."""
        if self._store.is_open:
            return await self._store.fetchall(sql, params)
        path = self._store.path
        if path is None:
            return []

        def read() -> list[sqlite3.Row]:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    def _insert(self, conn: sqlite3.Connection, rows: list[_Row]) -> None:
        cur = conn.executemany(
            "INSERT INTO audit (id, timestamp_ms, operator, action, target, outcome, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        if cur.rowcount and last % _PRUNE_EVERY < len(rows):
            conn.execute("DELETE FROM audit WHERE seq <= ?", (last - self._max_records(),))

    async def query(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        operator: str | None = None,
        action: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> AuditPage:
        where, params = [], []  # type: tuple[list[str], list[Any]]
        if cursor is not None:
            where.append("seq < ?")
            params.append(_decode(cursor))
        if operator is not None:
            where.append("operator = ? COLLATE NOCASE")
            params.append(operator)
        if action is not None:
            if action.endswith("*"):
                where.append("substr(action, 1, ?) = ?")
                params += [len(action) - 1, action[:-1]]
            else:
                where.append("action = ?")
                params.append(action)
        for column, value in (("target", target), ("outcome", outcome)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since_ms is not None:
            where.append("timestamp_ms >= ?")
            params.append(since_ms)
        if until_ms is not None:
            where.append("timestamp_ms <= ?")
            params.append(until_ms)
        sql = "SELECT seq, id, timestamp_ms, operator, action, target, outcome, detail FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit + 1)
        rows = await self._fetch(sql, params)
        fields = [k for k in rows[0].keys() if k != "seq"] if rows else []  # noqa: SIM118 - a Row
        items = [AuditRecord(**{k: r[k] for k in fields}) for r in rows[:limit]]
        more = len(rows) > limit
        return AuditPage(items=items, next_cursor=_encode(rows[limit - 1]["seq"]) if more else None)
