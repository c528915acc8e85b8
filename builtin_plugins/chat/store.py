"""Sessions, messages and raw session events in the runtime store (http-api §11.1, D9, D14)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from attrs import asdict, define, evolve, field

from sdk import ChatMessage, Migration, NotFound, Store, now_ms, uuid7, xid

__all__ = ["MIGRATIONS", "Message", "Session", "Sessions"]

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE chat_sessions (
            id TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            session_type TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            last_active_at INTEGER NOT NULL,
            version INTEGER NOT NULL,
            message_count INTEGER NOT NULL,
            parent_session_id TEXT,
            turns INTEGER NOT NULL DEFAULT 0,
            due_at INTEGER
        );
        CREATE INDEX chat_sessions_due ON chat_sessions (due_at) WHERE due_at IS NOT NULL;
        CREATE TABLE chat_messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            session_id TEXT NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL,
            edited_at_ms INTEGER,
            event_id TEXT,
            tool_name TEXT,
            tool_call_id TEXT,
            tool_args TEXT,
            interrupted INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX chat_messages_session ON chat_messages (session_id, seq);
        CREATE TABLE chat_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            source TEXT NOT NULL,
            timestamp_ms INTEGER NOT NULL,
            payload TEXT NOT NULL
        );
        CREATE INDEX chat_events_session ON chat_events (session_id, timestamp_ms);
        """,
    ),
    Migration(
        version=2,
        # the turn the session waits for, as JSON (Turn.marker), so a restart queues it again
        sql="ALTER TABLE chat_sessions ADD COLUMN queued TEXT;",
    ),
]

_SESSION_COLUMNS = (
    "id, agent_id, session_type, state, created_at, last_active_at, version, message_count,"
    " parent_session_id, turns, queued"
)
_MESSAGE_COLUMNS = (
    "id, session_id, role, content, created_at_ms, edited_at_ms, event_id, tool_name,"
    " tool_call_id, tool_args, interrupted"
)


@define(kw_only=True)
class Session:
    """A session row; ``pending_turns`` is filled in from the agent's queue."""

    id: str
    agent_id: str
    session_type: str
    state: str
    created_at: int
    last_active_at: int
    version: int = 0
    message_count: int = 0
    parent_session_id: str | None = None
    turns: int = 0
    #: A turn waits in its agent's queue (``Turn.marker()``): queued again after a restart.
    queued: str | None = None

    def public(self, pending_turns: int) -> dict[str, Any]:
        out = asdict(self)
        del out["turns"], out["queued"]
        out["pending_turns"] = pending_turns
        return out


@define(kw_only=True)
class Message:
    id: str
    session_id: str
    role: str
    content: str
    created_at_ms: int
    edited_at_ms: int | None = None
    event_id: str | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    tool_args: str | None = None
    interrupted: bool = False
    _said: ChatMessage | None = field(default=None, init=False, eq=False, repr=False)

    def said(self) -> ChatMessage:
        """A user or assistant message as the model sees it, built once per content: a turn
        reads the same messages again, so a long session costs little per turn."""
        said = self._said
        if said is None or said.content is not self.content:
            said = self._said = ChatMessage(role=self.role, content=self.content)  # type: ignore[arg-type]
        return said

    def public(self) -> dict[str, Any]:
        """The message model of D14 (``tool_name`` and ``interrupted`` only where they apply)."""
        out: dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "created_at_ms": self.created_at_ms,
            "edited_at_ms": self.edited_at_ms,
            "event_id": self.event_id,
        }
        if self.role == "tool":
            out["tool_name"] = self.tool_name
        if self.interrupted:
            out["interrupted"] = True
        return out

    @property
    def counted(self) -> bool:
        """``message_count`` counts user and assistant messages."""
        return self.role in ("user", "assistant")


def _session(row: sqlite3.Row) -> Session:
    return Session(**dict(row))


def _message(row: sqlite3.Row) -> Message:
    data = dict(row)
    data["interrupted"] = bool(data["interrupted"])
    return Message(**data)


def new_message(session_id: str, role: str, content: str, **fields: Any) -> Message:
    return Message(
        id=uuid7(),
        session_id=session_id,
        role=role,
        content=content,
        created_at_ms=now_ms(),
        **fields,
    )


