"""Skills: skill files, their registry, dispatch, search, history and hot reload (http-api §4;
formats §2).

Skills are loaded at phase 2 from ``skills.dir`` (default ``<runtime.dir>/skills``), reloaded by
``POST /skills/reload``, by rollback and by the directory watcher, always incrementally by
content hash (``registry.py``). Matching events run the skills' executors, which plugins
contribute with ``register_skill_executors`` (``dispatch.py``); the runner is offered to other
plugins (workflows) as :data:`sdk.SKILL_RUNNER`. ``/skills/search`` ranks with BM25 on an FTS5
index (``search.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import field, frozen

from sdk import (
    SKILL_CATALOG,
    SKILL_RUNNER,
    AuditNote,
    ConfigKey,
    ConfigRule,
    EventHandler,
    Migration,
    NotFound,
    PluginContext,
    Route,
    SkillInfo,
    StashKey,
    Unavailable,
    hookimpl,
)

from .dispatch import Dispatcher
from .loader import Skill
from .registry import MIGRATIONS, Registry, ReloadResult
from .search import hit_fields
from .watch import Watcher

__all__ = ["SKILLS", "Skills", "skills_dir"]

RELOAD_SOURCE = "skill:hot_reload"


class Skills:
    """The plugin's state: the registry, the dispatcher and the watcher."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.registry = Registry(ctx.store, skills_dir(ctx))
        self.dispatcher = Dispatcher(ctx, self.registry)
        self.watcher: Watcher | None = None

    async def start(self) -> None:
        await self.registry.open()
        result = await self.registry.reload()
        for failure in result.failed:
            self.ctx.log.warning("skill file %s: %s", failure["path"], failure["error"])
        self.ctx.log.info("%d skills loaded from %s", len(self.registry.skills), self.registry.root)
        self.sync_watcher()

    async def stop(self) -> None:
        await self.stop_watcher()
        await self.dispatcher.stop()
        self.registry.close()

    def sync_watcher(self) -> None:
        if self.watcher is None and self.ctx.settings.get("skills.hot_reload.enabled"):
            self.watcher = Watcher(
                self.registry.root,
                lambda: int(self.ctx.settings.get("skills.hot_reload.debounce_ms")),
                self.watched,
            )
            self.watcher.start()

    async def stop_watcher(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            await watcher.stop()

    async def watched(self) -> None:
        """The watcher saw changes: reload, then the event and the system audit record."""
        result = await self.registry.reload()
        await self.announce(result, audit=True)

    async def announce(self, result: ReloadResult, *, audit: bool) -> None:
        """``skill_reloaded`` when anything changed (and the watcher's system audit record)."""
        for failure in result.failed:
            self.ctx.log.warning("skill file %s: %s", failure["path"], failure["error"])
        if not result.changed:
            return
        with contextlib.suppress(Unavailable):
            await self.ctx.bus.publish(
                "skill_reloaded", result.payload(), source=RELOAD_SOURCE, delivery="at_most_once"
            )
        if audit:
            await self.ctx.audit.record(
                operator="system",
                action="skill.reload",
                target="skills",
                outcome="ok",
                detail=result.detail(),
            )

    async def move(self) -> None:
        """``skills.dir`` changed: load from the new directory (a full reload)."""
        await self.stop_watcher()
        async with self.registry.lock:
            self.registry.root = skills_dir(self.ctx)
            result = await self.registry._pass()
        await self.announce(result, audit=True)
        self.sync_watcher()

    def enabled(self) -> list[SkillInfo]:
        """The :data:`sdk.SKILL_CATALOG` view: enabled skills, sorted by name."""
        host = _host()
        return [
            SkillInfo(
                name=s.name,
                description=s.description,
                instructions=s.instructions,
                tags=s.tags,
                idle_prompts=s.idle_prompts,
                llm_visible=_visible(s, host),
            )
            for name, s in sorted(self.registry.skills.items())
            if self.registry.is_enabled(name)
        ]

    def snapshot(self, skill: Skill) -> dict[str, Any]:
        c = skill.concurrency
        return {
            "name": skill.name,
            "version": skill.version,
            "description": skill.description,
            "enabled": self.registry.is_enabled(skill.name),
            "concurrency": c if isinstance(c, str) else {"limited": c},
            "triggers": [t.snapshot() for t in skill.triggers],
            "keywords": list(skill.keywords),
            "tags": list(skill.tags),
            "category": skill.category,
            "format": skill.format,
            "path": skill.path,
            "llm_visible": skill.has_instructions and skill.llm_visible,
            "loaded_at_ms": self.registry.loaded_at.get(skill.name, 0),
        }

    def get(self, name: str) -> Skill:
        skill = self.registry.skills.get(name)
        if skill is None:
            raise NotFound(f"skill not found: {name}")
        return skill


SKILLS = StashKey[Skills]()


def skills_dir(ctx: PluginContext) -> Path:
    """``skills.dir`` (relative to the config file, D18), or ``<runtime.dir>/skills`` when unset."""
    if not ctx.settings.get("skills.dir"):
        return ctx.settings.resolve_path("runtime.dir") / "skills"
    return ctx.settings.resolve_path("skills.dir")


# --- hooks ------------------------------------------------------------------------------------


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey | ConfigRule]:
    return [
        ConfigKey(
            name="skills.dir",
            type=Path,
            default=None,
            doc="Skills directory (relative to the config file); unset: <runtime.dir>/skills.",
        ),
        ConfigKey(name="skills.hot_reload.enabled", type=bool, default=True, doc="Watch it."),
        ConfigKey(
            name="skills.hot_reload.debounce_ms",
            type=int,
            default=500,
            minimum=0,
            maximum=60_000,
            doc="Quiet time before a watcher reload.",
        ),
    ]


