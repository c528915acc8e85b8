"""Idle-run: one idle activity of an agent, now (http-api §16).

``POST /idle-run`` picks an enabled skill tagged ``idle_run`` and the requested tag among the
skills the agent may use, turns one of its idle prompts and its instructions into a message and
submits it to a chat session through the ``chat`` plugin's :data:`sdk.CHAT` service, which stores
it, publishes ``message_received`` (source ``idle.manual``) and queues the turn (§11.3).
"""

from __future__ import annotations

import random
import re
from typing import Any, Literal

from attrs import frozen

from sdk import CHAT, AuditNote, Invalid, NotFound, PluginContext, Route, SkillInfo, hookimpl

__all__ = ["RNG", "SYSTEM_STATES", "idle_message"]

#: The random source of skill and prompt choices; tests seed it (``RNG.seed(1)``).
RNG = random.Random()
SOURCE = "idle.manual"
TAG = re.compile(r"[a-z0-9_-]{1,32}")
WORK_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The agent's ``system_state`` during the turn, by tag (§16); other tags: ``waiting``.
SYSTEM_STATES = {
    "work": "working",
    "study": "studying",
    "prize": "prize",
    "internet": "daily_life",
    "entertainment": "daily_life",
    "fun": "daily_life",
}
TEMPLATE = (
    "[IDLE ACTION] {prompt}\n"
    "\n"
    "--- SKILL METHODOLOGY ---\n"
    "{instructions}\n"
    "--- END SKILL ---\n"
    "\n"
    "Execute the action above and report what you did."
)


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="POST",
            path="/idle-run",
            handler=idle_run,
            name="idle_run",
            body=IdleRunIn,
            audit="idle.run",
            target="agent",  # replaced by agent:<id> once the body is read
        )
    ]


@frozen
class IdleRunIn:
    tag: str | None = None
    agent_key: str | None = None
    background: bool = False
    project_key: str | None = None
    work_id: str | None = None
    skill_name: str | None = None


async def idle_run(
    ctx: PluginContext, body: IdleRunIn, operator: str, audit: AuditNote
) -> dict[str, Any]:
    """The steps and the error order of http-api §16."""
    chat = ctx.stash[CHAT]
    agent_id = body.agent_key or ctx.settings.get("chat.default_agent")
    audit.target = f"agent:{agent_id}"
    tag = _tag(body.tag)
    work_session = _work_session(agent_id, body.project_key, body.work_id)
    chat.usable(agent_id)
    skill = _pick(chat.skills_for(agent_id), tag, agent_id, body.skill_name)
    session_type: Literal["background", "persistent"] = (
        "background" if body.background else "persistent"
    )
    session_id = await chat.open_session(
        agent_id=agent_id, operator=operator, session_type=session_type, session_id=work_session
    )
    done = await chat.submit(
        session_id,
        idle_message(skill, agent_id),
        source=SOURCE,
        operator=operator,
        extra={
            "skill_name": skill.name,
            "tag": tag,
            "session_type": session_type,
            "background": body.background,
        },
        system_state=SYSTEM_STATES.get(tag, "waiting"),
        activity="idle_run",
        checks=False,
    )
    audit.detail = f"tag={tag} skill={skill.name} session={session_id}"
    return {
        "session_id": session_id,
        "skill_name": skill.name,
        "tag": tag,
        "background": body.background,
        "event_id": done.event_id,
    }


def idle_message(skill: SkillInfo, agent_id: str) -> str:
    """The message text of §16: a random idle prompt (the description when there is none) with
    ``{agent_id}`` replaced, and the skill's instructions."""
    prompt = RNG.choice(skill.idle_prompts) if skill.idle_prompts else skill.description
    return TEMPLATE.format(
        prompt=prompt.replace("{agent_id}", agent_id), instructions=skill.instructions
    )


def _tag(raw: str | None) -> str:
    if not raw:
        raise Invalid("missing 'tag' field")
    tag = raw.lower()
    if not TAG.fullmatch(tag):
        raise Invalid("field 'tag' must be 1-32 characters of a-z0-9_-")
    return tag


def _work_session(agent_id: str, project_key: str | None, work_id: str | None) -> str | None:
    """The work session id ``<agent>_<project_key>_<work_id>``, or None for a new session."""
    for name, value in (("project_key", project_key), ("work_id", work_id)):
        if value is not None and not WORK_KEY.fullmatch(value):
            raise Invalid(f"field '{name}' must be 1-64 characters of A-Za-z0-9_.-")
    if (project_key is None) != (work_id is None):
        raise Invalid("project_key and work_id must be given together")
    return None if project_key is None else f"{agent_id}_{project_key}_{work_id}"


def _pick(skills: list[SkillInfo], tag: str, agent_id: str, name: str | None) -> SkillInfo:
    candidates = [s for s in skills if "idle_run" in s.tags and tag in s.tags]
    if not candidates:
        raise NotFound(f"no idle-run skill tagged '{tag}' for agent {agent_id}")
    if name is None:
        return RNG.choice(candidates)
    chosen = next((s for s in candidates if s.name == name), None)
    if chosen is None:
        raise NotFound(f"skill not found: {name}")
    return chosen
