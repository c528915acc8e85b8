"""``kernel/store.py``: the SQLite store (WAL, group commit, savepoints, migrations) and the
runtime lock."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from kernel.store import RuntimeLock, SqliteStore
from sdk import Migration, Unavailable

TABLE = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"


@pytest.fixture(name="db")
def _db(tmp_path: Path) -> Path:
    return tmp_path / "rt" / "aman.db"


@pytest_asyncio.fixture(name="store")
async def _store(db: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore()
    await store.open(db)
    await store.execute(TABLE)
    yield store
    await store.close()


def insert(v: str) -> Callable[[sqlite3.Connection], int]:
    """A write function inserting ``v``; it returns the new row id."""
    return lambda c: c.execute("INSERT INTO t (v) VALUES (?)", (v,)).lastrowid


async def values(store: SqliteStore) -> list[str]:
    return [r["v"] for r in await store.fetchall("SELECT v FROM t ORDER BY id")]


def file_values(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY id")]
    finally:
        conn.close()


class HeldWriter:
    """Keeps the writer thread busy inside one write, so that the writes queued meanwhile are
    committed together in the next batch."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._started = threading.Event()
        self._release = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def _block(self, conn: sqlite3.Connection) -> None:
        self._started.set()
        self._release.wait(10)

    async def __aenter__(self) -> HeldWriter:
        self._task = asyncio.create_task(self._store.write(self._block))
        assert await asyncio.to_thread(self._started.wait, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0)  # let the tasks created inside the block queue their writes
        self._release.set()
        assert self._task is not None
        await self._task


# --- open, write, read -------------------------------------------------------------------------


async def test_open_creates_the_database_in_wal_mode(db: Path) -> None:
    store = SqliteStore()
    assert not store.is_open

    await store.open(db)
    try:
        assert store.is_open
        assert store.path == db
        assert db.is_file()
        assert (await store.fetchall("PRAGMA journal_mode"))[0][0] == "wal"
        tables = await store.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert "schema_migrations" in [r["name"] for r in tables]
    finally:
        await store.close()
    assert not store.is_open


@pytest.mark.parametrize(("synchronous", "level"), [("full", 2), ("normal", 1)])
async def test_open_sets_the_synchronous_level_of_the_writer(
    db: Path, synchronous: str, level: int
) -> None:
    store = SqliteStore()
    await store.open(db, synchronous=synchronous)
    try:
        got = await store.write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
    finally:
        await store.close()

    assert got == level


async def test_write_returns_the_function_result(store: SqliteStore) -> None:
    first = await store.write(insert("a"))
    second = await store.write(insert("b"))

    assert (first, second) == (1, 2)
    assert await values(store) == ["a", "b"]


async def test_execute_returns_the_rowcount(store: SqliteStore) -> None:
    for v in "abc":
        await store.execute("INSERT INTO t (v) VALUES (?)", (v,))

    changed = await store.execute("UPDATE t SET v = v || '!' WHERE v != :keep", {"keep": "b"})

    assert changed == 2
    assert await values(store) == ["a!", "b", "c!"]


async def test_read_and_fetchall_see_committed_writes(store: SqliteStore) -> None:
    await store.execute("INSERT INTO t (v) VALUES ('x')")

    rows = await store.fetchall("SELECT id, v FROM t WHERE v = ?", ("x",))
    count = await store.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])

    assert [(r["id"], r["v"]) for r in rows] == [(1, "x")]
    assert count == 1


async def test_the_read_connection_cannot_write(store: SqliteStore) -> None:
    with pytest.raises(sqlite3.OperationalError):
        await store.read(lambda c: c.execute("INSERT INTO t (v) VALUES ('no')"))

    assert await values(store) == []


# --- group commit and savepoints ---------------------------------------------------------------


async def test_concurrent_writes_share_commits_and_are_durable(
    store: SqliteStore, db: Path
) -> None:
    before = store.commits

    ids = await asyncio.gather(*(store.write(insert(f"v{i}")) for i in range(200)))

    assert sorted(ids) == list(range(1, 201))
    assert 1 <= store.commits - before <= 20
    await store.close()
    reopened = SqliteStore()
    await reopened.open(db)
    try:
        assert await values(reopened) == [f"v{i}" for i in range(200)]
    finally:
        await reopened.close()


async def test_writes_queued_during_a_commit_are_committed_together(store: SqliteStore) -> None:
    async with HeldWriter(store):
        before = store.commits
        pending = asyncio.gather(*(store.write(insert(f"v{i}")) for i in range(50)))

    await pending
    assert store.commits - before == 2  # the held batch, then all 50 at once


