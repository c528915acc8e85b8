"""Chat: agents, chat sessions and the agent loop (http-api §11, §14; formats §1.4, §4.4).

- ``agents.py``: agents from ``[agents.<id>]``, their status and turn queue, the system prompt;
- ``store.py``: sessions, messages and raw session events in the runtime store;
- ``service.py``: the session state machine, input checks, control (stop, close, retry, edit),
  timeouts and crash recovery; the :data:`sdk.CHAT` and :data:`sdk.AGENTS` services;
- ``turns.py``: one turn — context, streaming LLM call, tool calls, output checks.

The LLM providers, tools, policies and souls come from other plugins through the stash
(``LLM``, ``TOOLS``, ``SOULS``, ``SKILL_CATALOG``) and ``register_policies``.
"""

from __future__ import annotations

from typing import Any, Literal

from attrs import field, frozen

from sdk import (
    AGENTS,
    CHAT,
    AuditNote,
    ConfigKey,
    ConfigRule,
    Conflict,
    EventHandler,
    Invalid,
    Migration,
    NotFound,
    PluginContext,
    Route,
    StashKey,
    hookimpl,
)
from sdk.chat import SESSION_TIMEOUTS

from .agents import AGENT_ID, RESERVED_IDS, STATUSES, agent_ids, skills_for, system_prompt
from .service import ChatService
from .store import MIGRATIONS

__all__ = ["CHAT_SERVICE", "ChatService"]

CHAT_SERVICE = StashKey[ChatService]()
IDLE_TAGS = ("work", "study", "fun", "prize")
#: Events after which agents are matched to the configuration and the running plugins again.
REFRESH_ON = (
    "gateway:ready",
    "config_changed",
    "plugin:enabled",
    "plugin:disabled",
    "plugin:installed",
    "plugin:uninstalled",
    "plugin:quarantined",
)


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey | ConfigRule]:
    agent = "agents.*."
    return [
        ConfigKey(name="chat.default_agent", type=str, default="aman"),
        ConfigKey(
            name="chat.max_message_chars", type=int, default=100_000, minimum=1, maximum=1_000_000
        ),
        ConfigKey(name="chat.max_turn_rounds", type=int, default=64, minimum=1, maximum=1000),
        *(
            ConfigKey(
                name=f"chat.timeouts.{key}",
                type=int,
                default=sec,
                minimum=1,
                maximum=86_400 if state == "PROCESSING" else 604_800,
            )
            for state, key, sec, _ in SESSION_TIMEOUTS
        ),
        ConfigKey(name=agent + "display_name", type=str, default=""),
        ConfigKey(name=agent + "provider", type=str, default=""),
        ConfigKey(name=agent + "model", type=str, default=""),
        ConfigKey(name=agent + "system_prompt_override", type=str, default=""),
        ConfigKey(name=agent + "enabled", type=bool, default=True),
        ConfigKey(name=agent + "tools.allow", type=list[str], default=None),
        ConfigKey(name=agent + "tools.deny", type=list[str], default=[]),
        ConfigKey(name=agent + "skills", type=list[str], default=None),
        ConfigKey(name=agent + "capabilities", type=list[str], default=[]),
        ConfigKey(name=agent + "queue_max_size", type=int, default=5, minimum=1, maximum=1000),
        ConfigKey(
            name=agent + "max_context_tokens",
            type=int,
            default=32_000,
            minimum=512,
            maximum=10_000_000,
        ),
        ConfigKey(
            name=agent + "max_output_tokens", type=int, default=4096, minimum=16, maximum=1_000_000
        ),
        ConfigKey(name=agent + "soul_path", type=str, default=""),
        ConfigRule(check=_agents_valid),
    ]


def _agents_valid(view: Any) -> str | None:
    """formats §1.3: agent ids, the default agent, providers and token budgets."""
    agents = view.table("agents")
    for agent_id, table in sorted(agents.items()):
        if not AGENT_ID.fullmatch(agent_id) or agent_id in RESERVED_IDS:
            return f"invalid agent id: {agent_id!r}"
        if not isinstance(table, dict):
            continue
        context = table.get("max_context_tokens", 32_000)
        output = table.get("max_output_tokens", 4096)
        if output >= context:
            return f"agents.{agent_id}.max_output_tokens must be less than max_context_tokens"
        provider = table.get("provider")
        providers = {"echo", *view.table("llm.providers")}
        if provider and provider not in providers:
            return f"agents.{agent_id}.provider names an unknown provider: {provider}"
    default = view.get("chat.default_agent")
    if default not in (sorted(agents) or ["aman"]):
        return f"chat.default_agent names an unknown agent: {default}"
    return None


