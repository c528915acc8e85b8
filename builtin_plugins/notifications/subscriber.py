"""The ``notifications`` subscriber: the events of http-api §13's table become notifications.

Backpressure has no event of its own, so a watcher reads the bus level once a second: L3 or
higher raises a warning at most once per 10 minutes, reaching L4B a critical one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sdk import Event, PluginContext, now_ms

from .store import Notifications

__all__ = ["EVENT_TYPES", "Subscriber"]

EVENT_TYPES: tuple[str, ...] = (
    "llm_error",
    "output_blocked",
    "injection_detected",
    "workflow_state_changed",
    "skill_reloaded",
    "dlq:enqueued",
    "plugin:quarantined",
    "tool_auth_required",
    "llm_backend_down",
    "llm_backend_degraded",
    "llm_backend_recovered",
    "secret_rotated",
    "agent:reply_ready",
    "gateway:ready",
)
#: Names of a workflow's error state the subscriber recognises (the event does not say which
#: state is the workflow's ``error_state``).
ERROR_STATES = frozenset({"ERROR", "FAILED"})
BACKPRESSURE_EVERY_MS = 10 * 60 * 1000
DLQ_EVERY_MS = 60 * 60 * 1000
WATCH_EVERY_SEC = 1.0
_HIGH_LEVELS = ("L3", "L4A", "L4B", "Critical")


def _payload(event: Event) -> dict[str, Any]:
    return event.payload if isinstance(event.payload, dict) else {}


def _provider(event: Event, payload: dict[str, Any]) -> str:
    provider = payload.get("provider")
    if provider:
        return str(provider)
    source = event.source or ""
    return source.split(":", 1)[1] if source.startswith("llm:") else source


class Subscriber:
    def __init__(self, notifications: Notifications, ctx: PluginContext) -> None:
        self.notifications = notifications
        self._ctx = ctx
        self.clock: Callable[[], int] = now_ms
        self._last_backpressure: int | None = None
        self._l4b = False
        self._dlq_last: dict[str, int] = {}
        self._dlq_pending: dict[str, int] = {}

    async def handle(self, event: Event) -> None:
        payload = _payload(event)
        raise_ = self._raise(event)
        kind = event.event_type
        if kind == "llm_error":
            session = payload.get("session_id")
            await raise_(
                "warning",
                "llm",
                "LLM call failed",
                f"agent {payload.get('agent_id')}: {payload.get('error')}",
                action=("Open session", f"/chat/{session}") if session else None,
            )
        elif kind == "output_blocked":
            await raise_(
                "warning",
                "security",
                "Reply blocked by output policy",
                f"Reason: {payload.get('reason')}",
            )
        elif kind == "injection_detected":
            await raise_(
                "critical",
                "security",
                "Prompt injection detected",
                f"Source: {payload.get('source') or event.source}, pattern: {payload.get('pattern')}",
            )
        elif kind == "workflow_state_changed":
            await self._workflow(event, payload)
        elif kind == "skill_reloaded":
            removed = payload.get("removed")
            names = removed if isinstance(removed, list) else []
            if len(names) >= 3:
                await raise_(
                    "warning",
                    "skill",
                    "Several skills were removed",
                    ", ".join(str(n) for n in names),
                )
        elif kind == "dlq:enqueued":
            await self._dead_lettered(event, payload)
        elif kind == "plugin:quarantined":
            await raise_(
                "critical",
                "plugin",
                "Plugin disabled after repeated failures",
                f"{payload.get('name')}: {payload.get('error', 'repeated failures')}",
            )
        elif kind == "tool_auth_required":
            session = payload.get("session_id")
            await raise_(
                "warning",
                "security",
                "Tool approval needed",
                f"{payload.get('agent_id')} wants to run {payload.get('tool')}",
                action=("Review", f"/chat/{session}") if session else None,
            )
        elif kind == "llm_backend_down":
            await raise_("critical", "llm", "LLM backend unavailable", _provider(event, payload))
        elif kind == "llm_backend_degraded":
            await raise_("warning", "llm", "LLM backend degraded", _provider(event, payload))
        elif kind == "llm_backend_recovered":
            await raise_("info", "gateway", "LLM backend recovered", _provider(event, payload))
        elif kind == "secret_rotated":
            await raise_("warning", "secret", "Secret rotated", str(payload.get("name")))
        elif kind == "gateway:ready":
            for plugin in self._ctx.plugins.list():
                if plugin.state == "failed":
                    await raise_(
                        "warning",
                        "plugin",
                        "Plugin failed to load",
                        f"{plugin.name}: {plugin.error}",
                    )
        elif kind == "agent:reply_ready" and payload.get("background") is True:
            await raise_(
                "info",
                "idle",
                f"{payload.get('agent_id')} finished a background task",
                str(payload.get("reply") or "")[:120],
            )

    def _raise(self, event: Event) -> Callable[..., Any]:
        async def raise_(
            severity: str,
            category: str,
            title: str,
            message: str,
            action: tuple[str, str] | None = None,
        ) -> str:
            label, route = action if action is not None else (None, None)
            return await self.notifications.create(
                severity=severity,
                category=category,
                title=title,
                message=message,
                source=event.source,
                action_label=label,
                action_route=route,
                event_id=event.id,
            )

        return raise_

    async def _workflow(self, event: Event, payload: dict[str, Any]) -> None:
        name, target = payload.get("workflow_name"), payload.get("to_state")
        raise_ = self._raise(event)
        if target == "CLOSED" and payload.get("reason") == "Timeout":
            await raise_(
                "warning",
                "workflow",
                "Session closed after a timeout",
                str(payload.get("instance_id")),
            )
        elif (
            name != "message-session"
            and target in ERROR_STATES
            and payload.get("from_state") != target
        ):
            await raise_(
                "warning",
                "workflow",
                "Workflow entered its error state",
                f"{name} {payload.get('instance_id')}",
            )

    async def _dead_lettered(self, event: Event, payload: dict[str, Any]) -> None:
        """At most one notification per failing subscriber per hour; the ones held back are
        counted into the next."""
        reason = str(payload.get("reason") or "")
        parts = reason.split(": ", 2)
        subscriber = (
            parts[1]
            if len(parts) >= 2
            and parts[0] in ("DeliveryFailed", "RetryQueueFull", "InterruptedDelivery")
            else (parts[0] or "unknown")
        )
        self._dlq_pending[subscriber] = self._dlq_pending.get(subscriber, 0) + 1
        now = self.clock()
        last = self._dlq_last.get(subscriber)
        if last is not None and now - last < DLQ_EVERY_MS:
            return
        count = self._dlq_pending.pop(subscriber)
        self._dlq_last[subscriber] = now
        await self._raise(event)(
            "warning",
            "dlq",
            "Events dead-lettered",
            f"{count} events failed for {subscriber}",
        )

    async def check_backpressure(self) -> None:
        level = self._ctx.bus.level
        if level == "L4B":
            if not self._l4b:
                self._l4b = True
                overflow = self._ctx.bus.stats().get("overflow_depth", "?")
                await self.notifications.create(
                    severity="critical",
                    category="backpressure",
                    title="Event overflow store nearly full",
                    message=f"overflow events: {overflow}",
                    source="event_bus",
                )
        else:
            self._l4b = False
        if level in _HIGH_LEVELS:
            now = self.clock()
            if (
                self._last_backpressure is None
                or now - self._last_backpressure >= BACKPRESSURE_EVERY_MS
            ):
                self._last_backpressure = now
                await self.notifications.create(
                    severity="warning",
                    category="backpressure",
                    title="Event bus under pressure",
                    message=f"level {level}",
                    source="event_bus",
                )

    async def watch(self) -> None:
        while True:
            try:
                await self.check_backpressure()
            except Exception:  # the next round tries again
                self._ctx.log.exception("backpressure check failed")
            await asyncio.sleep(WATCH_EVERY_SEC)
