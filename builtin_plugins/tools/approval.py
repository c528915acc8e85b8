"""Approval of agent tool calls (http-api §18.2): the policy table, the pending requests and
their answers.

Pending requests live in memory only. Each one is settled exactly once, by the operator's answer
(``/tool-auth/respond``), by its time limit or by the turn being stopped, and every settlement
publishes ``tool_auth_resolved``. The warning notification comes from the ``notifications``
plugin, which turns each ``tool_auth_required`` event into one (http-api §13).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from attrs import frozen

from sdk import NotFound, PluginContext, SdkError, Sensitivity, now_ms, uuid7

__all__ = ["ARGS_MAX", "SOURCE", "Approvals", "Pending", "args_digest", "redact"]

#: The event source of ``tool_auth_required`` and ``tool_auth_resolved`` (http-api §5.2).
SOURCE = "tool-auth"
#: Redacted arguments are cut to this many characters (http-api §18.2).
ARGS_MAX = 2000
#: The operator of settlements nobody answered (time limit, stopped turn).
SYSTEM = "system"
MASK = "[REDACTED]"
#: Lower-cased key fragments whose values are masked in approval requests.
SECRET_WORDS = ("token", "password", "passwd", "secret", "authorization", "cookie", "credential")

Ask = Literal["run", "once", "ask"]
Reason = Literal["answered", "timeout", "cancelled"]
#: How a call's approval ended: ``expired`` is no answer within the time limit.
Verdict = Literal["approved", "denied", "expired"]

#: ``security.tool_approval`` × sensitivity → run, ask once per session and arguments, or ask.
POLICY: dict[str, dict[Sensitivity, Ask]] = {
    "never": {"low": "run", "medium": "run", "high": "run"},
    "sensitive": {"low": "run", "medium": "once", "high": "ask"},
    "always": {"low": "ask", "medium": "ask", "high": "ask"},
}


def canonical(args: Mapping[str, Any]) -> str:
    """The canonical JSON text of an argument object: sorted keys, no spaces."""
    return json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def args_digest(args: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``args``: the approval cache key and the audit
    ``args_hash`` of ``/tools/{name}/execute``."""
    return hashlib.sha256(canonical(args).encode()).hexdigest()


def _secret(key: str) -> bool:
    word = key.lower().replace("-", "_")
    return word.endswith("key") or any(part in word for part in SECRET_WORDS)


def redact(value: Any) -> Any:
    """``value`` with the value of every secret-looking key masked, at any depth: a key whose
    lower-cased name contains token, password, passwd, secret, authorization, cookie or
    credential, or ends with ``key`` (``api_key``, ``x-api-key``, ``private_key``)."""
    if isinstance(value, Mapping):
        return {k: MASK if _secret(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


@frozen(kw_only=True)
class Pending:
    """A pending approval request as ``GET /tool-auth/pending`` lists it. ``args`` is the
    canonical JSON of the redacted arguments, cut to :data:`ARGS_MAX` characters."""

    auth_id: str
    session_id: str | None
    agent_id: str | None
    tool: str
    args: str
    sensitivity: Sensitivity
    created_at_ms: int
    expires_at_ms: int


class Approvals:
    """The approval registry of one running ``tools`` plugin."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self._waiting: dict[str, tuple[Pending, asyncio.Future[bool]]] = {}
        self._approved: set[tuple[str, str, str]] = set()  # (session, tool, args digest)

    def pending(self) -> list[Pending]:
        """The pending requests, oldest first."""
        return [pending for pending, _ in self._waiting.values()]

    async def approve(
        self,
        tool: str,
        args: Mapping[str, Any],
        sensitivity: Sensitivity,
        *,
        agent_id: str | None,
        session_id: str | None,
    ) -> Verdict:
        """Whether an agent's call may run: at once by the policy or the session's cache, else
        after asking the operator, who approves or denies; no answer in time and the request
        expires (the call does not run either). Cancellation propagates and settles the
        request ``cancelled``."""
        ask = POLICY[self._ctx.settings.get("security.tool_approval")][sensitivity]
        if ask == "run":
            return "approved"
        key = (session_id or "", tool, args_digest(args))
        if ask == "once" and session_id is not None and key in self._approved:
            return "approved"
        verdict = await self._ask(tool, args, sensitivity, agent_id, session_id)
        if verdict == "approved" and ask == "once" and session_id is not None:
            self._approved.add(key)
        return verdict

    async def _ask(
        self,
        tool: str,
        args: Mapping[str, Any],
        sensitivity: Sensitivity,
        agent_id: str | None,
        session_id: str | None,
    ) -> Verdict:
        timeout = int(self._ctx.settings.get("security.tool_approval_timeout_sec"))
        created = now_ms()
        pending = Pending(
            auth_id=uuid7(),
            session_id=session_id,
            agent_id=agent_id,
            tool=tool,
            args=canonical(redact(args))[:ARGS_MAX],
            sensitivity=sensitivity,
            created_at_ms=created,
            expires_at_ms=created + timeout * 1000,
        )
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[pending.auth_id] = (pending, answer)
        try:
            payload = self._ctx.converter.unstructure(pending)
            del payload["created_at_ms"]  # the event's fields (http-api §18.2)
            async with asyncio.timeout(timeout):  # until expires_at_ms
                await self._publish("tool_auth_required", payload, agent_id)
                return "approved" if await asyncio.shield(answer) else "denied"
        except TimeoutError:
            if self._settle(pending.auth_id, False) is None:  # answered at the last moment
                return "approved" if answer.result() else "denied"
            await self._resolved(pending, False, SYSTEM, "timeout")
            return "expired"
        except asyncio.CancelledError:
            if self._settle(pending.auth_id, False) is not None:
                await asyncio.shield(self._resolved(pending, False, SYSTEM, "cancelled"))
            raise

    async def respond(self, auth_id: str, approved: bool, *, operator: str) -> Pending:
        """Answer a pending request (``/tool-auth/respond``); an unknown, answered or expired
        id is :class:`~sdk.NotFound`."""
        pending = self._settle(auth_id, approved)
        if pending is None:
            raise NotFound("auth_id not found or already expired")
        await self._resolved(pending, approved, operator, "answered")
        return pending

    async def close(self) -> None:
        """Deny every pending request (the plugin stops): they end ``cancelled``."""
        for pending in self.pending():
            if self._settle(pending.auth_id, False) is not None:
                await self._resolved(pending, False, SYSTEM, "cancelled")

    def _settle(self, auth_id: str, approved: bool) -> Pending | None:
        """Remove the request and wake its waiter; ``None`` when it is no longer pending. Sync,
        so an answer and a time limit can never both settle one request."""
        entry = self._waiting.pop(auth_id, None)
        if entry is None:
            return None
        pending, answer = entry
        if not answer.done():
            answer.set_result(approved)
        return pending

    async def _resolved(
        self, pending: Pending, approved: bool, operator: str, reason: Reason
    ) -> None:
        payload = {
            "auth_id": pending.auth_id,
            "approved": approved,
            "operator": operator,
            "reason": reason,
        }
        await self._publish("tool_auth_resolved", payload, pending.agent_id)

    async def _publish(self, event_type: str, payload: Any, agent_id: str | None) -> None:
        try:
            await self._ctx.bus.publish(
                event_type,
                payload,
                source=SOURCE,
                delivery="at_least_once",
                agent_id=agent_id,
            )
        except SdkError as exc:  # refused under backpressure: the request itself stands
            self._ctx.log.warning("%s not published: %s", event_type, exc.message)
