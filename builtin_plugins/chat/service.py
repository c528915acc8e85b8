"""The chat runtime: sessions and their state machine, input checks, the turn queue, timeouts
and crash recovery (http-api §11). The turn itself is in ``turns.py``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from attrs import frozen

from sdk import (
    AuditNote,
    Conflict,
    Event,
    InputPolicy,
    Invalid,
    NotFound,
    PluginContext,
    SdkError,
    SkillInfo,
    Submitted,
    TextInput,
    cancel,
    now_ms,
)
from sdk.chat import SESSION_TIMEOUTS, SESSION_TRANSITIONS

from .agents import Agent, Agents, Turn, skills_for
from .store import Message, Session, Sessions, new_message

__all__ = ["ChatService"]

TRANSITIONS = {(f, e): t for f, e, t in SESSION_TRANSITIONS}
TIMEOUTS = {state: (key, event) for state, key, _, event in SESSION_TIMEOUTS}
STREAMING = frozenset({"agent:reply_stream_start", "agent:reply_chunk", "agent:reply_stream_done"})
CONTROL = "session:control"
DEFER_MS = 5000  # timeouts wait at least this long after the session's last event (§11.2)
RESTART_NOTICE = "The reply was interrupted by a restart."
QUEUE_FULL_NOTICE = "The message was not answered because the agent's queue was full."
MESSAGE_SOURCES = ("gateway:http", "idle.manual", "explore:pipeline")
#: The session ids other producers may use (http-api §11.3).
PRODUCER_SESSION_ID = re.compile(r"[A-Za-z0-9:._-]{1,128}")


@frozen(kw_only=True)
class Carrier:
    """An event published in the same transaction as a session's rows (:meth:`ChatService.save`)."""

    event_type: str
    payload: dict[str, Any]
    options: dict[str, Any]
    bind: tuple[Message, ...] = ()


