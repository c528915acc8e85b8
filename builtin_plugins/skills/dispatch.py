"""Running skills: the bus subscriber ``skills`` and the :class:`sdk.SkillRunner` of the stash.

For each event (except ``idle`` events and events from ``skill:`` sources) the dispatcher finds
the enabled skills whose triggers match and runs them in a task of its own, so a slow skill never
holds up the subscriber's queue: only the skill's own concurrency limit (``serial`` = one at a
time, ``{limited: N}`` = N at a time, ``parallel`` = no limit) makes executions wait. It publishes
``message:dispatch`` before and ``message:completed`` after (http-api §4, §5.2).

Not done yet: a ``message_received`` event addressed to an agent (``metadata.agent_id``) should
only run the skills that agent may use (``agents.<id>.skills``); agents do not exist yet, so
every matching skill runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sdk import Conflict, NotFound, Unavailable, cancel

if TYPE_CHECKING:
    from sdk import Event, PluginContext

    from .loader import Concurrency, Skill
    from .registry import Registry

__all__ = ["Dispatcher"]

log = logging.getLogger("aman.plugin.skills")
SOURCE = "skill:dispatcher"


class Dispatcher:
    """Runs skills with their executors under their concurrency limits."""

    def __init__(self, ctx: PluginContext, registry: Registry) -> None:
        self._ctx = ctx
        self._registry = registry
        self._limits: dict[str, tuple[Concurrency, asyncio.Semaphore | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.running: dict[str, int] = {}  # executions in progress by skill, for tests and metrics

    # --- the subscriber -------------------------------------------------------------------------

    async def handle(self, event: Event) -> None:
        if event.event_type == "idle" or event.source.startswith("skill:"):
            return
        skills = self._registry.matching(event)
        if not skills:
            return
        task = asyncio.get_running_loop().create_task(
            self._dispatch(event, skills), name=f"aman-skills-{event.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, event: Event, skills: list[Skill]) -> None:
        trace_id = event.metadata.trace_id
        await self._publish("message:dispatch", {"trace_id": trace_id}, event)
        executors = self.executors()
        outcomes = await asyncio.gather(
            *(self._execute(skill, event, executors) for skill in skills), return_exceptions=True
        )
        executed: list[str] = []
        failed: list[dict[str, str]] = []
        for skill, outcome in zip(skills, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                log.warning("skill %s failed on event %s: %r", skill.name, event.id, outcome)
                failed.append({"name": skill.name, "error": str(outcome) or type(outcome).__name__})
            else:
                executed.append(skill.name)
        await self._publish(
            "message:completed",
            {"trace_id": trace_id, "executed": executed, "failed": failed},
            event,
        )

    async def _publish(self, event_type: str, payload: dict[str, Any], cause: Event) -> None:
        try:
            await self._ctx.bus.publish(
                event_type,
                payload,
                source=SOURCE,
                delivery="at_most_once",
                trace_id=cause.metadata.trace_id,
                parent_event_id=cause.id,
            )
        except Unavailable as exc:  # backpressure: the skills ran all the same
            log.debug("%s not published: %s", event_type, exc)

    async def stop(self) -> None:
        tasks, self._tasks = set(self._tasks), set()
        await cancel(*tasks)

    # --- running one skill ----------------------------------------------------------------------

    def executors(self) -> dict[str, Callable[..., Any]]:
        """Executors by skill name from the running plugins; the first plugin in load order wins."""
        found: dict[str, Callable[..., Any]] = {}
        for contribution in self._ctx.plugins.contributions("register_skill_executors"):
            name, fn = contribution.item
            if name in found:
                log.warning(
                    "skill %s: executor of plugin %s ignored (one is registered already)",
                    name,
                    contribution.plugin,
                )
                continue
            found[name] = fn
        return found

    async def run(self, name: str, event: Event) -> None:
        """:class:`sdk.SkillRunner`: run one skill now, under its concurrency limit."""
        skill = self._registry.skills.get(name)
        if skill is None:
            raise NotFound(f"skill not found: {name}")
        if not self._registry.is_enabled(name):
            raise Conflict(f"skill is disabled: {name}")
        await self._execute(skill, event, self.executors())

    async def _execute(
        self, skill: Skill, event: Event, executors: dict[str, Callable[..., Any]]
    ) -> None:
        fn = executors.get(skill.name)
        limit = self._limit(skill)
        async with limit if limit is not None else contextlib.nullcontext():
            if fn is None:
                return  # declarative: succeeds without doing anything
            self.running[skill.name] = self.running.get(skill.name, 0) + 1
            try:
                if inspect.iscoroutinefunction(fn):
                    result = await fn(event)
                else:
                    result = await asyncio.to_thread(fn, event)
                if inspect.isawaitable(result):
                    await result
            finally:
                self.running[skill.name] -= 1

    def _limit(self, skill: Skill) -> asyncio.Semaphore | None:
        """The skill's semaphore; a changed concurrency gets a new one (running executions
        finish under the old one)."""
        found = self._limits.get(skill.name)
        if found is None or found[0] != skill.concurrency:
            c = skill.concurrency
            semaphore = (
                None if c == "parallel" else asyncio.Semaphore(1 if c == "serial" else int(c))
            )
            found = self._limits[skill.name] = (c, semaphore)
        return found[1]