@hookimpl
def register_migrations(ctx: PluginContext) -> list[Migration]:
    return MIGRATIONS


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    chat = ChatService(ctx)
    await chat.start()
    ctx.stash[CHAT_SERVICE] = chat
    ctx.stash[CHAT] = chat
    ctx.stash[AGENTS] = chat.agents


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    chat = ctx.stash.get(CHAT_SERVICE)
    for key in (CHAT_SERVICE, CHAT, AGENTS):
        if key in ctx.stash:
            del ctx.stash[key]
    if chat is not None:
        await chat.stop()


@hookimpl
def register_event_handlers(ctx: PluginContext) -> list[EventHandler]:
    async def handle(event: Any) -> None:
        await ctx.stash[CHAT_SERVICE].on_message(event)

    async def refresh(event: Any) -> None:
        ctx.stash[CHAT_SERVICE].agents.refresh()

    return [
        EventHandler(name="chat-inbox", handler=handle, event_types=("message_received",)),
        EventHandler(name="chat-agents", handler=refresh, event_types=REFRESH_ON),
    ]


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    s = "/chat/session/{id}"
    target = "session:{id}"
    return [
        Route(method="GET", path="/chat/sessions", handler=list_sessions, query=ListQuery),
        Route(
            method="POST",
            path="/chat/session/create",
            handler=create,
            body=CreateIn,
            audit="chat.session.create",
        ),
        Route(method="GET", path=s + "/state", handler=state, query=StateQuery),
        Route(method="GET", path=s + "/history", handler=history, query=HistoryQuery),
        Route(
            method="POST",
            path=s + "/send",
            handler=send,
            body=SendIn,
            audit="chat.send_message",
            target=target,
        ),
        Route(
            method="POST",
            path=s + "/close",
            handler=close,
            body=CloseIn,
            audit="chat.session.close",
            target=target,
        ),
        Route(
            method="POST", path=s + "/stop", handler=stop, audit="chat.session.stop", target=target
        ),
        Route(
            method="POST", path=s + "/kill", handler=kill, audit="chat.session.kill", target=target
        ),
        Route(
            method="POST",
            path=s + "/retry",
            handler=retry,
            audit="chat.session.retry",
            target=target,
        ),
        Route(
            method="POST",
            path=s + "/edit",
            handler=edit,
            body=EditIn,
            audit="chat.session.edit",
            target=target,
        ),
        Route(method="DELETE", path=s, handler=delete, audit="chat.session.delete", target=target),
        Route(method="GET", path="/agents", handler=list_agents),
        Route(method="GET", path="/agents/idle-availability", handler=idle_availability),
        Route(method="GET", path="/agent/{agent_id}", handler=get_agent),
        Route(
            method="POST",
            path="/agent/{agent_id}/status",
            handler=set_status,
            body=StatusIn,
            audit="agent.status",
            target="agent:{agent_id}",
        ),
        Route(
            method="POST",
            path="/agent/{agent_id}/reload",
            handler=reload,
            audit="agent.reload",
            target="agent:{agent_id}",
        ),
        Route(method="GET", path="/soul/system-prompt", handler=prompt, query=PromptQuery),
        Route(
            method="GET",
            path="/system-prompt",
            handler=prompt,
            query=PromptQuery,
            name="system_prompt_alias",
        ),
    ]


def _chat(ctx: PluginContext) -> ChatService:
    return ctx.stash[CHAT_SERVICE]


# --- sessions ------------------------------------------------------------------------------------


@frozen
class ListQuery:
    agent_id: str | None = None
    state: str | None = None
    limit: int = field(default=1000, metadata={"clamp": (1, 1000)})


async def list_sessions(ctx: PluginContext, query: ListQuery) -> dict[str, Any]:
    chat = _chat(ctx)
    found = await chat.sessions.list(agent_id=query.agent_id, state=query.state, limit=query.limit)
    return {"items": [chat.public(s) for s in found]}


