"""Workflows: state machine definitions and their instances (http-api §8, formats §3).

Definitions come from the built-in ``message-session``, from plugins (``register_workflows``) and
from the YAML files of ``workflows.dir``; ``definition.py`` reads and validates them. The engine
(``engine.py``) keeps instances in the runtime store, moves them on events, retries and timeouts,
and publishes ``workflow_state_changed`` for every transition.

Besides the HTTP endpoints, bus events drive instances (docs/decisions.md): an event of type
``workflow:event`` with the payload ``{"workflow_instance_id": <id>, "event": <name>, ...}`` is fed
to that instance; guards and actions see the whole event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import field, frozen

from sdk import (
    AuditNote,
    ConfigKey,
    Conflict,
    Event,
    EventHandler,
    Invalid,
    Migration,
    NotFound,
    PluginContext,
    Route,
    StashKey,
    hookimpl,
)

from .definition import MESSAGE_SESSION
from .engine import MIGRATIONS, Engine, TransitionResult, WorkflowInstance

__all__ = ["BUS_EVENT", "ENGINE"]

ENGINE = StashKey[Engine]()
#: The bus event type that drives an instance.
BUS_EVENT = "workflow:event"
EVENT_MAX = 128


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey]:
    return [
        ConfigKey(
            name="workflows.dir",
            type=Path,
            default="workflows",
            restart=True,
            doc="Workflow YAML files (relative to runtime.dir).",
        ),
        ConfigKey(
            name="workflows.timeout_poll_ms",
            type=int,
            default=1000,
            minimum=100,
            maximum=60_000,
            doc="Timeout poller period.",
        ),
        ConfigKey(
            name="workflows.timeout_defer_ms",
            type=int,
            default=5000,
            minimum=0,
            maximum=600_000,
            doc="No timeout this soon after an event.",
        ),
        ConfigKey(
            name="workflows.action_timeout_sec",
            type=int,
            default=60,
            minimum=1,
            maximum=3600,
            doc="Limit for a transition action.",
        ),
    ]


@hookimpl
def register_migrations(ctx: PluginContext) -> list[Migration]:
    return MIGRATIONS


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    engine = Engine(ctx)
    ctx.stash[ENGINE] = engine
    await engine.start()


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    engine = ctx.stash.get(ENGINE)
    if engine is not None:
        await engine.stop()
        del ctx.stash[ENGINE]


@hookimpl
def register_event_handlers(ctx: PluginContext) -> list[EventHandler]:
    async def handle(event: Event) -> None:
        await on_bus_event(ctx, event)

    return [EventHandler(name="workflows", handler=handle, event_types=(BUS_EVENT,))]


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    instance = "workflow-instance:{instance_id}"
    return [
        Route(method="GET", path="/workflows", handler=list_workflows, name="list_workflows"),
        Route(method="GET", path="/workflow/{name}", handler=get_workflow, name="get_workflow"),
        Route(
            method="POST",
            path="/workflow/{name}/create",
            handler=create_instance,
            name="create_instance",
            body=CreateIn,
            audit="workflow.create",
            target="workflow:{name}",
        ),
        Route(
            method="GET",
            path="/workflow-instances",
            handler=list_instances,
            name="list_instances",
            query=InstancesQuery,
        ),
        Route(
            method="GET",
            path="/workflow-instance/{instance_id}",
            handler=get_instance,
            name="get_instance",
        ),
        Route(
            method="POST",
            path="/workflow-instance/{instance_id}/event",
            handler=send_event,
            name="send_event",
            body=EventIn,
            audit="workflow.event",
            target=instance,
        ),
        Route(
            method="POST",
            path="/workflow-instance/{instance_id}/retry",
            handler=retry_instance,
            name="retry_instance",
            confirm=True,
            audit="workflow.retry",
            target=instance,
        ),
        Route(
            method="POST",
            path="/workflow-instance/{instance_id}/cancel",
            handler=cancel_instance,
            name="cancel_instance",
            confirm=True,
            audit="workflow.cancel",
            target=instance,
        ),
    ]


# --- bodies and queries --------------------------------------------------------------------------


@frozen
class CreateIn:
    data: Any = None


@frozen
class EventIn:
    event: str
    payload: dict[str, Any] = field(factory=dict)


@frozen
class InstancesQuery:
    workflow: str | None = None
    state: str | None = None
    limit: int = field(default=1000, metadata={"clamp": (1, 1000)})


# --- handlers ------------------------------------------------------------------------------------


def _engine(ctx: PluginContext) -> Engine:
    return ctx.stash[ENGINE]


async def list_workflows(ctx: PluginContext) -> dict[str, list[str]]:
    return {"items": sorted(d.name for d in _engine(ctx).definitions().values())}


async def get_workflow(ctx: PluginContext, name: str) -> dict[str, Any]:
    return _engine(ctx).definition(name).describe()


async def create_instance(
    ctx: PluginContext, name: str, body: CreateIn, audit: AuditNote
) -> WorkflowInstance:
    engine = _engine(ctx)
    if engine.definition(name).name == MESSAGE_SESSION:
        raise Invalid("use POST /chat/session/create to create chat sessions")
    inst = await engine.create(name, body.data)
    audit.detail = inst.id
    return inst.public()


async def list_instances(ctx: PluginContext, query: InstancesQuery) -> dict[str, Any]:
    items = await _engine(ctx).list(workflow=query.workflow, state=query.state, limit=query.limit)
    return {"items": [inst.public() for inst in items]}


async def get_instance(ctx: PluginContext, instance_id: str) -> WorkflowInstance:
    return (await _engine(ctx).get(instance_id)).public()


async def _controllable(engine: Engine, instance_id: str) -> None:
    """404 for an unknown instance, 409 for a chat session."""
    inst = await engine.get(instance_id)
    if inst.workflow_name.casefold() == MESSAGE_SESSION:
        raise Conflict(f"chat sessions are controlled through /chat/session/{instance_id}/…")


def _detail(result: TransitionResult) -> str:
    return f"{result.from_state}->{result.to_state}"


async def send_event(
    ctx: PluginContext, instance_id: str, body: EventIn, operator: str, audit: AuditNote
) -> TransitionResult:
    name = body.event.strip().upper()
    if not 1 <= len(body.event) <= EVENT_MAX or not name:
        raise Invalid(f"field 'event' must be between 1 and {EVENT_MAX} characters")
    if name in ("RETRY", "CANCEL"):
        raise Invalid(
            f"use POST /workflow-instance/{instance_id}/retry or /cancel for RETRY and CANCEL"
        )
    engine = _engine(ctx)
    await _controllable(engine, instance_id)
    event = engine.control_event(name, {**body.payload, "operator": operator})
    result = await engine.send(instance_id, name, event=event)
    audit.detail = f"{name} {_detail(result)}"
    return result


async def retry_instance(
    ctx: PluginContext, instance_id: str, audit: AuditNote
) -> TransitionResult:
    engine = _engine(ctx)
    await _controllable(engine, instance_id)
    result = await engine.retry(instance_id)
    audit.detail = _detail(result)
    return result


async def cancel_instance(
    ctx: PluginContext, instance_id: str, operator: str, audit: AuditNote
) -> TransitionResult:
    engine = _engine(ctx)
    await _controllable(engine, instance_id)
    event = engine.control_event("CANCEL", {"operator": operator})
    result = await engine.send(instance_id, "CANCEL", event=event)
    audit.detail = _detail(result)
    return result


# --- bus events ----------------------------------------------------------------------------------


async def on_bus_event(ctx: PluginContext, event: Event) -> None:
    """Feed a ``workflow:event`` to the instance its payload names. Events that cannot be taken
    (malformed, unknown instance, chat session, final state, no transition) are logged and
    dropped; RETRY and CANCEL need a trusted source (over HTTP they need confirmation)."""
    payload = event.payload
    engine = ctx.stash.get(ENGINE)
    if engine is None:
        return
    if not (
        isinstance(payload, dict)
        and isinstance(payload.get("workflow_instance_id"), str)
        and isinstance(payload.get("event"), str)
        and 1 <= len(payload["event"].strip()) <= EVENT_MAX
    ):
        ctx.log.info("malformed %s event %s ignored", BUS_EVENT, event.id)
        return
    instance_id, name = payload["workflow_instance_id"], payload["event"].strip().upper()
    if name in ("RETRY", "CANCEL") and event.trust_level != "trusted":
        ctx.log.info("ignored %s for workflow instance %s from %s", name, instance_id, event.source)
        return
    try:
        await _controllable(engine, instance_id)
        await engine.send(instance_id, name, event=event)
    except (NotFound, Conflict) as exc:
        ctx.log.info("event %s not taken by workflow instance %s: %s", event.id, instance_id, exc)
