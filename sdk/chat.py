"""Chat sessions as other plugins see them (http-api §11): the ``message-session`` state machine
and the ``chat`` plugin's service for plugins that start turns (idle-run, explore, IM channels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from attrs import frozen

from .models import StashKey
from .services import SkillInfo

__all__ = [
    "CHAT",
    "SESSION_STATES",
    "SESSION_TIMEOUTS",
    "SESSION_TRANSITIONS",
    "Chat",
    "Submitted",
]

SESSION_STATES = ("ACTIVE", "PROCESSING", "IDLE", "ERROR", "RETRYING", "TIMEOUT", "CLOSED")

#: (from, event, to) of http-api §11.2.
SESSION_TRANSITIONS = (
    ("ACTIVE", "MESSAGE_RECEIVED", "PROCESSING"),
    ("ACTIVE", "SESSION_TIMEOUT", "TIMEOUT"),
    ("ACTIVE", "SESSION_CLOSE_CMD", "CLOSED"),
    ("PROCESSING", "LLM_REPLY_READY", "IDLE"),
    ("PROCESSING", "LLM_STREAM_DONE", "IDLE"),
    ("PROCESSING", "LLM_ERROR", "ERROR"),
    ("PROCESSING", "STREAM_TIMEOUT", "TIMEOUT"),
    ("PROCESSING", "SESSION_CLOSE_CMD", "CLOSED"),
    ("IDLE", "MESSAGE_RECEIVED", "PROCESSING"),
    ("IDLE", "SESSION_TIMEOUT", "TIMEOUT"),
    ("IDLE", "SESSION_END", "CLOSED"),
    ("IDLE", "SESSION_CLOSE_CMD", "CLOSED"),
    ("ERROR", "MESSAGE_RECEIVED", "PROCESSING"),
    ("ERROR", "RETRY_CMD", "RETRYING"),
    ("ERROR", "SESSION_END", "IDLE"),
    ("ERROR", "ABANDON_TIMEOUT", "CLOSED"),
    ("ERROR", "SESSION_CLOSE_CMD", "CLOSED"),
    ("RETRYING", "RETRY_STARTED", "PROCESSING"),
    ("RETRYING", "RETRY_FAILED", "ERROR"),
    ("RETRYING", "SESSION_CLOSE_CMD", "CLOSED"),
    ("TIMEOUT", "MESSAGE_RECEIVED", "IDLE"),
    ("TIMEOUT", "SESSION_RESET", "IDLE"),
    ("TIMEOUT", "SESSION_END", "CLOSED"),
    ("TIMEOUT", "SESSION_CLOSE_CMD", "CLOSED"),
    ("CLOSED", "MESSAGE_RECEIVED", "IDLE"),
)

#: (state, ``chat.timeouts.<key>``, default seconds, event fired) of http-api §11.2.
SESSION_TIMEOUTS = (
    ("ACTIVE", "active_sec", 300, "SESSION_TIMEOUT"),
    ("PROCESSING", "processing_sec", 120, "STREAM_TIMEOUT"),
    ("IDLE", "idle_sec", 600, "SESSION_TIMEOUT"),
    ("ERROR", "error_sec", 120, "ABANDON_TIMEOUT"),
    ("TIMEOUT", "timeout_sec", 120, "SESSION_END"),
)

SessionType = Literal["persistent", "background", "branch"]


@frozen(kw_only=True)
class Submitted:
    """A message accepted into a session: its ``message_received`` event, the stored message,
    the session's new version and whether the turn waits behind another."""

    event_id: str
    message_id: str
    version: int
    queued: bool


class Chat(Protocol):
    """The ``chat`` plugin's service under :data:`CHAT`."""

    def usable(self, agent_id: str) -> None:
        """Raise :class:`~sdk.NotFound` (``agent not found: <id>``) or :class:`~sdk.Conflict`
        (``agent <id> is disabled``) unless the agent can take a turn."""
        ...

    def skills_for(self, agent_id: str) -> list[SkillInfo]:
        """The enabled skills the agent may use (``agents.<id>.skills``), sorted by name."""
        ...

    async def open_session(
        self,
        *,
        agent_id: str,
        operator: str,
        session_type: SessionType = "persistent",
        session_id: str | None = None,
    ) -> str:
        """Create a session (``session:started``), or reuse ``session_id`` when it exists."""
        ...

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
        checks: bool = True,
    ) -> Submitted:
        """Run the input checks of http-api §11.4 (unless ``checks`` is false: texts the
        runtime composed itself, such as idle-run and cron prompts), store ``text`` as a user
        message, publish ``message_received`` from ``source`` (payload plus ``extra``) and queue
        a turn that runs with the agent's ``system_state``/``activity`` set as given."""
        ...

    async def post_reply(self, session_id: str, text: str, *, source: str) -> str:
        """Store an assistant message and publish ``agent:reply_ready`` from ``source`` with
        ``turns_processed: 0`` (pipelines such as explore); answer the message id."""
        ...

    def activity(
        self, agent_id: str, kind: str, session_id: str
    ) -> contextlib.AbstractContextManager[None]:
        """Show ``{"kind", "session_id", "since_ms"}`` as the agent's ``activity`` while the
        block runs: work outside the turn queue, such as an explore pipeline. A running turn's
        own activity shows instead while it runs."""
        ...


#: The chat plugin puts its :class:`Chat` here while it runs.
CHAT: StashKey[Chat] = StashKey()
