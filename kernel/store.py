"""The runtime store: one SQLite database in WAL mode with one writer thread and group commit.

Writers hand a function to the writer thread and await its result. The thread takes every job
waiting, runs each inside its own savepoint of one transaction, commits once, and only then
answers them all: one fsync for many concurrent writers. Reads run on a separate connection in
a reader thread, so they never wait for a commit.

A full disk (or the cap ``storage.max_db_bytes``, applied as ``PRAGMA max_page_count``) makes a
write fail with ``SQLITE_FULL``: the writer gets ``Unavailable("storage is full: ...")`` (503),
nothing of it is kept, and the other writes of its batch are committed all the same. Reads go
on. Writes work again as soon as there is room (the cap raised, data deleted), without a restart.
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


def _is_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL"


def _full(exc: BaseException) -> Unavailable:
    """The 503 of a write refused for want of space."""
    return Unavailable(f"storage is full: {exc}", retry_after=None)


#: How long a deferred write waits for another write to join (see :meth:`SqliteStore.defer`).
DEFER_SEC = 0.05


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


def _room(conn: sqlite3.Connection) -> int:
    """Pages the database can still take: below the cap, or free ones to reuse."""
    pages, cap, free = (
        conn.execute(f"PRAGMA {p}").fetchone()[0]
        for p in ("page_count", "max_page_count", "freelist_count")
    )
    return int(cap - pages + free)


def _settled(result: Any) -> Any:
    """A write function's result as its caller gets it: a cursor (``lambda c: c.execute(...)``)
    is closed here, on the writer thread, and becomes None. Handed to the event loop, it would
    be finalized there one day, resetting a cached statement of the writer's connection while
    the writer may be running it (``InterfaceError: bad parameter or other API misuse``)."""
    if isinstance(result, sqlite3.Cursor):
        result.close()
        return None
    return result


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
        # Each item: jobs that go into one transaction together (a write and the deferred
        # writes handed over with it); None stops the writer.
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._closing = False
        self._deferred: list[_Job] = []  # writes nobody waits for, until the next write
        self._linger: asyncio.TimerHandle | None = None
        self._no_cap = 0  # SQLite's own max_page_count, read at open
        self._refusals = 0  # writes of the current batch refused for want of space
        self._full_room = 0  # the room left when a write was last refused for want of it
        self.commits = 0
        #: True from a write refused for want of space until there is room again.
        self.full = False
        #: Called on the event loop when ``full`` changes, with the new value and the error.
        self.on_full: Callable[[bool, str], None] = lambda full, error: None

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._closing

    async def open(self, path: Path, *, synchronous: str = "full", max_bytes: int = 0) -> None:
        """Open (or create) the database; ``synchronous`` is ``full`` or ``normal``;
        ``max_bytes`` caps the database file (0: no cap), see :meth:`set_max_bytes`."""
        self.path = path
        self._closing = False
        self.full = False
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = _connect(path, synchronous)
        conn.executescript(_KERNEL_SCHEMA)
        self._no_cap = conn.execute("PRAGMA max_page_count").fetchone()[0]
        self._cap(conn, max_bytes)
        self._writer = threading.Thread(target=self._run, args=(conn,), name="aman-store-writer")
        self._writer.daemon = True
        self._writer.start()
        self._read_conn = _connect(path, synchronous, readonly=True)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aman-store-reader")

    async def close(self) -> None:
        if self._writer is None or self._closing:
            return
        self.release()
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
        self._jobs.put([*self._take_deferred(), job])  # the deferred writes first, one commit
        result: T = await job.future
        return result

    def defer(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """A write nobody waits for (a record, a completion): it joins the transaction of the
        next :meth:`write`, or is committed on its own ``DEFER_SEC`` later, so it costs no
        commit of its own while others write. Answer its future (its result or error)."""
        if self._writer is None or self._closing:
            raise Unavailable("storage is not open")
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop)
        self._deferred.append(job)
        if self._linger is None:
            self._linger = loop.call_later(DEFER_SEC, self.release)
        return job.future

    def release(self) -> None:
        """Hand the deferred writes to the writer now (before a read that must see them)."""
        if deferred := self._take_deferred():
            self._jobs.put(deferred)

    def _take_deferred(self) -> list[_Job]:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        deferred, self._deferred = self._deferred, []
        return deferred

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> int:
        return await self.write(lambda c: c.execute(sql, params).rowcount)

    async def set_max_bytes(self, max_bytes: int) -> None:
        """Cap the database at ``max_bytes`` (0: no cap) from the next write on. SQLite never
        sets the cap below the pages the file already has."""
        await self.write(lambda conn: self._cap(conn, max_bytes))

    def _cap(self, conn: sqlite3.Connection, max_bytes: int) -> None:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = max(1, max_bytes // page_size) if max_bytes else self._no_cap
        conn.execute(f"PRAGMA max_page_count = {int(pages)}")

    def _run(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                break
            batch = first
            while len(batch) < _BATCH_MAX:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._jobs.put(None)  # finish this batch, then stop
                    break
                batch += nxt
            self._commit(conn, batch)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("checkpoint at close failed: %s", exc)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        settled: list[tuple[_Job, Any, BaseException | None]] = []
        self._refusals = 0
        while batch:
            batch = self._transaction(conn, batch, settled)
        if self._refusals:
            self._full_room = _room(conn)
        elif self.full and _room(conn) > self._full_room:  # the cap was raised, pages freed
            self._set_full(False, "", settled[0][0].loop)
        for job, result, error in settled:
            job.loop.call_soon_threadsafe(_settle, job, result, error)

    def _transaction(
        self,
        conn: sqlite3.Connection,
        jobs: list[_Job],
        settled: list[tuple[_Job, Any, BaseException | None]],
    ) -> list[_Job]:
        """Run ``jobs`` in one transaction, each in its own savepoint, and commit; append their
        outcomes to ``settled``. When a job fails so badly that SQLite rolled back the whole
        transaction (``SQLITE_FULL``), that job fails and the others are returned, to be run
        again in a new transaction: their work was undone with it."""
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for index, job in enumerate(jobs):
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((job, _settled(job.fn(conn)), None))
                    conn.execute("RELEASE job")
                except Exception as exc:  # noqa: BLE001 - handed to the awaiting writer
                    error = self._refused(exc, job.loop)
                    if not conn.in_transaction:
                        settled.append((job, None, error))
                        return [j for j, _, _ in outcomes] + jobs[index + 1 :]
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, None, error))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:  # the transaction itself failed (disk full, I/O error)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("store commit failed: %s", exc)
            failure = self._refused(exc, jobs[0].loop)
            if not isinstance(failure, Unavailable):
                failure = Unavailable(f"storage write failed: {exc}", retry_after=None)
            settled.extend((job, None, failure) for job in jobs)
            return []
        settled.extend(outcomes)
        return []

    def _refused(self, exc: Exception, loop: asyncio.AbstractEventLoop) -> Exception:
        """``exc`` as the writer sees it: a lack of space becomes a 503 and marks the store
        full; any other error is the writer's own business."""
        if not _is_full(exc):
            return exc
        self._refusals += 1
        if not self.full:
            self._set_full(True, str(exc), loop)
        return _full(exc)

    def _set_full(self, full: bool, error: str, loop: asyncio.AbstractEventLoop) -> None:
        self.full = full
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            loop.call_soon_threadsafe(self.on_full, full, error)

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
        if not steps:
            return []

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