@define
class _Hot:
    """A recently used session as committed, and the tail of its messages that the last
    :meth:`Sessions.recent` read (``None`` until one, or after an edit or a removal)."""

    session: Session
    tail: list[Message] | None = None  # exactly what recent(chars) answers
    chars: int = 0
    size: int = 0  # characters in the tail
    writes: int = 0  # message writes seen: a read that saw a write begin keeps nothing

    def keep(self, tail: list[Message], chars: int) -> None:
        self.tail, self.chars, self.size = tail, chars, sum(len(m.content) for m in tail)

    def extend(self, messages: Sequence[Message]) -> None:
        """Append committed messages and drop from the front what no longer fits: the
        amortised cost is that of the messages added, not of the tail."""
        self.writes += 1
        tail = self.tail
        if tail is None:
            return
        known = {m.id for m in tail[-len(messages) :]}  # an overlapping read has them newest
        for m in messages:
            if m.id not in known:
                tail.append(m)
                self.size += len(m.content)
        user = next((i for i in range(len(tail) - 1, -1, -1) if tail[i].role == "user"), None)
        newer, start = self.size, len(tail)
        for i, m in enumerate(tail):
            newer -= len(m.content)  # the characters after message i
            if newer <= self.chars or i == user:
                start = i
                break
        if start:
            self.size -= sum(len(m.content) for m in tail[:start])
            del tail[:start]

    def reset(self) -> None:
        self.writes += 1
        self.tail = None


def _fit(messages: list[Message], chars: int) -> list[Message]:
    """The suffix of ``messages`` that :meth:`Sessions.recent` answers for ``chars``: every
    message with at most ``chars`` characters after it, and all from the newest user message."""
    start, newer, user = len(messages), 0, len(messages)
    for i in range(len(messages) - 1, -1, -1):
        if newer > chars and user < len(messages):
            break
        if newer <= chars:
            start = i
        if user == len(messages) and messages[i].role == "user":
            user = i
        newer += len(messages[i].content)
    return messages[min(start, user) :]