@hookimpl
def register_migrations(ctx: PluginContext) -> list[Migration]:
    return MIGRATIONS


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    skills = Skills(ctx)
    try:
        await skills.start()
    except BaseException:
        await skills.stop()
        raise
    ctx.stash[SKILLS] = skills
    ctx.stash[SKILL_RUNNER] = skills.dispatcher
    ctx.stash[SKILL_CATALOG] = skills


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    skills = ctx.stash.get(SKILLS)
    with contextlib.suppress(KeyError):
        del ctx.stash[SKILL_RUNNER]
        del ctx.stash[SKILL_CATALOG]
    if skills is not None:
        del ctx.stash[SKILLS]
        await skills.stop()


@hookimpl
def register_event_handlers(ctx: PluginContext) -> list[EventHandler]:
    return [EventHandler(name="skills", handler=ctx.stash[SKILLS].dispatcher.handle)]


@hookimpl
async def on_config_changed(ctx: PluginContext, changes: Mapping[str, Any]) -> None:
    skills = ctx.stash.get(SKILLS)
    if skills is None:
        return
    if "skills.dir" in changes and skills_dir(ctx) != skills.registry.root:
        await skills.move()
    elif "skills.hot_reload.enabled" in changes:
        if ctx.settings.get("skills.hot_reload.enabled"):
            skills.sync_watcher()
        else:
            await skills.stop_watcher()


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(method="GET", path="/skills", handler=list_skills, name="list_skills"),
        Route(method="GET", path="/llm-skills", handler=llm_skills, name="llm_skills"),
        Route(
            method="GET",
            path="/skills/search",
            handler=search_skills,
            name="search_skills",
            query=SearchQuery,
        ),
        Route(method="GET", path="/skill/{name}", handler=get_skill, name="get_skill"),
        Route(
            method="GET", path="/skill/{name}/content", handler=skill_content, name="skill_content"
        ),
        Route(
            method="POST",
            path="/skill/{name}/enable",
            handler=enable_skill,
            name="enable_skill",
            audit="skill.enable",
            target="skill:{name}",
        ),
        Route(
            method="POST",
            path="/skill/{name}/disable",
            handler=disable_skill,
            name="disable_skill",
            audit="skill.disable",
            target="skill:{name}",
        ),
        Route(
            method="GET",
            path="/skill/{name}/versions",
            handler=skill_versions,
            name="skill_versions",
        ),
        Route(
            method="POST",
            path="/skill/{name}/rollback",
            handler=rollback_skill,
            name="rollback_skill",
            body=RollbackIn,
            confirm=True,
            audit="skill.rollback",
            target="skill:{name}",
        ),
        Route(
            method="POST",
            path="/skills/reload",
            handler=reload_skills,
            name="reload_skills",
            audit="skills.reload",
            target="skills",
        ),
    ]


# --- handlers ---------------------------------------------------------------------------------


