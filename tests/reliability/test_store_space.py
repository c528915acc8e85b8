"""The store when space runs out (in-process, ``kernel/store.py``): a write refused with
``SQLITE_FULL`` makes SQLite roll back the whole group transaction, so the store runs the
other writes of the batch again; only the refused one fails, with the 503 of a full store."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from kernel.store import SqliteStore
from sdk import Unavailable

BIG = "x" * 200_000


@pytest_asyncio.fixture(name="store")
async def _store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore()
    await store.open(tmp_path / "aman.db")
    await store.execute("CREATE TABLE t (v TEXT NOT NULL)")
    yield store
    await store.close()


def insert(v: str) -> Callable[[sqlite3.Connection], None]:
    return lambda c: c.execute("INSERT INTO t (v) VALUES (?)", (v,))


async def stored(store: SqliteStore) -> list[str]:
    return [r["v"][:5] for r in await store.fetchall("SELECT v FROM t ORDER BY rowid")]


async def test_a_refused_write_fails_alone_and_its_batch_is_committed(store: SqliteStore) -> None:
    changes: list[tuple[bool, str]] = []
    store.on_full = lambda full, error: changes.append((full, error))
    await store.set_max_bytes(4096)  # no room beyond what the file has
    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:  # keeps the writer busy while the batch queues
        started.set()
        release.wait(10)

    held = asyncio.create_task(store.write(hold))
    assert await asyncio.to_thread(started.wait, 10)
    before = asyncio.create_task(store.write(insert("small-before")))
    big = asyncio.create_task(store.write(insert(BIG)))
    after = asyncio.create_task(store.write(insert("small-after")))
    await asyncio.sleep(0)
    release.set()
    await held
    await asyncio.gather(before, after)
    with pytest.raises(Unavailable) as refused:
        await big
    assert refused.value.message == "storage is full: database or disk is full"
    assert refused.value.retry_after is None
    assert await stored(store) == ["small", "small"]
    assert store.full and changes == [(True, "database or disk is full")]

    await store.set_max_bytes(0)  # room again: the next write works and ends the state
    await store.write(insert(BIG))
    assert await stored(store) == ["small", "small", "xxxxx"]
    assert not store.full and changes[-1] == (False, "")