class ChatService:
    """Implements :class:`sdk.Chat` and everything the chat routes do."""

    def __init__(self, ctx: PluginContext) -> None:
        from .turns import run_turn  # the turn loop needs this service

        self.ctx = ctx
        self.sessions = Sessions(ctx.store)
        self.agents = Agents(ctx, lambda agent, turn: run_turn(self, agent, turn))
        # A session's lock lives while someone holds or awaits it, not for every session ever.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._rows: list[tuple[Any, ...]] = []
        self._flush: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.agents.start()
        self.ctx.bus.observers.append(self._observe)
        await self._recover()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="chat:timeouts")

    async def stop(self) -> None:
        await cancel(self._ticker)
        await self.agents.stop()
        with contextlib.suppress(ValueError):
            self.ctx.bus.observers.remove(self._observe)
        await self.settle_events()

    async def _recover(self) -> None:
        """Sessions a crash left mid-turn go to ERROR with a notice, so /retry can regenerate;
        then the turns that waited in a queue are queued again, oldest first (a retry's turn
        was the one interrupted: its session is now in ERROR, and /retry redoes it)."""
        for session in await self.sessions.in_states(("PROCESSING", "RETRYING")):
            event = "LLM_ERROR" if session.state == "PROCESSING" else "RETRY_FAILED"
            moves = [self.move(session, event)]
            await self.save(session, moves, add=[new_message(session.id, "system", RESTART_NOTICE)])
        for session in await self.sessions.waiting():
            assert session.queued is not None
            turn = Turn.from_marker(session.id, session.queued)
            agent = self.agents.by_id.get(session.agent_id)
            if agent is None or turn.retry:
                session.queued = None
                await self.save(session, [])
                continue
            self.agents.enqueue(agent, turn)

    # --- the state machine ----------------------------------------------------------------------

    def lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    def move(self, session: Session, event: str) -> tuple[str, str, str]:
        """Apply one transition of http-api §11.2 to ``session`` (not yet saved)."""
        to = TRANSITIONS.get((session.state, event))
        if to is None:
            raise Conflict(f"invalid transition: {session.state} on {event}")
        step = (session.state, to, event)
        session.state = to
        return step

    def due_at(self, state: str) -> int | None:
        """When a session entering ``state`` now times out (http-api §11.2)."""
        if state not in TIMEOUTS or state == "PROCESSING":
            return None  # PROCESSING counts inactivity of the running turn instead
        key, _ = TIMEOUTS[state]
        return now_ms() + int(self.ctx.settings.get(f"chat.timeouts.{key}")) * 1000

    async def save(
        self,
        session: Session,
        moves: list[tuple[str, str, str]],
        *,
        add: list[Message] | tuple[Message, ...] = (),
        remove_after: int | None = None,
        reason: str = "Event",
        carrier: Carrier | None = None,
    ) -> str | None:
        """Persist the session (and messages) and publish its transitions, submitted at once
        so the store commits them together. With a ``carrier`` the rows are written in that
        event's own transaction (http-api §11.5: the message and its event, one transaction)
        and the ``bind`` messages record its id; answer that id."""
        session.last_active_at = now_ms()
        write = self.sessions.update_op(
            session, due_at=self.due_at(session.state), add=add, remove_after=remove_after
        )
        if carrier is None:
            stored: Any = self.ctx.store.write(write)
        else:

            def both(conn: Any, event_id: str) -> None:
                for message in carrier.bind:
                    message.event_id = event_id
                write(conn)

            stored = self.ctx.bus.publish(
                carrier.event_type, carrier.payload, also=both, **carrier.options
            )
        transitions = (
            self.ctx.bus.publish(
                "workflow_state_changed",
                {
                    "instance_id": session.id,
                    "workflow_name": "message-session",
                    "from_state": from_state,
                    "to_state": to_state,
                    "event": event,
                    "reason": reason,
                },
                source="workflow:message-session",
                delivery="at_least_once",
            )
            for from_state, to_state, event in moves
        )
        try:
            results = await asyncio.gather(stored, *transitions)
        except BaseException:
            self.sessions.forget(session.id)
            raise
        self.sessions.saved(session, add, remove_after)
        return results[0].id if carrier is not None else None

    async def session(self, session_id: str) -> Session:
        return await self.sessions.get(session_id)

    def public(self, session: Session) -> dict[str, Any]:
        agent = self.agents.by_id.get(session.agent_id)
        return session.public(agent.pending(session.id) if agent else 0)

    # --- sdk.Chat -------------------------------------------------------------------------------

    def usable(self, agent_id: str) -> None:
        self.agents.get(agent_id).usable()

    def skills_for(self, agent_id: str) -> list[SkillInfo]:
        return skills_for(self.ctx, self.agents.get(agent_id).descriptor)

    async def open_session(
        self,
        *,
        agent_id: str,
        operator: str,
        session_type: str = "persistent",
        session_id: str | None = None,
        parent: Session | None = None,
        copies: list[Message] | None = None,
    ) -> str:
        self.agents.get(agent_id)
        if session_id is not None:
            with contextlib.suppress(NotFound):
                return (await self.sessions.get(session_id)).id
        session = await self.sessions.create(
            agent_id,
            session_type,
            session_id=session_id,
            parent=parent.id if parent else None,
            copies=copies or (),
            due_at=self.due_at("ACTIVE"),
        )
        await self.ctx.bus.publish(
            "session:started",
            {
                "session_id": session.id,
                "session_type": session_type,
                "agent_id": agent_id,
                "operator": operator,
            },
            source=CONTROL,
        )
        return session.id

    async def submit(
        self,
        session_id: str,
        text: str,
        *,
        source: str,
        operator: str,
        extra: Mapping[str, Any] | None = None,
        system_state: str = "chatting",
        activity: str = "chat",
        expected_version: int | None = None,
        audit: AuditNote | None = None,
        event_id: str | None = None,
        checks: bool = True,
    ) -> Submitted:
        """A new user message and its turn (the order of http-api §11.5 send)."""
        async with self.lock(session_id):
            session = await self.sessions.get(session_id)
            self.check_version(session, expected_version)
            if session.state == "RETRYING":  # its retry answers the last user message first
                raise Conflict(f"session {session_id} is processing")
            agent = self.agents.get(session.agent_id)
            agent.usable()
            if checks:
                text = await self.check_input(
                    text, session, operator=operator, action="chat.send_message", audit=audit
                )
            agent.has_room()
            message = new_message(session.id, "user", text, event_id=event_id)
            turn = Turn(session_id=session.id, system_state=system_state, activity=activity)
            session.queued = turn.marker()
            session.version += 1
            session.message_count += 1
            carrier = None
            if event_id is None:
                carrier = Carrier(
                    event_type="message_received",
                    payload={
                        "session_id": session.id,
                        "agent_id": session.agent_id,
                        "message_id": message.id,
                        "text": text,
                        "sender": operator,
                        "source": "api",
                        **(extra or {}),
                    },
                    options={
                        "source": source,
                        "delivery": "at_least_once",
                        "agent_id": session.agent_id,
                        "from_http": True,
                    },
                    bind=(message,),
                )
            await self.save(session, [], add=[message], carrier=carrier)
            event_id = message.event_id
            assert event_id is not None
            if audit is not None:
                audit.detail = f"text_hash:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
            queued = self.agents.enqueue(agent, turn)
            return Submitted(
                event_id=event_id, message_id=message.id, version=session.version, queued=queued
            )

    async def post_reply(self, session_id: str, text: str, *, source: str) -> str:
        async with self.lock(session_id):
            session = await self.sessions.get(session_id)
            message = new_message(session.id, "assistant", text)
            published = await self.ctx.bus.publish(
                "agent:reply_ready",
                {
                    "agent_id": session.agent_id,
                    "session_id": session.id,
                    "message_id": message.id,
                    "reply": text,
                    "background": session.session_type == "background",
                    "turns_processed": 0,
                },
                source=source,
                delivery="at_least_once",
                agent_id=session.agent_id,
            )
            message.event_id = published.id
            session.message_count += 1
            await self.save(session, [], add=[message])
            return message.id

    @contextlib.contextmanager
    def activity(self, agent_id: str, kind: str, session_id: str) -> Iterator[None]:
        agent = self.agents.get(agent_id)
        mark = {"kind": kind, "session_id": session_id, "since_ms": now_ms()}
        agent.outside = mark
        try:
            yield
        finally:
            if agent.outside is mark:
                agent.outside = None

    # --- checks ---------------------------------------------------------------------------------

    def check_idle(self, session: Session) -> None:
        """A retry or an edit needs a session without a turn: neither running (``PROCESSING``),
        nor waiting in its agent's queue (``RETRYING``, or a send's turn not started yet)."""
        agent = self.agents.by_id.get(session.agent_id)
        if session.state in ("PROCESSING", "RETRYING") or (agent and agent.pending(session.id)):
            raise Conflict(f"session {session.id} is processing")

    @staticmethod
    def check_version(session: Session, expected: int | None) -> None:
        if expected is not None and expected != session.version:
            raise Conflict(f"version conflict: expected {expected}, got {session.version}")

    def check_text(self, text: str) -> None:
        if not text.strip():
            raise Invalid("text must not be empty")
        most = self.ctx.settings.get("chat.max_message_chars")
        if len(text) > most:
            raise Invalid(f"text is too long (max {most} characters)")

    async def check_input(
        self,
        text: str,
        session: Session,
        *,
        operator: str,
        action: str,
        audit: AuditNote | None,
    ) -> str:
        """The input policies of http-api §11.4, in order; answer the text to store. A blocking
        verdict becomes the request's own audit record (or a system one without a request)."""
        policies = sorted(
            (
                c.item
                for c in self.ctx.plugins.contributions("register_policies")
                if isinstance(c.item, InputPolicy)
            ),
            key=lambda p: p.order,
        )
        for policy in policies:
            item = TextInput(text=text, agent_id=session.agent_id, session_id=session.id)
            try:
                verdict = policy.check(item)
            except Exception as exc:
                self.ctx.log.warning("input policy %s failed: %s", policy.name, exc)
                raise Invalid(f"Message blocked: policy {policy.name} failed") from exc
            if verdict is None:
                continue
            if verdict.error is not None and audit is not None:
                audit.outcome, audit.detail = verdict.outcome, verdict.detail
            else:
                await self.ctx.audit.record(
                    operator=operator,
                    action=action,
                    target=session.id,
                    outcome=verdict.outcome,
                    detail=verdict.detail,
                )
            if verdict.error is not None:
                raise verdict.error
            if verdict.event is not None:
                event_type, payload = verdict.event
                await self.ctx.bus.publish(
                    event_type, dict(payload), source="chat:sanitizer", delivery="at_least_once"
                )
            if verdict.text is not None:
                text = verdict.text
        return text

    # --- messages from other producers (§11.3) ------------------------------------------------

    async def on_message(self, event: Event) -> None:
        """``message_received`` that the chat endpoints, idle-run and cron did not produce: a
        valid ``text`` and ``session_id`` or it is ignored; the agent from the payload, the
        event's address or the default; an unknown session is created as ``background``."""
        payload = event.payload if isinstance(event.payload, dict) else {}
        if event.source in MESSAGE_SOURCES or event.source.startswith("cron:"):
            return
        text, session_id = payload.get("text"), payload.get("session_id")
        if not isinstance(text, str) or not text.strip():
            return
        if not isinstance(session_id, str) or not PRODUCER_SESSION_ID.fullmatch(session_id):
            self.ctx.log.info("message_received %s ignored: no valid session_id", event.id)
            return
        most = self.ctx.settings.get("chat.max_message_chars")
        if len(text) > most:
            self.ctx.log.warning(
                "message_received %s ignored: text is too long (max %d characters)", event.id, most
            )
            return
        agent_id = (
            payload.get("agent_id")
            or event.metadata.agent_id
            or self.ctx.settings.get("chat.default_agent")
        )
        if agent_id not in self.agents.by_id:
            self.ctx.log.warning("message_received %s names unknown agent %s", event.id, agent_id)
            return
        try:
            await self.sessions.get(session_id)
        except NotFound:
            await self.open_session(
                agent_id=agent_id,
                operator="system",
                session_type="background",
                session_id=session_id,
            )
            await self.ctx.audit.record(
                operator="system",
                action="chat.session.create",
                target=f"session:{session_id}",
                outcome="ok",
                detail="background",
            )
        try:
            await self.submit(
                session_id, text, source=event.source, operator="system", event_id=event.id
            )
        except Conflict as exc:
            if "queue is full" not in str(exc):
                raise
            async with self.lock(session_id):
                session = await self.sessions.get(session_id)
                user = new_message(session_id, "user", text, event_id=event.id)
                notice = new_message(session_id, "system", QUEUE_FULL_NOTICE)
                session.message_count += 1
                await self.save(session, [], add=[user, notice])
        except SdkError as exc:  # blocked by a policy: dropped (the audit record says why)
            self.ctx.log.info("message %s dropped: %s", event.id, exc)

    # --- control --------------------------------------------------------------------------------

    def running(self, session_id: str) -> tuple[Agent | None, Turn | None]:
        for agent in self.agents.by_id.values():
            if agent.current is not None and agent.current.session_id == session_id:
                return agent, agent.current
        return None, None

    async def interrupt(self, session: Session, why: str) -> tuple[bool, int]:
        """Drop the session's queued turns and stop its running turn (``why``: stop, close,
        kill, timeout); answer whether anything was stopped and the children killed."""
        agent = self.agents.by_id.get(session.agent_id)
        dropped = self.agents.drop(agent, session.id) if agent else 0
        if dropped:  # a restart must not queue them again
            async with self.lock(session.id):
                waiting = await self.sessions.get(session.id)
                waiting.queued = None
                await self.save(waiting, [])
        _, turn = self.running(session.id)
        if turn is None or turn.task is None:
            return dropped > 0, 0
        killed = 0
        if why == "kill":
            for proc in list(turn.processes):
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    killed += 1
        turn.stop = why
        turn.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(turn.task)
        return True, killed

    async def close(self, session_id: str, reason: str, operator: str) -> dict[str, Any]:
        session = await self.sessions.get(session_id)
        if session.state == "CLOSED":
            raise Conflict(f"session {session_id} is already closed")
        await self.interrupt(session, "close")
        async with self.lock(session_id):
            session = await self.sessions.get(session_id)
            moves = [] if session.state == "CLOSED" else [self.move(session, "SESSION_CLOSE_CMD")]
            session.version += 1
            await self.save(session, moves)
        await self.ctx.bus.publish(
            "session:closed",
            {
                "session_id": session_id,
                "agent_id": session.agent_id,
                "operator": operator,
                "reason": reason,
            },
            source=CONTROL,
        )
        return {"ok": True, "state": session.state, "version": session.version}

    async def delete(self, session_id: str, operator: str) -> None:
        session = await self.sessions.get(session_id)
        await self.interrupt(session, "close")
        async with self.lock(session_id):
            await self.sessions.delete(session_id)
        await self.ctx.bus.publish(
            "session:deleted",
            {"session_id": session_id, "agent_id": session.agent_id, "operator": operator},
            source=CONTROL,
        )

    async def regenerate(self, session_id: str, *, retry_cmd: bool) -> Session:
        """Remove what follows the last user message and queue a new turn (retry)."""
        async with self.lock(session_id):
            session = await self.sessions.get(session_id)
            self.check_idle(session)
            last = await self.sessions.last_user(session_id)
            if last is None:
                raise Conflict(f"nothing to retry in session {session_id}")
            agent = self.agents.get(session.agent_id)
            agent.usable()
            agent.has_room()
            seq, _ = last
            session.message_count -= await self.sessions.count_after(session_id, seq)
            moves = [self.move(session, "RETRY_CMD")] if session.state == "ERROR" else []
            turn = Turn(session_id=session.id, retry=bool(moves))
            session.queued = turn.marker()
            session.version += 1
            await self.save(session, moves, remove_after=seq)
            self.agents.enqueue(agent, turn)
            return session

    async def edit(
        self,
        session_id: str,
        *,
        message_id: str | None,
        event_id: str | None,
        new_text: str,
        expected_version: int | None,
        operator: str,
        audit: AuditNote,
    ) -> dict[str, Any]:
        async with self.lock(session_id):
            session = await self.sessions.get(session_id)
            self.check_version(session, expected_version)
            seq, message = await self.sessions.find(
                session_id, message_id=message_id, event_id=event_id
            )
            if message.role not in ("user", "assistant"):
                raise Invalid("only user and assistant messages can be edited")
            self.check_idle(session)
            audit.detail = message.id
            regenerate = message.role == "user"
            agent = self.agents.get(session.agent_id)
            if regenerate:
                agent.usable()
                new_text = await self.check_input(
                    new_text, session, operator=operator, action="chat.session.edit", audit=audit
                )
                agent.has_room()
            message.content, message.edited_at_ms = new_text, now_ms()
            await self.sessions.edit(message)
            turn = Turn(session_id=session.id) if regenerate else None
            if turn is not None:
                session.message_count -= await self.sessions.count_after(session_id, seq)
                session.queued = turn.marker()
            session.version += 1
            await self.save(session, [], remove_after=seq if regenerate else None)
            audit.detail = message.id
            await self.ctx.bus.publish(
                "MESSAGE_EDITED",
                {
                    "session_id": session_id,
                    "message_id": message.id,
                    "message_event_id": message.event_id,
                    "operator": operator,
                },
                source="chat:control",
            )
            if turn is not None:
                self.agents.enqueue(agent, turn)
            return {"ok": True, "version": session.version, "regenerating": regenerate}

    # --- timeouts -------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1)
            try:
                await self.check_timeouts()
            except Exception:
                self.ctx.log.exception("chat timeout check failed")

    async def check_timeouts(self) -> None:
        now = now_ms()
        for session_id, _ in await self.sessions.due(now):
            async with self.lock(session_id):
                with contextlib.suppress(NotFound):
                    session = await self.sessions.get(session_id)
                    if session.state in TIMEOUTS and now >= session.last_active_at + DEFER_MS:
                        moves = [self.move(session, TIMEOUTS[session.state][1])]
                        await self.save(session, moves, reason="Timeout")
        limit = int(self.ctx.settings.get("chat.timeouts.processing_sec")) * 1000
        for agent in list(self.agents.by_id.values()):
            turn = agent.current
            if turn is not None and not turn.paused and now - turn.progress_at > limit:
                with contextlib.suppress(NotFound):
                    await self.interrupt(await self.sessions.get(turn.session_id), "timeout")

    # --- raw session events ---------------------------------------------------------------------

    def _observe(self, event: Event) -> None:
        payload = event.payload
        if not isinstance(payload, dict) or event.event_type in STREAMING:
            return
        session_id = payload.get("session_id")
        if payload.get("workflow_name") == "message-session":
            session_id = payload.get("instance_id")
        if not isinstance(session_id, str):
            return
        self._rows.append(
            (
                session_id,
                event.id,
                event.event_type,
                event.source,
                event.timestamp,
                json.dumps(payload, separators=(",", ":")),
            )
        )
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._write_events())

    async def settle_events(self) -> None:
        """Wait until every event observed so far is in ``chat_events`` (read-your-writes)."""
        rows, self._rows = self._rows, []
        written = self.sessions.record_events(rows) if rows else None
        self.sessions.release()
        if written is not None:
            await written
        if self._flush is not None and not self._flush.done():
            await asyncio.shield(self._flush)

    async def _write_events(self) -> None:
        await asyncio.sleep(0)  # one write for what the current loop turn published
        rows, self._rows = self._rows, []
        if rows:
            await self.sessions.record_events(rows)