@frozen
class CreateIn:
    session_type: Literal["persistent", "background", "branch"] = "persistent"
    agent_id: str | None = None
    parent_session_id: str | None = None
    branch_message_id: str | None = None


async def create(
    ctx: PluginContext, body: CreateIn, operator: str, audit: AuditNote
) -> dict[str, Any]:
    chat = _chat(ctx)
    agent_id = body.agent_id or ctx.settings.get("chat.default_agent")
    chat.agents.get(agent_id)
    audit.detail = body.session_type
    parent, copies = None, None
    if body.session_type == "branch":
        if body.parent_session_id is None:
            raise Invalid("missing required field 'parent_session_id'")
        parent = await chat.sessions.get(body.parent_session_id)
        copies = await chat.sessions.messages(parent.id)
        if body.branch_message_id is not None:
            await chat.sessions.find(parent.id, message_id=body.branch_message_id)
            ids = [m.id for m in copies]
            copies = copies[: ids.index(body.branch_message_id) + 1]
    session_id = await chat.open_session(
        agent_id=agent_id,
        operator=operator,
        session_type=body.session_type,
        parent=parent,
        copies=copies,
    )
    audit.target = f"session:{session_id}"
    return chat.public(await chat.sessions.get(session_id))


@frozen
class StateQuery:
    limit: int = field(default=200, metadata={"clamp": (1, 1000)})


async def state(ctx: PluginContext, id: str, query: StateQuery) -> dict[str, Any]:
    chat = _chat(ctx)
    session = await chat.sessions.get(id)
    messages = await chat.sessions.messages(id, limit=query.limit)
    await chat.settle_events()
    events = await chat.sessions.events(id, limit=query.limit)
    out = chat.public(session)
    del out["parent_session_id"]
    out.update(messages=[m.public() for m in messages], events=events)
    return out


@frozen
class HistoryQuery:
    limit: int = field(default=200, metadata={"clamp": (1, 1000)})
    before: str | None = None


async def history(ctx: PluginContext, id: str, query: HistoryQuery) -> dict[str, Any]:
    chat = _chat(ctx)
    await chat.sessions.get(id)
    before_seq, until = None, None
    if query.before is not None:
        before_seq, anchor = await chat.sessions.find(id, message_id=query.before)
        until = anchor.created_at_ms
    messages = await chat.sessions.messages(id, limit=query.limit + 1, before_seq=before_seq)
    has_more = len(messages) > query.limit
    messages = messages[-query.limit :]
    since = messages[0].created_at_ms if messages else None
    await chat.settle_events()
    events = await chat.sessions.events(id, since_ms=since, until_ms=until)
    return {"messages": [m.public() for m in messages], "events": events, "has_more": has_more}


@frozen
class SendIn:
    text: str
    expected_version: int | None = None


async def send(
    ctx: PluginContext, id: str, body: SendIn, operator: str, audit: AuditNote
) -> dict[str, Any]:
    chat = _chat(ctx)
    chat.check_text(body.text)
    done = await chat.submit(
        id,
        body.text,
        source="gateway:http",
        operator=operator,
        expected_version=body.expected_version,
        audit=audit,
    )
    return {
        "ok": True,
        "event_id": done.event_id,
        "message_id": done.message_id,
        "version": done.version,
        "queued": done.queued,
    }


@frozen
class CloseIn:
    reason: str = ""


async def close(
    ctx: PluginContext, id: str, body: CloseIn, operator: str, audit: AuditNote
) -> dict[str, Any]:
    audit.detail = body.reason
    return await _chat(ctx).close(id, body.reason, operator)


async def stop(ctx: PluginContext, id: str, operator: str) -> dict[str, Any]:
    chat = _chat(ctx)
    stopped, _ = await chat.interrupt(await chat.sessions.get(id), "stop")
    await ctx.bus.publish(
        "STOP_GENERATION", {"session_id": id, "operator": operator}, source="chat:control"
    )
    return {"ok": True, "stopped": stopped}


async def kill(ctx: PluginContext, id: str, operator: str, audit: AuditNote) -> dict[str, Any]:
    chat = _chat(ctx)
    session = await chat.sessions.get(id)
    _, turn = chat.running(id)
    _, killed = await chat.interrupt(session, "kill")
    audit.outcome = "aborted" if turn is not None else "no_task_found"
    audit.detail = f"killed_children:{killed}"
    await ctx.bus.publish(
        "SESSION_KILLED",
        {"session_id": id, "operator": operator, "killed_children": killed},
        source="chat:control",
    )
    return {"ok": True, "status": "killed" if turn is not None else "no_task"}


