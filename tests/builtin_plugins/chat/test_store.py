"""The chat tables and the memory of hot sessions: what a turn reads from memory is what SQLite
would answer (``builtin_plugins/chat/store.py``)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from builtin_plugins.chat.store import MIGRATIONS, Sessions, new_message
from kernel.store import SqliteStore
from sdk import NotFound


@pytest_asyncio.fixture(name="store")
async def _store(tmp_path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore()
    await store.open(tmp_path / "aman.db")
    await store.migrate("chat", MIGRATIONS)
    yield store
    await store.close()


async def from_disk(store: SqliteStore, session_id: str, chars: int) -> list[str]:
    """What a fresh reader (no memory) answers."""
    return [m.id for m in await Sessions(store).recent(session_id, chars=chars)]


async def test_the_remembered_tail_answers_what_sqlite_answers(store):
    rng = random.Random(7)
    sessions = Sessions(store)
    session = await sessions.create("aman", "persistent")
    await sessions.recent(session.id, chars=400)  # the tail is remembered from here on
    for turn in range(60):
        role = "user" if turn % 3 == 0 else rng.choice(["assistant", "tool", "system"])
        message = new_message(session.id, role, "x" * rng.randrange(1, 90))
        if turn % 2:
            await sessions.add([message])
        else:  # a write in another transaction, reported after its commit
            session.version += 1
            await store.write(sessions.update_op(session, add=[message]))
            sessions.saved(session, [message])
        for chars in (0, 35, 120, 400):
            got = [m.id for m in await sessions.recent(session.id, chars=chars)]
            assert got == await from_disk(store, session.id, chars), (turn, chars)
    # Whatever the budget, everything from the newest user message on stays.
    await sessions.add([new_message(session.id, "user", "u" * 500)])
    for _ in range(5):
        await sessions.add([new_message(session.id, "tool", "t" * 300)])
        got = [m.id for m in await sessions.recent(session.id, chars=400)]
        assert got == await from_disk(store, session.id, 400)
    assert len(got) == 6
    # A wider budget than the remembered one reads SQLite again, and remembers that.
    wide = [m.id for m in await sessions.recent(session.id, chars=100_000)]
    assert wide == await from_disk(store, session.id, 100_000) and len(wide) == 66


async def test_edits_removals_and_failed_writes_are_not_served_from_memory(store):
    sessions = Sessions(store)
    session = await sessions.create("aman", "persistent")
    first = new_message(session.id, "user", "hello")
    await sessions.update(session, add=[first, new_message(session.id, "assistant", "hi")])
    assert [m.content for m in await sessions.recent(session.id, chars=100)] == ["hello", "hi"]

    first.content = "hello again"
    await sessions.edit(first)
    assert [m.content for m in await sessions.recent(session.id, chars=100)] == [
        "hello again", "hi"]

    await sessions.update(session, remove_after=0)
    assert await sessions.recent(session.id, chars=100) == []

    stale = await sessions.get(session.id)
    stale.version = 99  # a caller's copy: changing it changes nothing remembered
    assert (await sessions.get(session.id)).version == session.version

    def fails(conn):
        raise RuntimeError("disk on fire")

    session.version = 5
    with pytest.raises(RuntimeError):
        await store.write(fails)
    sessions.forget(session.id)  # what ChatService.save does when its write fails
    assert (await sessions.get(session.id)).version == 0

    await sessions.delete(session.id)
    with pytest.raises(NotFound):
        await sessions.get(session.id)


async def test_only_the_most_recently_used_sessions_stay_in_memory(store):
    sessions = Sessions(store)
    made = [await sessions.create("aman", "persistent") for _ in range(Sessions.HOT + 10)]
    assert len(sessions._hot) == Sessions.HOT  # bounded, whatever the number of sessions
    oldest = made[0]
    assert oldest.id not in sessions._hot
    assert (await sessions.get(oldest.id)).id == oldest.id  # read back from SQLite
    assert next(reversed(sessions._hot)) == oldest.id