async def test_a_failing_write_rolls_back_only_itself(store: SqliteStore) -> None:
    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (v) VALUES ('lost')")
        raise ValueError("boom")

    async with HeldWriter(store):
        before = store.commits
        pending = asyncio.gather(
            store.write(insert("a")),
            store.write(fails),
            store.write(insert("b")),
            return_exceptions=True,
        )

    a, failed, b = await pending
    assert isinstance(a, int) and isinstance(b, int)
    assert isinstance(failed, ValueError) and str(failed) == "boom"
    assert store.commits - before == 2
    assert await values(store) == ["a", "b"]


async def test_a_failing_statement_reaches_its_caller(store: SqliteStore) -> None:
    await store.write(insert("dup"))

    async with HeldWriter(store):
        pending = asyncio.gather(
            store.write(insert("dup")), store.write(insert("ok")), return_exceptions=True
        )

    failed, ok = await pending
    assert isinstance(failed, sqlite3.IntegrityError)
    assert isinstance(ok, int)
    assert await values(store) == ["dup", "ok"]


async def test_a_failed_write_keeps_its_earlier_statements_out(store: SqliteStore) -> None:
    def two_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (v) VALUES ('one')")
        conn.execute("INSERT INTO t (v) VALUES ('two')")
        conn.execute("INSERT INTO nosuch VALUES (1)")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await store.write(two_then_fail)

    assert await values(store) == []
    await store.write(insert("after"))
    assert await values(store) == ["after"]


# --- migrations --------------------------------------------------------------------------------

M1 = Migration(version=1, sql="CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);")
M2 = Migration(
    version=2,
    sql="""
    ALTER TABLE notes ADD COLUMN tag TEXT;
    INSERT INTO notes (body, tag) VALUES ('seed', 'x');
    """,
)
M3 = Migration(version=3, sql="CREATE INDEX notes_tag ON notes (tag);")


async def applied(store: SqliteStore, plugin: str) -> list[int]:
    rows = await store.fetchall(
        "SELECT version FROM schema_migrations WHERE plugin = ? ORDER BY version", (plugin,)
    )
    return [r[0] for r in rows]


async def test_migrations_apply_once_in_version_order(store: SqliteStore) -> None:
    assert await store.migrate("notes", [M2, M1]) == [1, 2]  # 2 needs the table of 1
    assert await store.migrate("notes", [M1, M2]) == []
    assert await store.migrate("notes", [M3, M1, M2]) == [3]

    assert await applied(store, "notes") == [1, 2, 3]
    rows = await store.fetchall("SELECT body, tag FROM notes")
    assert [(r["body"], r["tag"]) for r in rows] == [("seed", "x")]  # the seed ran only once


async def test_migrations_are_recorded_per_plugin(store: SqliteStore) -> None:
    await store.migrate("a", [Migration(version=1, sql="CREATE TABLE a1 (x);")])

    assert await store.migrate("b", [Migration(version=1, sql="CREATE TABLE b1 (x);")]) == [1]
    assert await applied(store, "a") == [1]
    assert await applied(store, "b") == [1]


async def test_a_failing_migration_step_leaves_nothing_half_applied(store: SqliteStore) -> None:
    await store.migrate("notes", [M1])
    broken = Migration(
        version=2,
        sql="""
        CREATE TABLE half (x);
        INSERT INTO notes (body) VALUES ('partial');
        INSERT INTO nosuch VALUES (1);
        """,
    )

    with pytest.raises(sqlite3.OperationalError, match="no such table: nosuch"):
        await store.migrate("notes", [M1, broken])

    assert await applied(store, "notes") == [1]
    assert await store.fetchall("SELECT name FROM sqlite_master WHERE name = 'half'") == []
    assert await store.fetchall("SELECT * FROM notes") == []
    fixed = Migration(version=2, sql="CREATE TABLE half (x);")
    assert await store.migrate("notes", [M1, fixed]) == [2]


async def test_migration_scripts_are_split_into_statements(store: SqliteStore) -> None:
    script = """
    CREATE TABLE log (id INTEGER PRIMARY KEY, msg TEXT); CREATE TABLE n (c INTEGER);
    INSERT INTO n VALUES (0); -- a comment; with a semicolon
    CREATE TRIGGER log_count AFTER INSERT ON log BEGIN
        UPDATE n SET c = c + 1;
    END;
    INSERT INTO log (msg) VALUES ('a;b');
    INSERT INTO log (msg) VALUES ('last')
    """

    assert await store.migrate("p", [Migration(version=1, sql=script)]) == [1]

    rows = await store.fetchall("SELECT msg FROM log ORDER BY id")
    assert [r["msg"] for r in rows] == ["a;b", "last"]
    assert (await store.fetchall("SELECT c FROM n"))[0]["c"] == 2