async def retry(ctx: PluginContext, id: str) -> dict[str, Any]:
    session = await _chat(ctx).regenerate(id, retry_cmd=True)
    return {"ok": True, "version": session.version}


@frozen
class EditIn:
    new_text: str
    message_id: str | None = None
    message_event_id: str | None = None
    expected_version: int | None = None


async def edit(
    ctx: PluginContext, id: str, body: EditIn, operator: str, audit: AuditNote
) -> dict[str, Any]:
    if body.message_id is None and body.message_event_id is None:
        raise Invalid("one of 'message_id' or 'message_event_id' is required")
    chat = _chat(ctx)
    chat.check_text(body.new_text)
    return await chat.edit(
        id,
        message_id=body.message_id,
        event_id=body.message_event_id,
        new_text=body.new_text,
        expected_version=body.expected_version,
        operator=operator,
        audit=audit,
    )


async def delete(ctx: PluginContext, id: str, operator: str, audit: AuditNote) -> dict[str, Any]:
    try:
        await _chat(ctx).delete(id, operator)
    except NotFound:
        audit.outcome = "not_found"
        raise
    return {"ok": True}


# --- agents --------------------------------------------------------------------------------------


async def list_agents(ctx: PluginContext) -> list[dict[str, Any]]:
    agents = _chat(ctx).agents
    return [agents.by_id[a].public() for a in agents.ids()]


async def get_agent(ctx: PluginContext, agent_id: str) -> dict[str, Any]:
    return _chat(ctx).agents.get(agent_id).public()


@frozen
class StatusIn:
    status: str


async def set_status(
    ctx: PluginContext, agent_id: str, body: StatusIn, audit: AuditNote
) -> dict[str, Any]:
    agents = _chat(ctx).agents
    agent = agents.get(agent_id)
    if body.status not in STATUSES:
        raise Invalid(
            f"invalid value for 'status': '{body.status}' (expected one of: {', '.join(STATUSES)})"
        )
    old = agents.set_status(agent, body.status)
    audit.detail = f"{old}->{agent.status}"
    if old != agent.status:
        await ctx.bus.publish(
            "agent:status_changed",
            {"agent_id": agent_id, "old_status": old, "new_status": agent.status},
            source=f"agent:{agent_id}",
        )
    return {"ok": True, "agent_id": agent_id, "old_status": old, "status": agent.status}


async def reload(ctx: PluginContext, agent_id: str) -> dict[str, Any]:
    """Re-read the agent's table of the config file (edited by hand maybe), then rebuild it."""
    agents = _chat(ctx).agents
    current = agents.by_id.get(agent_id)
    if current is not None and current.status == "Busy":
        raise Conflict(f"agent {agent_id} is busy")
    ctx.settings.reread(f"agents.{agent_id}")
    if agent_id not in agent_ids(ctx.settings):
        raise NotFound(f"agent not found in config: {agent_id}")
    agent = agents.load(agent_id)
    await ctx.bus.publish("agent:reloaded", {"agent_id": agent_id}, source=f"agent:{agent_id}")
    return {"ok": True, "agent_id": agent_id, "status": agent.status}


async def idle_availability(ctx: PluginContext) -> dict[str, Any]:
    agents = _chat(ctx).agents
    out = {}
    for agent_id in agents.ids():
        skills = [
            s for s in skills_for(ctx, agents.by_id[agent_id].descriptor) if "idle_run" in s.tags
        ]
        out[agent_id] = {tag: any(tag in s.tags for s in skills) for tag in IDLE_TAGS}
    return {"agents": out}


@frozen
class PromptQuery:
    agent_id: str | None = None


async def prompt(ctx: PluginContext, query: PromptQuery) -> dict[str, Any]:
    agent_id = query.agent_id or ctx.settings.get("chat.default_agent")
    agent = _chat(ctx).agents.get(agent_id)
    text, source = system_prompt(ctx, agent.descriptor)
    if source is None:
        raise NotFound("no soul configured")
    return {"system_prompt": text, "agent_id": agent_id, "source": source}
