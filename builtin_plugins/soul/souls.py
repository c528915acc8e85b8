"""The loaded souls (http-api §12): the global soul and the agents' own souls, by file.

Every soul has an owner: ``None`` for the global soul (``soul.path``), else an agent id (its
``agents.<id>.soul_path``, else ``<runtime.dir>/agents/<id>/SOUL.md`` when that file exists).
:meth:`Souls.sync` follows the configuration; the watcher reports edits on disk
(:meth:`Souls.on_disk`); ``/soul/update`` writes through :meth:`Souls.update`. All three take
one lock, so the watcher always sees a file the plugin itself wrote as unchanged and never reports
it a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import Any, Literal

from attrs import frozen

from sdk import (
    AGENTS,
    Invalid,
    PluginContext,
    SoulView,
    Unavailable,
    now_ms,
)
from sdk.files import write_atomic

from .parse import Soul, decode, parse, prompt
from .watch import Watcher

__all__ = ["Loaded", "Owner", "Souls", "agent_ids", "digest", "target"]

Owner = str | None  # None: the global soul; else an agent id
SOURCE = "soul:system"


@frozen(kw_only=True)
class Loaded:
    """A soul as loaded from its file: the text, the parsed soul, its prompt (formats §4.2) and
    when the loaded content last changed (epoch ms)."""

    path: Path
    text: str
    soul: Soul
    prompt: str
    changed_at: int

    def view(self, source: Literal["agent", "global"]) -> SoulView:
        return SoulView(
            name=self.soul.name,
            prompt=self.prompt,
            boundaries=self.soul.boundaries,
            source=source,
            path=str(self.path),
        )


def agent_ids(ctx: PluginContext) -> list[str]:
    """The agents that exist: the chat plugin's :data:`sdk.AGENTS` while it runs, else the
    ``[agents.<id>]`` tables of the configuration, else the one default agent ``aman``."""
    agents = ctx.stash.get(AGENTS)
    if agents is not None:
        return agents.ids()
    return sorted(ctx.settings.table("agents")) or ["aman"]


def digest(text: str) -> str:
    """``sha256:<16 hex>`` of a soul's content (the audit detail, http-api §1.8)."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Souls:
    """The :data:`sdk.SOULS` service and the plugin's state."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        #: The soul file of each owner (empty while souls are disabled).
        self.paths: dict[Owner, Path] = {}
        self.loaded: dict[Path, Loaded] = {}
        self.lock = asyncio.Lock()
        self.watcher: Watcher | None = None

    # --- the service ------------------------------------------------------------------------

    def for_agent(self, agent_id: str) -> SoulView | None:
        """The agent's own soul, else the global one, else None (http-api §12)."""
        own = self.get(agent_id)
        if own is not None:
            return own.view("agent")
        shared = self.get(None)
        return shared.view("global") if shared is not None else None

    def get(self, owner: Owner) -> Loaded | None:
        path = self.paths.get(owner)
        return self.loaded.get(path) if path is not None else None

    # --- configuration ----------------------------------------------------------------------

    def configured(self) -> dict[Owner, Path]:
        """The soul file of every owner by the configuration now; empty when ``soul.path`` is
        ``""`` (souls disabled, agents' souls included)."""
        settings = self.ctx.settings
        value = settings.get("soul.path")
        if value == "":
            return {}
        runtime = settings.resolve_path("runtime.dir")
        paths: dict[Owner, Path] = {
            None: runtime / "SOUL.md" if value is None else settings.resolve_path("soul.path")
        }
        for agent_id in agent_ids(self.ctx):
            key = f"agents.{agent_id}.soul_path"
            try:
                own = settings.resolve_path(key) if settings.get(key) else None
            except KeyError:  # agents.* keys are the chat plugin's: not declared without it
                own = None
            paths[agent_id] = own or runtime / "agents" / agent_id / "SOUL.md"
        return paths

    async def sync(self, *, announce: bool = True) -> None:
        """Follow the configuration: load the files that became soul files, forget the others,
        and publish ``soul_changed`` for every owner whose soul changed by it."""
        paths = self.configured()
        async with self.lock:
            if paths == self.paths:
                return
            before = {owner: self.get(owner) for owner in {*paths, *self.paths}}
            added = set(paths.values()) - set(self.paths.values())
            self.paths = paths
            self.loaded = {p: s for p, s in self.loaded.items() if p in set(paths.values())}
            for path in added:
                await self._load(path, at_start=not announce)
            if announce:
                for owner, old in before.items():
                    new = self.get(owner)
                    if (old and old.text) != (new and new.text):
                        await self._publish(owner, new)
        if self.watcher is not None:
            self.watcher.restart()

    def files(self) -> set[Path]:
        return set(self.paths.values())

    def owners(self, path: Path) -> list[Owner]:
        """Whose soul ``path`` is (usually one owner)."""
        return [owner for owner, p in self.paths.items() if p == path]

    # --- watching ---------------------------------------------------------------------------

    def sync_watcher(self) -> None:
        if self.watcher is None and self.ctx.settings.get("soul.watch"):
            self.watcher = Watcher(self.files, self.on_disk)
            self.watcher.start()

    async def stop_watcher(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            await watcher.stop()

    async def on_disk(self, files: set[Path]) -> None:
        """The watcher saw ``files`` change: reload each; a changed soul publishes
        ``soul_changed`` and writes the system audit record ``soul.changed``."""
        async with self.lock:
            for path in files & self.files():
                if await self._load(path):
                    for owner in self.owners(path):
                        await self._audit_change(owner, self.loaded.get(path))
                        await self._publish(owner, self.loaded.get(path))

    async def _load(self, path: Path, *, at_start: bool = False) -> bool:
        """Read ``path`` into :attr:`loaded` (lock held); whether the loaded content changed.
        A missing file unloads the soul; an invalid one keeps the previous soul (a warning)."""
        try:
            found = await asyncio.to_thread(_read, path)
        except (Invalid, OSError) as exc:
            self.ctx.log.warning("soul file %s not loaded: %s", path, exc)
            return False
        old = self.loaded.get(path)
        if found is None:
            return self.loaded.pop(path, None) is not None
        text, soul, mtime_ms = found
        if old is not None and old.text == text:
            return False
        self._keep(path, text, soul, mtime_ms if at_start else now_ms())
        return True

    def _keep(self, path: Path, text: str, soul: Soul, changed_at: int) -> Loaded:
        loaded = Loaded(path=path, text=text, soul=soul, prompt=prompt(soul), changed_at=changed_at)
        self.loaded[path] = loaded
        return loaded

    # --- updating ---------------------------------------------------------------------------

    async def update(self, owner: Owner, content: str) -> Loaded:
        """Parse ``content``, write it atomically to the owner's soul file (creating the file
        and its directory) and load it; ``soul_changed`` when the content changed (§12)."""
        path = self.paths.get(owner)
        if path is None:
            raise Invalid("no soul configured (soul.path is empty)")
        soul = parse(content)
        async with self.lock:
            await asyncio.to_thread(write_atomic, path, content.encode("utf-8"))
            old = self.loaded.get(path)
            if old is not None and old.text == content:
                return old
            loaded = self._keep(path, content, soul, now_ms())
            for other in self.owners(path):
                await self._publish(other, loaded)
        return loaded

    # --- announcing -------------------------------------------------------------------------

    async def _publish(self, owner: Owner, loaded: Loaded | None) -> None:
        """``soul_changed`` ``{"name", "boundaries", "preferences"}`` (``name`` null when the
        soul is gone); an agent's soul carries the agent id in the event's metadata."""
        soul = loaded.soul if loaded is not None else None
        payload: dict[str, Any] = {
            "name": soul.name if soul else None,
            "boundaries": list(soul.boundaries) if soul else [],
            "preferences": list(soul.preferences) if soul else [],
        }
        with contextlib.suppress(Unavailable):
            await self.ctx.bus.publish(
                "soul_changed",
                payload,
                source=SOURCE,
                delivery="at_most_once",
                agent_id=owner,
            )

    async def _audit_change(self, owner: Owner, loaded: Loaded | None) -> None:
        await self.ctx.audit.record(
            operator="system",
            action="soul.changed",
            target=target(owner),
            outcome="ok",
            detail=digest(loaded.text) if loaded is not None else "removed",
        )


def target(owner: Owner) -> str:
    """The audit target of a soul: ``soul``, or ``agent:<id>`` for an agent's own soul."""
    return "soul" if owner is None else f"agent:{owner}"


def _read(path: Path) -> tuple[str, Soul, int] | None:
    """The text, parsed soul and modification time (ms) of a soul file; None when it is missing."""
    try:
        data = path.read_bytes()
        mtime = path.stat().st_mtime_ns // 1_000_000
    except FileNotFoundError:
        return None
    text = decode(data)
    return text, parse(text), mtime