async def test_duplicate_migration_versions_are_refused(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="duplicate migration versions"):
        await store.migrate("p", [M1, Migration(version=1, sql="SELECT 1;")])

    assert await applied(store, "p") == []


# --- close -------------------------------------------------------------------------------------


async def test_close_checkpoints_the_wal(store: SqliteStore, db: Path) -> None:
    await asyncio.gather(*(store.write(insert(f"v{i}")) for i in range(20)))
    wal = db.with_name(db.name + "-wal")
    assert wal.stat().st_size > 0

    await store.close()

    assert not wal.exists() or wal.stat().st_size == 0
    assert file_values(db) == [f"v{i}" for i in range(20)]


async def test_closed_store_refuses_reads_and_writes(store: SqliteStore) -> None:
    await store.close()
    await store.close()  # a second close is harmless

    with pytest.raises(Unavailable):
        await store.write(insert("late"))
    with pytest.raises(Unavailable):
        await store.execute("INSERT INTO t (v) VALUES ('late')")
    with pytest.raises(Unavailable):
        await store.fetchall("SELECT * FROM t")


async def test_writes_queued_before_close_are_committed(store: SqliteStore, db: Path) -> None:
    writes = asyncio.gather(*(store.write(insert(f"v{i}")) for i in range(30)))
    await asyncio.sleep(0)  # the writes are queued before the close

    await store.close()

    assert len(await writes) == 30
    assert file_values(db) == [f"v{i}" for i in range(30)]


async def test_a_write_during_close_is_refused_not_stuck(store: SqliteStore, db: Path) -> None:
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close() has started and waits for the writer

    with pytest.raises(Unavailable):
        await asyncio.wait_for(store.write(insert("late")), timeout=10)

    await closing
    assert not store.is_open
    assert file_values(db) == []


async def test_store_can_be_reopened(store: SqliteStore, db: Path) -> None:
    await store.write(insert("a"))
    await store.close()

    await store.open(db)

    await store.write(insert("b"))
    assert await values(store) == ["a", "b"]


# --- runtime lock ------------------------------------------------------------------------------

TRY_LOCK = """
import pathlib, sys
from kernel.store import RuntimeLock
print(RuntimeLock(pathlib.Path(sys.argv[1])).acquire())
"""


def other_process_acquires(runtime_dir: Path) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(runtime_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert out in ("True", "False")
    return out == "True"


def test_runtime_lock_refuses_a_second_process(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    lock = RuntimeLock(runtime)

    assert lock.acquire()
    try:
        assert (runtime / "aman.lock").read_text() == f"{os.getpid()}\n"
        assert not other_process_acquires(runtime)
    finally:
        lock.release()

    assert other_process_acquires(runtime)


def test_runtime_lock_refuses_a_second_holder_in_the_same_process(tmp_path: Path) -> None:
    first, second = RuntimeLock(tmp_path), RuntimeLock(tmp_path)
    assert first.acquire()

    assert not second.acquire()

    first.release()
    assert second.acquire()
    second.release()


def test_runtime_lock_is_free_when_nobody_holds_it(tmp_path: Path) -> None:
    assert other_process_acquires(tmp_path)
    assert other_process_acquires(tmp_path)


async def test_a_cursor_never_leaves_the_writer_thread(store):
    """A write function that returns its cursor gets None: the cursor is closed on the writer
    thread (finalized on the event loop, it reset a statement the writer was running)."""
    assert await store.write(lambda c: c.execute("INSERT INTO t (v) VALUES ('x')")) is None
    deferred = store.defer(lambda c: c.executemany("INSERT INTO t (v) VALUES (?)", [("y",), ("z",)]))
    store.release()
    assert await deferred is None
    assert [r["v"] for r in await store.fetchall("SELECT v FROM t ORDER BY v")] == ["x", "y", "z"]


async def test_deferred_writes_ride_in_the_next_writes_transaction(store):
    before = store.commits
    deferred = [store.defer(lambda c, i=i: c.execute("INSERT INTO t (v) VALUES (?)", (f"d{i}",))) for i in range(3)]
    assert store.commits == before  # nothing handed to the writer yet
    await store.write(lambda c: c.execute("INSERT INTO t (v) VALUES ('w')"))
    assert store.commits - before == 1  # the three deferred and the write: one commit
    assert [await d for d in deferred] == [None, None, None]
    assert [r["v"] for r in await store.fetchall("SELECT v FROM t ORDER BY rowid")] == ["d0", "d1", "d2", "w"]


async def test_a_deferred_write_alone_commits_soon_on_its_own(store):
    before = store.commits
    await store.defer(lambda c: c.execute("INSERT INTO t (v) VALUES ('late')"))  # no write follows
    assert store.commits - before == 1
    assert [r["v"] for r in await store.fetchall("SELECT v FROM t")] == ["late"]