class Sessions:
    """The chat tables. Every write is one store transaction.

    The sessions used most recently stay in memory as committed, with the tail of messages
    their turns read, so a turn does not read its session and its context back from SQLite:
    :meth:`get` answers a copy, and every write through this class (or :meth:`saved`, after
    the commit of an :meth:`update_op` that ran in another transaction) keeps the copy true.
    """

    HOT = 64

    def __init__(self, store: Store) -> None:
        self._store = store
        self._hot: OrderedDict[str, _Hot] = OrderedDict()
        self._writes = 0  # session writes: a read that overlapped one is not remembered

    # --- the hot sessions -----------------------------------------------------------------------

    def _remember(self, session: Session) -> _Hot:
        self._writes += 1
        hot = self._hot.get(session.id)
        if hot is None:
            hot = self._hot[session.id] = _Hot(evolve(session))
            while len(self._hot) > self.HOT:
                self._hot.popitem(last=False)
        else:
            hot.session = evolve(session)
            self._hot.move_to_end(session.id)
        return hot

    def saved(
        self, session: Session, add: Sequence[Message] = (), remove_after: int | None = None
    ) -> None:
        """Record what the commit of :meth:`update_op` for ``session`` wrote."""
        hot = self._remember(session)
        if remove_after is not None:
            hot.reset()
        elif add:
            hot.extend(add)

    def forget(self, session_id: str) -> None:
        """Drop the memory of a session whose write failed (or is gone)."""
        self._writes += 1
        self._hot.pop(session_id, None)

    # --- sessions -----------------------------------------------------------------------------

    async def create(
        self,
        agent_id: str,
        session_type: str,
        *,
        session_id: str | None = None,
        parent: str | None = None,
        copies: Sequence[Message] = (),
        due_at: int | None = None,
    ) -> Session:
        """A new ``ACTIVE`` session (with ``copies`` of a parent's messages); ``due_at`` is when
        its ``ACTIVE`` timeout falls due."""
        now = now_ms()
        session = Session(
            id=session_id or xid(),
            agent_id=agent_id,
            session_type=session_type,
            state="ACTIVE",
            created_at=now,
            last_active_at=now,
            parent_session_id=parent,
            message_count=sum(1 for m in copies if m.counted),
        )
        clones = [
            Message(
                **{
                    **asdict(m, filter=lambda a, _: a.init),
                    "id": uuid7(),
                    "session_id": session.id,
                    "event_id": None,
                }
            )
            for m in copies
        ]

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO chat_sessions ({_SESSION_COLUMNS}, due_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    session.id,
                    agent_id,
                    session_type,
                    "ACTIVE",
                    now,
                    now,
                    0,
                    session.message_count,
                    parent,
                    0,
                    None,
                    due_at,
                ),
            )
            _insert(conn, clones)

        await self._store.write(write)
        self._remember(session)
        return session

    async def get(self, session_id: str) -> Session:
        hot = self._hot.get(session_id)
        if hot is not None:
            self._hot.move_to_end(session_id)
            return evolve(hot.session)
        writes = self._writes
        rows = await self._store.fetchall(
            f"SELECT {_SESSION_COLUMNS} FROM chat_sessions WHERE id = ?", (session_id,)
        )
        if not rows:
            raise NotFound(f"session not found: {session_id}")
        session = _session(rows[0])
        if writes == self._writes:
            self._remember(session)
        return session

    async def list(self, *, agent_id: str | None, state: str | None, limit: int) -> list[Session]:
        sql = f"SELECT {_SESSION_COLUMNS} FROM chat_sessions WHERE 1 = 1"
        params: list[Any] = []
        if agent_id is not None:
            sql += " AND agent_id = ?"
            params.append(agent_id)
        if state is not None:
            sql += " AND state = ?"
            params.append(state.upper())
        sql += " ORDER BY last_active_at DESC, id LIMIT ?"
        params.append(limit)
        return [_session(r) for r in await self._store.fetchall(sql, params)]

    async def waiting(self) -> list[Session]:
        """The sessions whose turn waited in a queue when the runtime stopped, oldest first."""
        sql = f"SELECT {_SESSION_COLUMNS} FROM chat_sessions WHERE queued IS NOT NULL"
        return [_session(r) for r in await self._store.fetchall(sql + " ORDER BY last_active_at")]

    async def in_states(self, states: Sequence[str]) -> list[Session]:
        marks = ",".join("?" * len(states))
        sql = f"SELECT {_SESSION_COLUMNS} FROM chat_sessions WHERE state IN ({marks})"
        return [_session(r) for r in await self._store.fetchall(sql, list(states))]

    async def due(self, now: int) -> list[tuple[str, str]]:
        rows = await self._store.fetchall(
            "SELECT id, state FROM chat_sessions WHERE due_at IS NOT NULL AND due_at <= ?", (now,)
        )
        return [(r["id"], r["state"]) for r in rows]

    async def update(
        self,
        session: Session,
        *,
        due_at: int | None = None,
        add: Sequence[Message] = (),
        remove_after: int | None = None,
    ) -> None:
        """Save ``session`` with messages added (and removed): one transaction."""
        try:
            await self._store.write(
                self.update_op(session, due_at=due_at, add=add, remove_after=remove_after)
            )
        except BaseException:
            self.forget(session.id)
            raise
        self.saved(session, add, remove_after)

    @staticmethod
    def update_op(
        session: Session,
        *,
        due_at: int | None = None,
        add: Sequence[Message] = (),
        remove_after: int | None = None,
    ) -> Callable[[sqlite3.Connection], None]:
        """The write of :meth:`update`: the session's state, counters and times, ``add``ed
        messages and, when ``remove_after`` is a message ``seq``, every later one removed."""
        row = (
            session.state,
            session.last_active_at,
            session.version,
            session.message_count,
            session.turns,
            due_at,
            session.queued,
            session.id,
        )

        def write(conn: sqlite3.Connection) -> None:
            if remove_after is not None:
                conn.execute(
                    "DELETE FROM chat_messages WHERE session_id = ? AND seq > ?",
                    (session.id, remove_after),
                )
            _insert(conn, add)
            conn.execute(
                "UPDATE chat_sessions SET state = ?, last_active_at = ?, version = ?,"
                " message_count = ?, turns = ?, due_at = ?, queued = ? WHERE id = ?",
                row,
            )

        return write

    async def delete(self, session_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for table, column in (
                ("chat_events", "session_id"),
                ("chat_messages", "session_id"),
                ("chat_sessions", "id"),
            ):
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (session_id,))

        self.forget(session_id)
        try:
            await self._store.write(write)
        finally:
            self.forget(session_id)  # and what a read meanwhile brought back

    # --- messages -----------------------------------------------------------------------------

    async def messages(
        self, session_id: str, *, limit: int | None = None, before_seq: int | None = None
    ) -> list[Message]:
        """The newest ``limit`` messages (older than ``before_seq``), oldest first."""
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = ?"
        params: list[Any] = [session_id]
        if before_seq is not None:
            sql += " AND seq < ?"
            params.append(before_seq)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_message(r) for r in reversed(await self._store.fetchall(sql, params))]

    async def recent(self, session_id: str, *, chars: int) -> list[Message]:
        """The newest messages whose contents add up to at most ``chars`` characters, and at
        least everything from the newest user message on, oldest first: what a turn's context
        can use (http-api §11.3 step 2), read without loading a long session whole, and
        from memory while the session is hot."""
        hot = self._hot.get(session_id)
        if hot is not None and hot.tail is not None and chars <= hot.chars:
            return list(hot.tail) if chars == hot.chars else _fit(hot.tail, chars)
        writes = hot.writes if hot is not None else -1
        rows = await self._store.fetchall(
            f"SELECT {_MESSAGE_COLUMNS} FROM ("
            f" SELECT {_MESSAGE_COLUMNS}, seq,"
            "  SUM(LENGTH(content)) OVER (ORDER BY seq DESC) - LENGTH(content) AS newer"
            "  FROM chat_messages WHERE session_id = ?)"
            " WHERE newer <= ? OR seq >= (SELECT MAX(seq) FROM chat_messages"
            "  WHERE session_id = ? AND role = 'user')"
            " ORDER BY seq",
            (session_id, chars, session_id),
        )
        messages = [_message(r) for r in rows]
        if hot is not None and hot is self._hot.get(session_id) and hot.writes == writes:
            hot.keep(list(messages), chars)
        return list(messages)

    async def find(
        self, session_id: str, *, message_id: str | None = None, event_id: str | None = None
    ) -> tuple[int, Message]:
        """A message of this session by id or by creating event, with its ``seq``."""
        column, value = ("id", message_id) if message_id is not None else ("event_id", event_id)
        rows = await self._store.fetchall(
            f"SELECT seq, {_MESSAGE_COLUMNS} FROM chat_messages"
            f" WHERE session_id = ? AND {column} = ?",
            (session_id, value),
        )
        if not rows:
            raise NotFound(f"message not found: {value}")
        data = dict(rows[0])
        return data.pop("seq"), _message(data)  # type: ignore[arg-type]

    async def last_user(self, session_id: str) -> tuple[int, Message] | None:
        rows = await self._store.fetchall(
            f"SELECT seq, {_MESSAGE_COLUMNS} FROM chat_messages"
            " WHERE session_id = ? AND role = 'user' ORDER BY seq DESC LIMIT 1",
            (session_id,),
        )
        if not rows:
            return None
        data = dict(rows[0])
        return data.pop("seq"), _message(data)  # type: ignore[arg-type]

    async def count_after(self, session_id: str, seq: int) -> int:
        rows = await self._store.fetchall(
            "SELECT COUNT(*) AS n FROM chat_messages WHERE session_id = ? AND seq > ?"
            " AND role IN ('user', 'assistant')",
            (session_id, seq),
        )
        return int(rows[0]["n"])

    async def add(self, messages: Sequence[Message]) -> None:
        """Messages of one session, outside a session update."""
        if not messages:
            return
        session_id = messages[0].session_id
        try:
            await self._store.write(lambda conn: _insert(conn, messages))
        except BaseException:
            self.forget(session_id)
            raise
        if (hot := self._hot.get(session_id)) is not None:
            hot.extend(messages)

    async def edit(self, message: Message) -> None:
        try:
            await self._store.execute(
                "UPDATE chat_messages SET content = ?, edited_at_ms = ? WHERE id = ?",
                (message.content, message.edited_at_ms, message.id),
            )
        finally:
            if (hot := self._hot.get(message.session_id)) is not None:
                hot.reset()

    # --- raw events ---------------------------------------------------------------------------

    def record_events(self, rows: Sequence[tuple[Any, ...]]) -> asyncio.Future[Any]:
        """Raw session events: they ride along with the next write's commit (or go shortly)."""
        return self._store.defer(
            lambda conn: conn.executemany(
                "INSERT INTO chat_events (session_id, event_id, event_type, source, timestamp_ms,"
                " payload) VALUES (?,?,?,?,?,?)",
                rows,
            )
        )

    def release(self) -> None:
        """Send the deferred rows now (a read is about to look for them)."""
        self._store.release()

    async def events(
        self,
        session_id: str,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        sql = (
            "SELECT event_id, event_type, source, timestamp_ms, payload FROM chat_events"
            " WHERE session_id = ?"
        )
        params: list[Any] = [session_id]
        if since_ms is not None:
            sql += " AND timestamp_ms >= ?"
            params.append(since_ms)
        if until_ms is not None:
            sql += " AND timestamp_ms <= ?"
            params.append(until_ms)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = await self._store.fetchall(sql, params)
        return [{**dict(r), "payload": json.loads(r["payload"])} for r in reversed(rows)]


def _insert(conn: sqlite3.Connection, messages: Sequence[Message]) -> None:
    conn.executemany(
        f"INSERT INTO chat_messages ({_MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                m.id,
                m.session_id,
                m.role,
                m.content,
                m.created_at_ms,
                m.edited_at_ms,
                m.event_id,
                m.tool_name,
                m.tool_call_id,
                m.tool_args,
                int(m.interrupted),
            )
            for m in messages
        ],
    )
