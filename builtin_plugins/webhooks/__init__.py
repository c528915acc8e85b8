"""Webhooks: ``POST /webhook/{name}`` turns an authenticated request into an event.

Each enabled ``[sources.webhook.<name>]`` table is a push source ``webhook:<name>`` (trust
``untrusted``). A POST to ``/webhook/<name>`` (API token required, body up to
``http.max_body_bytes``) publishes ``event_type`` (default ``webhook_received``) with the payload
``{"name", "content_type", "body"}``, ``body`` being the parsed JSON for ``application/json`` and
the text otherwise, as an HTTP publish: ``at_least_once``, persisted before the answer, refused
with 503 under backpressure (L3 and above) and while the source is paused. Tables are live, as
for timers: a new one creates its source, a removed or disabled one shuts it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from collections.abc import Mapping
from typing import Any, Literal

from sdk import (
    AuditNote,
    ConfigKey,
    ConfigRule,
    Emit,
    EventSource,
    Invalid,
    NotFound,
    PluginContext,
    PublishResult,
    Request,
    Route,
    SdkError,
    StashKey,
    TrustLevel,
    Unavailable,
    hookimpl,
    source_id_taken,
    source_ids_free,
)

__all__ = ["WebhookSource", "Webhooks"]

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_EVENT_TYPE = "webhook_received"


def _check_event_type(value: Any, what: str) -> str | None:
    """Why ``value`` is not an event type (http-api §1.9), or None."""
    if not isinstance(value, str):
        return f"{what} must be a string"
    if (
        not value.strip()
        or len(value) > 128
        or value != value.strip()
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        return (
            f"{what} must be 1-128 characters without control characters or surrounding whitespace"
        )
    return None


class WebhookSource:
    """``webhook:<name>``: what the route delivers is emitted at once. Pausing needs no work of
    its own: the kernel refuses what a paused source emits, and the route answers 503."""

    kind = "webhook"
    mode: Literal["pull", "push"] = "push"
    trust_level: TrustLevel = "untrusted"

    def __init__(self, ctx: PluginContext, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self.id = f"webhook:{name}"
        self._ctx = ctx
        self._settings = dict(settings)
        self._emit: Emit | None = None

    def settings(self) -> Mapping[str, Any]:
        return copy.deepcopy(self._settings)

    async def start(self, emit: Emit) -> None:
        self._emit = emit

    async def stop(self) -> None:
        self._emit = None

    async def pause(self) -> None:
        pass

    async def resume(self) -> None:
        pass

    async def reconfigure(self, changes: Mapping[str, Any]) -> None:
        """``event_type`` is the one key; it is written back to ``aman.toml`` (as timers are)."""
        for key, value in changes.items():
            if key != "event_type":
                raise Invalid(f"unknown config key for source {self.id}: {key}")
            if reason := _check_event_type(value, "event_type"):
                raise Invalid(reason)
        if not changes:
            return
        old, self._settings = self._settings, {**self._settings, **changes}
        try:
            await self._ctx.settings.set(
                {f"sources.webhook.{self.name}.{k}": v for k, v in changes.items()},
                operator=f"source:{self.id}",
            )
        except BaseException:
            self._settings = old
            raise

    def apply(self, settings: Mapping[str, Any]) -> None:
        self._settings = dict(settings)

    async def deliver(self, content_type: str, body: Any) -> PublishResult:
        emit = self._emit
        if emit is None:
            raise Unavailable(f"source {self.id} is not running")
        payload = {"name": self.name, "content_type": content_type, "body": body}
        return await emit(
            self._settings["event_type"], payload, delivery="at_least_once", from_http=True
        )


class Webhooks:
    """The plugin's sources, kept in step with the configuration."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self.sources: dict[str, WebhookSource] = {}
        self._lock = asyncio.Lock()

    def wanted(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"event_type": table.get("event_type", DEFAULT_EVENT_TYPE)}
            for name, table in sorted(self._ctx.settings.table("sources.webhook").items())
            if isinstance(table, dict) and table.get("enabled", True) is not False
        }

    def create_all(self) -> list[EventSource]:
        self.sources = {
            name: WebhookSource(self._ctx, name, settings)
            for name, settings in self.wanted().items()
            if not source_id_taken(self._ctx, f"webhook:{name}")
        }
        return list(self.sources.values())

    async def sync(self) -> None:
        async with self._lock:
            wanted = self.wanted()
            for name in [n for n in self.sources if n not in wanted]:
                source = self.sources.pop(name)
                with contextlib.suppress(NotFound):
                    await self._ctx.sources.remove(source.id)
            for name, settings in wanted.items():
                existing = self.sources.get(name)
                if existing is not None:
                    existing.apply(settings)
                    continue
                source = WebhookSource(self._ctx, name, settings)
                try:
                    await self._ctx.sources.add(source)
                except SdkError as exc:  # another plugin's source has that id
                    self._ctx.log.error("cannot add source %s: %s", source.id, exc)
                    continue
                self.sources[name] = source


WEBHOOKS = StashKey[Webhooks]()


def _tables_valid(view: Any) -> str | None:
    for name, table in sorted(view.table("sources.webhook").items()):
        if not NAME.fullmatch(name):
            return f"invalid source name sources.webhook.{name}: 1-64 characters of A-Za-z0-9_.-"
        if "event_type" in table and (
            reason := _check_event_type(table["event_type"], f"sources.webhook.{name}.event_type")
        ):
            return reason
    return None


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey | ConfigRule]:
    return [
        ConfigKey(name="sources.webhook.*.event_type", type=str, default=DEFAULT_EVENT_TYPE),
        ConfigKey(name="sources.webhook.*.enabled", type=bool, default=True),
        ConfigRule(check=_tables_valid),
        source_ids_free(ctx.sources, ctx.name, ("webhook",)),
    ]


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    ctx.stash[WEBHOOKS] = Webhooks(ctx)


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    with contextlib.suppress(KeyError):
        del ctx.stash[WEBHOOKS]


@hookimpl
def register_sources(ctx: PluginContext) -> list[EventSource]:
    return ctx.stash[WEBHOOKS].create_all()


@hookimpl
async def on_config_changed(ctx: PluginContext, changes: Mapping[str, Any]) -> None:
    webhooks = ctx.stash.get(WEBHOOKS)
    if webhooks is not None:
        await webhooks.sync()


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="POST",
            path="/webhook/{name}",
            handler=receive,
            audit="webhook.receive",
            target="source:webhook:{name}",
        )
    ]


async def receive(
    ctx: PluginContext, name: str, request: Request, audit: AuditNote
) -> dict[str, Any]:
    webhooks = ctx.stash.get(WEBHOOKS)
    source = webhooks.sources.get(name) if webhooks is not None else None
    if source is None:
        raise NotFound(f"source not found: webhook:{name}")
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() == "application/json":
        body = request.json  # parsed by the kernel; an empty body is {} (http-api §1.5)
    else:
        try:
            body = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("webhook body must be JSON or UTF-8 text") from None
    result = await source.deliver(content_type, body)
    audit.detail = result.id if result.status == "queued" else f"{result.id} {result.status}"
    return {"ok": True, "id": result.id, "status": result.status}