@frozen
class SearchQuery:
    q: str = ""
    limit: int = field(default=10, metadata={"clamp": (1, 100)})


@frozen
class RollbackIn:
    version: str


async def list_skills(ctx: PluginContext) -> dict[str, Any]:
    skills = ctx.stash[SKILLS]
    registry = skills.registry.skills
    return {"items": [skills.snapshot(registry[name]) for name in sorted(registry)]}


async def llm_skills(ctx: PluginContext) -> dict[str, Any]:
    skills = ctx.stash[SKILLS]
    host = _host()
    items = [
        {
            "name": s.name,
            "description": s.description,
            "category": s.category,
            "triggers": list(s.keywords),
        }
        for name, s in sorted(skills.registry.skills.items())
        if skills.registry.is_enabled(name) and _visible(s, host)
    ]
    return {"items": items}


def _visible(skill: Skill, host: tuple[str, set[str]]) -> bool:
    """Listed in ``/llm-skills`` and system prompts (formats §2.2)."""
    return (
        skill.has_instructions
        and skill.llm_visible
        and (not skill.platforms or host[0] in skill.platforms)
        and (not skill.environments or any(e in host[1] for e in skill.environments))
    )


def _host() -> tuple[str, set[str]]:
    """The host's platform name and environments (formats §2.2)."""
    platform = {"darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)
    environments = set()
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        environments.add("docker")
    if os.path.exists("/run/s6"):
        environments.add("s6")
    return ("linux" if platform.startswith("linux") else platform), environments


async def search_skills(ctx: PluginContext, query: SearchQuery) -> dict[str, Any]:
    q = query.q.strip().lower()
    if not q:
        return {"items": []}
    registry = ctx.stash[SKILLS].registry
    items = []
    for name, score in registry.index.search(q, query.limit):
        skill = registry.skills[name]
        matched, snippet = hit_fields(skill, q)
        items.append(
            {
                "name": name,
                "version": skill.version,
                "score": score,
                "snippet": snippet,
                "matched_field": matched,
            }
        )
    return {"items": items}


async def get_skill(ctx: PluginContext, name: str) -> dict[str, Any]:
    skills = ctx.stash[SKILLS]
    return skills.snapshot(skills.get(name))


async def skill_content(ctx: PluginContext, name: str) -> dict[str, Any]:
    skill = ctx.stash[SKILLS].get(name)
    return {
        "name": skill.name,
        "content": skill.instructions,
        "format": skill.format,
        "path": skill.path,
    }


async def enable_skill(ctx: PluginContext, name: str) -> dict[str, Any]:
    await ctx.stash[SKILLS].registry.set_enabled(name, True)
    return {"ok": True, "name": name, "enabled": True}


async def disable_skill(ctx: PluginContext, name: str) -> dict[str, Any]:
    await ctx.stash[SKILLS].registry.set_enabled(name, False)
    return {"ok": True, "name": name, "enabled": False}


async def skill_versions(ctx: PluginContext, name: str) -> dict[str, Any]:
    registry = ctx.stash[SKILLS].registry
    records = await registry.history(name)
    loaded = registry.skills.get(name)
    if not records and loaded is None:
        raise NotFound(f"skill not found: {name}")
    current = loaded.content_hash if loaded is not None else None
    items = []
    for record in records:
        is_current = record.content_hash == current
        if is_current:
            current = None  # only the newest record with that content is current
        items.append(
            {
                "version": record.version,
                "created_at_ms": record.created_at_ms,
                "content_hash": record.content_hash,
                "current": is_current,
            }
        )
    return {"items": items}


async def rollback_skill(
    ctx: PluginContext, name: str, body: RollbackIn, audit: AuditNote
) -> dict[str, Any]:
    skills = ctx.stash[SKILLS]
    result = await skills.registry.rollback(name, body.version)
    await skills.announce(result, audit=False)
    audit.detail = body.version
    return {
        "ok": True,
        "name": name,
        "version": body.version,
        "skill": skills.snapshot(skills.get(name)),
    }


async def reload_skills(ctx: PluginContext, audit: AuditNote) -> dict[str, Any]:
    skills = ctx.stash[SKILLS]
    result = await skills.registry.reload()
    await skills.announce(result, audit=False)
    audit.detail = result.detail()
    return {"ok": True, **result.payload()}
