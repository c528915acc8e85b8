"""``kernel/audit.py``: the audit log in the store (http-api §1.8, §1.11, §20)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kernel.audit import MIGRATIONS, SqliteAudit
from kernel.ids import now_ms
from kernel.store import SqliteStore
from sdk import AuditPage, AuditRecord, Invalid

ID = re.compile(r"^(\d+)-[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(name="db")
def _db(tmp_path: Path) -> Path:
    return tmp_path / "aman.db"


@pytest.fixture(name="limit")
def _limit() -> list[int]:
    """``audit.max_records`` as the test wants it: ``limit[0] = 10``."""
    return [100_000]


@pytest_asyncio.fixture(name="store")
async def _store(db: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore()
    await store.open(db)
    await store.migrate("kernel.audit", MIGRATIONS)
    yield store
    await store.close()


@pytest.fixture(name="audit")
def _audit(store: SqliteStore, limit: list[int]) -> SqliteAudit:
    return SqliteAudit(store, lambda: limit[0])


async def add(audit: SqliteAudit, n: int, *, action: str = "test.action", start: int = 0) -> None:
    """Record ``n`` records one after the other, with details ``start`` … ``start + n - 1``."""
    for i in range(start, start + n):
        await audit.record(operator="op", action=action, target="t", outcome="ok", detail=str(i))


async def details(audit: SqliteAudit, **filters: object) -> list[str]:
    page = await audit.query(limit=1000, **filters)  # type: ignore[arg-type]
    return [r.detail for r in page.items]


async def test_a_record_has_the_documented_shape(audit: SqliteAudit) -> None:
    before = now_ms()
    await audit.record(
        operator="alice", action="dlq.retry", target="dlq:x", outcome="ok", detail="because"
    )
    after = now_ms()

    page = await audit.query()

    assert page.next_cursor is None
    [rec] = page.items
    assert isinstance(rec, AuditRecord)
    match = ID.match(rec.id)
    assert match is not None and int(match.group(1)) == rec.timestamp_ms
    assert before <= rec.timestamp_ms <= after
    assert (rec.operator, rec.action, rec.target, rec.outcome, rec.detail) == (
        "alice",
        "dlq.retry",
        "dlq:x",
        "ok",
        "because",
    )


async def test_records_are_read_newest_first(audit: SqliteAudit) -> None:
    await add(audit, 5)

    assert await details(audit) == ["4", "3", "2", "1", "0"]


async def test_empty_log(audit: SqliteAudit) -> None:
    assert await audit.query() == AuditPage(items=[], next_cursor=None)


async def test_detail_is_cut_to_1000_characters(audit: SqliteAudit) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(1500))

    await audit.record(operator="op", action="a", target="t", outcome="ok", detail=text)

    assert await details(audit) == [text[:1000]]


async def test_target_is_cut_to_1000_characters(audit: SqliteAudit) -> None:
    await audit.record(operator="op", action="a", target="webhook:" + "w" * 5000, outcome="ok")

    [record] = (await audit.query(limit=1)).items
    assert record.target == ("webhook:" + "w" * 5000)[:1000]


# --- pagination --------------------------------------------------------------------------------


async def test_cursor_pages_are_stable_while_records_are_added(audit: SqliteAudit) -> None:
    await add(audit, 120)
    expected = [str(i) for i in range(119, -1, -1)]

    first = await audit.query(limit=50)
    await add(audit, 7, start=1000)  # new records after the first page
    second = await audit.query(limit=50, cursor=first.next_cursor)
    await add(audit, 3, start=2000)
    third = await audit.query(limit=50, cursor=second.next_cursor)

    assert [len(p.items) for p in (first, second, third)] == [50, 50, 20]
    assert first.next_cursor is not None and second.next_cursor is not None
    assert third.next_cursor is None
    pages = [[r.detail for r in p.items] for p in (first, second, third)]
    assert pages == [expected[:50], expected[50:100], expected[100:]]
    ids = [r.id for p in (first, second, third) for r in p.items]
    assert len(set(ids)) == 120


async def test_a_full_last_page_has_no_next_cursor(audit: SqliteAudit) -> None:
    await add(audit, 100)

    first = await audit.query(limit=50)
    second = await audit.query(limit=50, cursor=first.next_cursor)

    assert len(second.items) == 50
    assert second.next_cursor is None


async def test_default_limit_is_50(audit: SqliteAudit) -> None:
    await add(audit, 51)

    page = await audit.query()

    assert len(page.items) == 50
    assert page.next_cursor is not None


async def test_filters_are_repeated_with_the_cursor(audit: SqliteAudit) -> None:
    for i in range(30):
        await audit.record(
            operator="op",
            action="even" if i % 2 == 0 else "odd",
            target="t",
            outcome="ok",
            detail=str(i),
        )

    first = await audit.query(limit=10, action="even")
    second = await audit.query(limit=10, action="even", cursor=first.next_cursor)

    assert [r.detail for r in first.items] == [str(i) for i in range(28, 8, -2)]
    assert [r.detail for r in second.items] == [str(i) for i in range(8, -1, -2)]
    assert second.next_cursor is None


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    ["", "not a cursor!", "é", _b64("a"), _b64("b12"), _b64("a-1"), _b64("a1x"), "=====", "A"],
)
async def test_invalid_cursor(audit: SqliteAudit, cursor: str) -> None:
    await add(audit, 3)

    with pytest.raises(Invalid) as info:
        await audit.query(cursor=cursor)

    assert info.value.message == "invalid cursor"


# --- filters -----------------------------------------------------------------------------------


@pytest_asyncio.fixture(name="mixed")
async def _mixed(audit: SqliteAudit) -> SqliteAudit:
    rows = [
        ("Alice", "chat.send_message", "session:1", "ok"),
        ("alice", "chat.session.close", "session:1", "error"),
        ("bob", "chat.send", "session:2", "ok"),
        ("bob", "chatty.thing", "x", "ok"),
        ("system", "plugin.load", "plugin:a", "failed"),
        ("ALICE", "dlq.retry", "dlq:1", "ok"),
    ]
    for i, (operator, action, target, outcome) in enumerate(rows):
        await audit.record(
            operator=operator, action=action, target=target, outcome=outcome, detail=str(i)
        )
    return audit


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"operator": "alice"}, ["5", "1", "0"]),
        ({"operator": "BOB"}, ["3", "2"]),
        ({"operator": "ali"}, []),
        ({"action": "chat.send"}, ["2"]),
        ({"action": "chat.send_message"}, ["0"]),
        ({"action": "chat.*"}, ["2", "1", "0"]),
        ({"action": "chat*"}, ["3", "2", "1", "0"]),
        ({"action": "*"}, ["5", "4", "3", "2", "1", "0"]),
        ({"action": "Chat.*"}, []),
        ({"target": "session:1"}, ["1", "0"]),
        ({"target": "session"}, []),
        ({"outcome": "ok"}, ["5", "3", "2", "0"]),
        ({"outcome": "failed"}, ["4"]),
        ({"operator": "alice", "outcome": "ok", "action": "chat.*"}, ["0"]),
    ],
)
async def test_filters(mixed: SqliteAudit, filters: dict[str, str], expected: list[str]) -> None:
    assert await details(mixed, **filters) == expected


async def test_time_bounds_are_inclusive(audit: SqliteAudit) -> None:
    for i in range(6):
        await audit.record(operator="op", action="a", target="t", outcome="ok", detail=str(i))
        if i in (1, 3):  # make sure some records have distinct timestamps
            mark = now_ms()
            while now_ms() == mark:
                await asyncio.sleep(0)
    everything = (await audit.query(limit=100)).items
    middle = everything[2].timestamp_ms

    since = await details(audit, since_ms=middle)
    until = await details(audit, until_ms=middle)
    exact = await details(audit, since_ms=middle, until_ms=middle)

    assert since == [r.detail for r in everything if r.timestamp_ms >= middle]
    assert until == [r.detail for r in everything if r.timestamp_ms <= middle]
    assert exact == [r.detail for r in everything if r.timestamp_ms == middle]
    assert everything[2].detail in since and everything[2].detail in until
    assert 0 < len(since) < 6 and 0 < len(until) < 6
    assert await details(audit, since_ms=middle + 1, until_ms=middle) == []


# --- before open, pruning, durability ----------------------------------------------------------


async def test_records_before_open_are_kept_and_flushed(db: Path) -> None:
    store = SqliteStore()
    audit = SqliteAudit(store, lambda: 100_000)

    await add(audit, 3)
    assert await audit.query() == AuditPage(items=[], next_cursor=None)

    await store.open(db)
    try:
        await store.migrate("kernel.audit", MIGRATIONS)
        assert await details(audit) == []  # still in memory
        await audit.flush()
        await audit.flush()  # nothing left: no duplicates
        await add(audit, 1, start=3)

        assert await details(audit) == ["3", "2", "1", "0"]
    finally:
        await store.close()


async def test_pruning_keeps_at_most_max_records(audit: SqliteAudit, limit: list[int]) -> None:
    limit[0] = 10

    await asyncio.gather(
        *(
            audit.record(operator="op", action="a", target="t", outcome="ok", detail=str(i))
            for i in range(128)
        )
    )

    assert await details(audit) == [str(i) for i in range(127, 117, -1)]


async def test_pruning_reads_the_limit_at_prune_time(audit: SqliteAudit, limit: list[int]) -> None:
    await add(audit, 100)
    limit[0] = 20

    await add(audit, 200, start=100)

    kept = await details(audit)
    assert 20 <= len(kept) <= 20 + 128
    assert kept == [str(i) for i in range(299, 299 - len(kept), -1)]


async def test_records_survive_close_and_reopen(
    store: SqliteStore, audit: SqliteAudit, db: Path
) -> None:
    await add(audit, 3)
    await store.close()

    reopened = SqliteStore()
    await reopened.open(db)
    try:
        await reopened.migrate("kernel.audit", MIGRATIONS)  # already applied: nothing to do
        assert await details(SqliteAudit(reopened, lambda: 100_000)) == ["2", "1", "0"]
    finally:
        await reopened.close()


async def test_a_record_after_close_still_lands_in_the_file(
    store: SqliteStore, audit: SqliteAudit, db: Path
) -> None:
    await add(audit, 2)
    await store.close()

    await add(audit, 1, start=2)

    reopened = SqliteStore()
    await reopened.open(db)
    try:
        assert await details(SqliteAudit(reopened, lambda: 100_000)) == ["2", "1", "0"]
    finally:
        await reopened.close()


async def test_the_log_is_readable_while_the_store_is_closed(
    store: SqliteStore, audit: SqliteAudit
) -> None:
    await add(audit, 60)
    await store.close()

    first = await audit.query(limit=50)
    second = await audit.query(limit=50, cursor=first.next_cursor)

    assert [r.detail for r in first.items] == [str(i) for i in range(59, 9, -1)]
    assert [r.detail for r in second.items] == [str(i) for i in range(9, -1, -1)]
    assert second.next_cursor is None
