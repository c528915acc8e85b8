"""One agent turn: think → act → observe (http-api §11.3).

The context is the system prompt and the session's messages within the token budget; the reply
streams as ``agent:reply_chunk`` events; tool calls go through the agent's allow/deny lists and
the tools plugin (guards, approval, time limit); the final text passes the output policies.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

from sdk import (
    LLM,
    TOOLS,
    ChatMessage,
    LlmError,
    LlmRequest,
    NotFound,
    OutputPolicy,
    OutputVerdict,
    SkillInfo,
    TextInput,
    ToolCall,
    uuid7,
)

from .agents import Agent, Turn, skills_for, system_prompt, tools_for
from .service import Carrier, ChatService
from .store import Message, Session, new_message

__all__ = ["context", "run_turn"]

TOOL_RESULT_CHARS = 4000
OUTPUT_CHECK_SEC = 2.0
SLASH = re.compile(r"/(\S+)(?:\s|$)")
#: How an interrupted turn leaves the session (http-api §11.3 step 8, §11.2).
TIMEOUT_NOTICE = "The reply was abandoned: no progress for {limit} s."
INTERRUPT_MOVES = {
    "stop": ("LLM_REPLY_READY",),
    "kill": ("LLM_REPLY_READY",),
    "shutdown": ("LLM_REPLY_READY",),
    "close": ("SESSION_CLOSE_CMD",),
    "timeout": ("STREAM_TIMEOUT", "SESSION_RESET"),
}


class TurnFailed(Exception):
    """The turn fails with this reason (a provider error, a failed output check)."""

    def __init__(self, reason: str, *, provider: str | None = None) -> None:
        super().__init__(reason)
        self.provider = provider


async def run_turn(chat: ChatService, agent: Agent, turn: Turn) -> None:
    """Run one turn of ``agent`` for ``turn.session_id`` to its end, whatever happens."""
    ctx = chat.ctx
    async with chat.lock(turn.session_id):
        try:
            session = await chat.sessions.get(turn.session_id)
        except NotFound:
            return  # deleted while it waited
        events = ["RETRY_STARTED"] if turn.retry else ["MESSAGE_RECEIVED"]
        if session.state in ("TIMEOUT", "CLOSED"):
            events.append("MESSAGE_RECEIVED")
        moves = [chat.move(session, e) for e in events]
        session.turns += 1
        session.queued = agent.marker(session.id)  # another turn of the session may still wait
        await chat.save(session, moves)
    ids = {"agent_id": agent.agent_id, "session_id": session.id}
    message_id, source = uuid7(), f"agent:{agent.agent_id}"
    stream_ids = {**ids, "message_id": message_id, "turn": session.turns}
    await ctx.bus.publish("agent:reply_stream_start", stream_ids, source=source)
    partial: list[str] = []
    try:
        reply = await _think(chat, agent, turn, session, stream_ids, partial)
        reply = await _check_output(chat, agent, session, reply)
    except asyncio.CancelledError:
        await _interrupted(chat, agent, turn, session, message_id, "".join(partial))
        return
    except Exception as exc:  # noqa: BLE001 - every failure ends the turn in ERROR (§11.3 step 7)
        await _failed(chat, agent, session, exc)
        return
    done = {**stream_ids, "finish_reason": "stop"}
    await ctx.bus.publish("agent:reply_stream_done", done, source=source)
    message = new_message(session.id, "assistant", reply)
    ready = Carrier(
        event_type="agent:reply_ready",
        payload={
            **ids,
            "message_id": message.id,
            "reply": reply,
            "background": session.session_type == "background",
            "turns_processed": 1,
        },
        options={"source": source, "delivery": "at_least_once", "agent_id": agent.agent_id},
        bind=(message,),
    )
    await _finish(chat, session, ("LLM_REPLY_READY",), [message], carrier=ready)


async def _think(
    chat: ChatService,
    agent: Agent,
    turn: Turn,
    session: Session,
    stream_ids: dict[str, Any],
    partial: list[str],
) -> str:
    """The LLM ↔ tools loop; answer the final text."""
    ctx, descriptor = chat.ctx, agent.descriptor
    llm = ctx.stash.get(LLM)
    if llm is None:
        raise TurnFailed("the llm plugin is not running", provider=descriptor.provider)
    budget = descriptor.max_context_tokens - descriptor.max_output_tokens
    stored = await chat.sessions.recent(session.id, chars=budget * 4)
    skill = _slash_skill(chat, agent, stored)
    prompt, _ = system_prompt(ctx, descriptor, skill=skill)
    messages = [
        ChatMessage(role="system", content=prompt),
        *context(stored, budget - tokens(prompt)),
    ]
    tools = [t.spec for t in tools_for(ctx, descriptor)]
    source = f"agent:{agent.agent_id}"
    rounds = ctx.settings.get("chat.max_turn_rounds")
    for _ in range(rounds):
        request = LlmRequest(
            model=descriptor.model,
            messages=messages,
            tools=tools,
            max_tokens=descriptor.max_output_tokens,
        )
        partial.clear()
        calls: tuple[ToolCall, ...] = ()
        try:
            async for delta in llm.stream(descriptor.provider, request):
                if delta.text:
                    partial.append(delta.text)
                    turn.progress()
                    await ctx.bus.publish(
                        "agent:reply_chunk", {**stream_ids, "delta": delta.text}, source=source
                    )
                calls = delta.tool_calls or calls
        except LlmError as exc:
            raise TurnFailed(str(exc), provider=descriptor.provider) from exc
        text = "".join(partial)
        if not calls:
            if not text.strip():  # nothing to show: a failed turn that /retry can redo
                raise TurnFailed("the model returned an empty reply", provider=descriptor.provider)
            return text
        messages.append(ChatMessage(role="assistant", content=text, tool_calls=calls))
        for call in calls:
            result = await _act(chat, agent, turn, session, call)
            messages.append(
                ChatMessage(role="tool", content=result, tool_call_id=call.id, name=call.name)
            )
    return f"[max {rounds} rounds reached — send a new message to continue]"


async def _act(
    chat: ChatService, agent: Agent, turn: Turn, session: Session, call: ToolCall
) -> str:
    """Run one tool call; store and answer its result (or refusal) as compact JSON text."""
    ctx = chat.ctx
    toolbox = ctx.stash.get(TOOLS)
    if not agent.descriptor.may_use_tool(call.name):
        text = (
            f"permission_denied: agent '{agent.agent_id}' is not allowed to use tool '{call.name}'"
        )
    elif toolbox is None:
        text = f"tool not found: {call.name}"
    else:
        turn.paused = True
        try:
            outcome = await toolbox.call(
                call.name,
                call.arguments,
                origin="agent",
                source=f"agent:{agent.agent_id}",
                agent_id=agent.agent_id,
                session_id=session.id,
                processes=turn.processes,
            )
        finally:
            turn.paused = False
            turn.progress()
        text = _compact(outcome.output) if outcome.ok else outcome.error
    text = text[:TOOL_RESULT_CHARS]
    message = new_message(
        session.id,
        "tool",
        text,
        tool_name=call.name,
        tool_call_id=call.id,
        tool_args=_compact(dict(call.arguments)),
    )
    await chat.sessions.add([message])
    return text


async def _check_output(chat: ChatService, agent: Agent, session: Session, reply: str) -> str:
    """The output policies (http-api §11.4), in order, within 2 s; the first match replaces the
    reply and publishes ``output_blocked``. A failing or slow check fails the turn."""
    ctx = chat.ctx
    policies = sorted(
        (
            c.item
            for c in ctx.plugins.contributions("register_policies")
            if isinstance(c.item, OutputPolicy)
        ),
        key=lambda p: p.order,
    )
    if not policies:
        return reply
    item = TextInput(text=reply, agent_id=agent.agent_id, session_id=session.id)
    try:
        async with asyncio.timeout(OUTPUT_CHECK_SEC):  # one worker thread for all the checks
            found = await asyncio.to_thread(_first_verdict, policies, item)
    except TimeoutError as exc:
        raise TurnFailed("output checks timed out") from exc
    if found is None:
        return reply
    await ctx.bus.publish(
        "output_blocked",
        {"agent_id": agent.agent_id, "session_id": session.id, "reason": found.reason},
        source=f"agent:{agent.agent_id}",
    )
    return found.replacement


def _first_verdict(policies: list[OutputPolicy], item: TextInput) -> OutputVerdict | None:
    for policy in policies:
        try:
            verdict = policy.check(item)
        except Exception as exc:  # fail closed
            raise TurnFailed(f"output check {policy.name} failed: {exc}") from exc
        if verdict is not None:
            return verdict
    return None


async def _failed(chat: ChatService, agent: Agent, session: Session, exc: BaseException) -> None:
    ctx, source = chat.ctx, f"agent:{agent.agent_id}"
    reason = str(exc) or type(exc).__name__
    if not isinstance(exc, TurnFailed):
        ctx.log.exception("turn of session %s failed", session.id, exc_info=exc)
    ids = {"agent_id": agent.agent_id, "session_id": session.id, "error": reason}
    await ctx.bus.publish("agent:reply_stream_error", ids, source=source, delivery="at_least_once")
    if isinstance(exc, TurnFailed) and exc.provider is not None:
        await ctx.bus.publish(
            "llm_error",
            {**ids, "provider": exc.provider},
            source=source,
            delivery="at_least_once",
        )
    notice = new_message(session.id, "system", f"The reply failed: {reason}")
    await _finish(chat, session, ("LLM_ERROR",), [notice], count=False)


async def _interrupted(
    chat: ChatService, agent: Agent, turn: Turn, session: Session, message_id: str, text: str
) -> None:
    why = turn.stop or "shutdown"
    add = []
    if text and why != "kill":
        add.append(new_message(session.id, "assistant", text, interrupted=True))
        await chat.ctx.bus.publish(
            "agent:reply_interrupted",
            {
                "agent_id": agent.agent_id,
                "session_id": session.id,
                "message_id": message_id,
                "partial_reply": text,
            },
            source=f"agent:{agent.agent_id}",
        )
    if why == "timeout":  # the history says why the message has no reply
        limit = chat.ctx.settings.get("chat.timeouts.processing_sec")
        add.append(new_message(session.id, "system", TIMEOUT_NOTICE.format(limit=limit)))
    await _finish(chat, session, INTERRUPT_MOVES.get(why, ("LLM_REPLY_READY",)), add)


async def _finish(
    chat: ChatService,
    session: Session,
    events: tuple[str, ...],
    add: list[Message],
    *,
    count: bool = True,
    carrier: Carrier | None = None,
) -> None:
    async with chat.lock(session.id):
        try:
            current = await chat.sessions.get(session.id)
        except NotFound:
            return
        moves = [chat.move(current, e) for e in events]
        if count:
            current.message_count += sum(1 for m in add if m.counted)
        reason = "Timeout" if "STREAM_TIMEOUT" in events else "Event"
        await chat.save(current, moves, add=add, reason=reason, carrier=carrier)


# --- context (§11.3 step 2) ---------------------------------------------------------------------


def tokens(text: str) -> int:
    """The estimate of http-api §11.3: characters ÷ 4, rounded up."""
    return math.ceil(len(text) / 4)


def context(stored: list[Message], budget: int) -> list[ChatMessage]:
    """The session's user, assistant and tool messages, oldest first, as the model sees them,
    dropping the oldest until they fit ``budget``; the newest user message is always kept.
    Tool results are preceded by the assistant tool call they answer."""
    groups: list[list[ChatMessage]] = []
    cost: list[int] = []  # tokens per group
    for m in stored:
        if m.role == "tool":
            call = ToolCall(
                id=m.tool_call_id or m.id,
                name=m.tool_name or "",
                arguments=json.loads(m.tool_args or "{}"),
            )
            result = ChatMessage(
                role="tool", content=m.content, tool_call_id=call.id, name=call.name
            )
            last = groups[-1] if groups else None
            if (
                last
                and last[0].role == "assistant"
                and last[0].tool_calls
                and last[-1].role == "tool"
            ):
                last[0] = ChatMessage(
                    role="assistant", content="", tool_calls=(*last[0].tool_calls, call)
                )
                last.append(result)
                cost[-1] += tokens(m.content)
            else:
                groups.append(
                    [ChatMessage(role="assistant", content="", tool_calls=(call,)), result]
                )
                cost.append(tokens(m.content))
        elif m.role in ("user", "assistant"):
            groups.append([m.said()])
            cost.append(tokens(m.content))
    newest_user = next(
        (i for i in range(len(groups) - 1, -1, -1) if groups[i][0].role == "user"), -1
    )
    total, start = sum(cost), 0
    while total > budget and start < newest_user:
        total -= cost[start]
        start += 1
    return [m for g in groups[start:] for m in g]


def _slash_skill(chat: ChatService, agent: Agent, stored: list[Message]) -> SkillInfo | None:
    """A newest user message ``/<skill> ...`` naming a skill the agent may use (§11.3)."""
    user = next((m for m in reversed(stored) if m.role == "user"), None)
    found = SLASH.match(user.content) if user is not None else None
    if found is None:
        return None
    return next(
        (
            s
            for s in skills_for(chat.ctx, agent.descriptor)
            if s.name == found.group(1) and s.llm_visible
        ),
        None,
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
