"""The runtime store: one SQLite database in WAL mode with one writer thread and group commit.

Writers hand a function to the writer thread and await its result. The thread takes every job
waiting, runs each inside its own savepoint of one transaction, commits once, and only then
answers them all: one fsync for many concurrent writers. Reads run on a separate connection in
a reader thread, so they never wait for a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from sdk import Migration, Unavailable

__all__ = ["RuntimeLock", "SqliteStore"]

T = TypeVar("T")
log = logging.getLogger("aman.store")

_KERNEL_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    plugin TEXT NOT NULL, version INTEGER NOT NULL, applied_at_ms INTEGER NOT NULL,
    PRIMARY KEY (plugin, version)
);
"""
_BATCH_MAX = 512


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], loop: asyncio.AbstractEventLoop):
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()


def _connect(path: Path, synchronous: str, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _settle(job: _Job, result: Any, error: BaseException | None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


class SqliteStore:
    """The :class:`sdk.Store` of the kernel."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._closing = False
        self.commits = 0

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._closing

    async def open(self, path: Path, *, synchronous: str = "full") -> None:
        """Open (or create) the database; ``synchronous`` is ``full`` or ``normal``."""
        self.path = path
        self._closing = False
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = _connect(path, synchronous)
        conn.executescript(_KERNEL_SCHEMA)
        self._writer = threading.Thread(target=self._run, args=(conn,), name="aman-store-writer")
        self._writer.daemon = True
        self._writer.start()
        self._read_conn = _connect(path, synchronous, readonly=True)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aman-store-reader")

    async def close(self) -> None:
        if self._writer is None or self._closing:
            return
        self._closing = True  # from now on writes are refused: none can queue behind the stop
        self._jobs.put(None)
        await asyncio.to_thread(self._writer.join)
        self._writer = None
        assert self._reader is not None and self._read_conn is not None
        self._reader.shutdown(wait=True)
        self._read_conn.close()
        self._reader = self._read_conn = None

    # --- writes ----------------------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None or self._closing:
            raise Unavailable("storage is not open")
        job = _Job(fn, asyncio.get_running_loop())
        self._jobs.put(job)
        result: T = await job.future
        return result

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> int:
        return await self.write(lambda c: c.execute(sql, params).rowcount)

    def _run(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _BATCH_MAX:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._jobs.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            self._commit(conn, batch)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("checkpoint at close failed: %s", exc)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    results.append((job, job.fn(conn), None))
                    conn.execute("RELEASE job")
                except Exception as exc:  # noqa: BLE001 - handed to the awaiting writer
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, None, exc))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:  # the commit itself failed (disk full, I/O error)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("store commit failed: %s", exc)
            failure = Unavailable(f"storage write failed: {exc}", retry_after=None)
            results = [(job, None, failure) for job in batch]
        for job, result, error in results:
            job.loop.call_soon_threadsafe(_settle, job, result, error)

    # --- reads -----------------------------------------------------------------------------

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None or self._read_conn is None:
            raise Unavailable("storage is not open")
        conn = self._read_conn
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)

    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[sqlite3.Row]:
        return await self.read(lambda c: c.execute(sql, params).fetchall())

    # --- migrations ------------------------------------------------------------------------

    async def migrate(self, plugin: str, migrations: Sequence[Migration]) -> list[int]:
        """Apply the plugin's steps not applied yet, in version order, all in one transaction:
        if one fails, none of this call's steps is applied (the earlier ones stay recorded)."""
        steps = sorted(migrations, key=lambda m: m.version)
        versions = [m.version for m in steps]
        if len(set(versions)) != len(versions):
            raise ValueError(f"plugin {plugin}: duplicate migration versions {versions}")

        def apply(conn: sqlite3.Connection) -> list[int]:
            done = {
                r[0]
                for r in conn.execute(
                    "SELECT version FROM schema_migrations WHERE plugin = ?", (plugin,)
                )
            }
            applied = []
            for step in steps:
                if step.version in done:
                    continue
                for statement in _statements(step.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, strftime('%s','now') * 1000)",
                    (plugin, step.version),
                )
                applied.append(step.version)
            return applied

        return await self.write(apply)


def _statements(script: str) -> list[str]:
    """Split a migration script into complete statements (executescript would commit)."""
    out, buf = [], ""
    *pieces, rest = script.split(";")  # a ';' in a string, comment or trigger body is no end
    for piece in pieces:
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    buf += rest
    if buf.strip():
        out.append(buf.strip())
    return out


class RuntimeLock:
    """The single-instance lock ``<runtime.dir>/aman.lock`` (formats §1.6)."""

    def __init__(self, runtime_dir: Path) -> None:
        self.path = runtime_dir / "aman.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(self.path, "a+")  # noqa: SIM115 - held for the life of the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
