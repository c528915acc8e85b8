"""The kernel services a plugin reaches through its context, as typed protocols.

The SDK only describes them; the kernel implements them. Plugins never import the kernel, so a
built-in plugin copied out of the tree and installed as an archive still works.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from attrs import frozen

from .models import (
    AuditNote,
    Contribution,
    Delivery,
    Event,
    Priority,
    PublishResult,
    Route,
    StashKey,
    TrustLevel,
)

__all__ = [
    "AGENTS",
    "NOTIFIER",
    "SKILL_CATALOG",
    "SKILL_RUNNER",
    "SOULS",
    "Agents",
    "AuditLog",
    "AuditPage",
    "AuditRecord",
    "Bus",
    "ConfigChange",
    "DeadLetterQueue",
    "Lifecycle",
    "Notifier",
    "PluginChange",
    "PluginInfo",
    "PluginInstalled",
    "PluginUninstalled",
    "Plugins",
    "ServedRoute",
    "Settings",
    "SkillCatalog",
    "SkillInfo",
    "SkillRunner",
    "SoulView",
    "Souls",
    "Store",
]

T = TypeVar("T")
Status = Literal["new", "starting", "ready", "draining", "stopped"]


class DeadLetterQueue(Protocol):
    """The dead-letter queue (http-api §9). Entries are the DeadLetterEntry objects of the API."""

    depth: int

    async def get(self, entry_id: str) -> Any: ...

    async def page(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        reason: str | None = None,
        source: str | None = None,
        event_type: str | None = None,
    ) -> tuple[list[Any], str | None]: ...

    async def start_retry(self, entry_id: str, *, operator: str, reason: str) -> Any: ...

    async def cancel_retry(self, entry_id: str) -> None: ...

    async def discard(self, entry_id: str) -> Any: ...

    async def expire(self) -> list[str]: ...

    async def due_alerts(self, thresholds: list[int]) -> list[tuple[str, int, str]]: ...

    async def enqueue(self, event: Event, *, reason: str, ttl_days: int | None = None) -> bool: ...


class Bus(Protocol):
    """The event bus (http-api §5.1). ``publish`` answers once the event is accepted (and, for
    guaranteed delivery in ``persistent`` mode, stored); subscribers run later. It raises
    :class:`~sdk.Invalid` for a bad event, :class:`~sdk.Forbidden` for a trust violation and
    :class:`~sdk.Unavailable` when backpressure refuses it."""

    dead_letters: DeadLetterQueue
    observers: list[Callable[[Event], None]]

    @property
    def level(self) -> str:
        """The backpressure level: Normal, L1, L2, L3, L4A, L4B or Critical."""
        ...

    async def publish(
        self,
        event_type: str,
        payload: Any = None,
        *,
        source: str | None = None,
        priority: Priority = "normal",
        delivery: Delivery = "at_most_once",
        agent_id: str | None = None,
        ttl_ms: int | None = None,
        dedup_key: str | None = None,
        trace_id: str | None = None,
        parent_event_id: str | None = None,
        trust_level: TrustLevel = "trusted",
        from_http: bool = False,
        also: Callable[[sqlite3.Connection, str], object] | None = None,
    ) -> PublishResult:
        """``also(conn, event_id)``, when given, writes the publisher's own rows in the same
        store transaction as a guaranteed event (so both are stored or neither is); for other
        events it is written before the event is handed to subscribers."""
        ...

    def build(self, event_type: str, payload: Any = None, **options: Any) -> Event:
        """A validated event that is not published (``/debug/dlq/enqueue``)."""
        ...

    async def redeliver(self, entry: Any) -> list[str]: ...

    async def get_event(self, event_id: str) -> Event | None: ...

    async def trace(self, trace_id: str) -> list[Event]: ...

    async def recent(
        self, limit: int, *, event_type: str | None = None, source: str | None = None
    ) -> list[Event]: ...

    async def after(self, event_id: str, limit: int) -> list[Event] | None: ...

    def subscribers(self) -> list[str]: ...

    def stats(self) -> Mapping[str, Any]: ...


class Store(Protocol):
    """The runtime's SQLite database (WAL). Writes run on one writer thread and are committed in
    groups; a write function runs inside its own savepoint, so its failure rolls back only its own
    statements, and what it returns is the caller's answer (a cursor is closed on the writer
    thread and answers None: take ``rowcount`` or ``lastrowid`` inside). Reads run on reader
    connections and never block writes."""

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    def defer(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """A write nobody waits for: it joins the next ``write``'s transaction, or is committed
        on its own shortly after; a crash may lose it. The future says how it went."""
        ...

    def release(self) -> None:
        """Send the deferred writes now (before a read that must see them)."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> int: ...

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[sqlite3.Row]: ...


@frozen(kw_only=True)
class ConfigChange:
    """The result of ``Settings.set``: each changed key is in exactly one list."""

    applied: list[str]
    restart_required: list[str]
    overridden: list[str]


class Settings(Protocol):
    """The effective configuration (defaults < ``aman.toml`` < environment < command line)."""

    @property
    def path(self) -> Path | None: ...

    def get(self, key: str) -> Any: ...

    def resolve_path(self, key: str) -> Path: ...

    def plugin_config(self, plugin: str) -> Mapping[str, Any]: ...

    def table(self, prefix: str) -> dict[str, Any]: ...

    def reread(self, prefix: str) -> None:
        """Take the table ``prefix`` from the config file as it is on disk now (edited by hand);
        :class:`Invalid` (and nothing changed) when the file or that table is not valid."""
        ...

    def effective_tree(self, *, redact: bool = True) -> dict[str, Any]: ...

    def overridden(self) -> list[str]: ...

    async def set(self, changes: Mapping[str, Any], *, operator: str) -> ConfigChange: ...


class Lifecycle(Protocol):
    """Phases 0..5 and the status of the runtime (http-api §1.7, §3)."""

    @property
    def phase(self) -> int: ...

    @property
    def status(self) -> Status: ...

    @property
    def version(self) -> str: ...

    @property
    def started_at_ms(self) -> int: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


@frozen(kw_only=True)
class PluginInfo:
    """The Plugin object of http-api §7."""

    name: str
    version: str
    description: str
    source: Literal["builtin", "entry_point", "installed"]
    builtin: bool
    essential: bool
    installed: bool
    loaded: bool
    enabled: bool
    state: Literal["running", "disabled", "failed"]
    unstable: bool
    api: str
    module: str
    manifest_path: str | None
    install_dir: str | None
    installed_at_ms: int | None
    sha256: str | None
    health: Mapping[str, str]
    routes: list[Mapping[str, Any]]
    ui_pages: list[Mapping[str, Any]]
    error: str | None


@frozen(kw_only=True)
class PluginChange:
    """The answer of enable and disable."""

    ok: bool
    name: str
    state: str
    changed: bool


@frozen(kw_only=True)
class PluginInstalled:
    """The answer of ``POST /plugin/install`` (http-api §7)."""

    plugin_name: str
    version: str
    install_dir: str
    state: str
    replaced_version: str | None
    sha256: str
    routes: list[Mapping[str, Any]]


@frozen(kw_only=True)
class PluginUninstalled:
    """The answer of ``POST /plugin/{name}/uninstall``."""

    ok: bool
    name: str
    version: str
    purged: bool


@frozen(kw_only=True)
class ServedRoute:
    """One route of the live route table, as served (``Plugins.routes``).

    :param method: upper-case (``GET``; ``HEAD`` is not listed, it follows ``GET``).
    :param path: the served path template: a built-in's own path, a third-party plugin's under
        ``/api/v1/<plugin>`` (http-api §24), with ``{param}`` and a final ``{*rest}``.
    :param public: served without the API token (http-api §1.2).
    :param plugin: the owning plugin's name.
    :param route: the route as the plugin declared it (handler, body and query classes, checks).
    """

    method: str
    path: str
    public: bool
    plugin: str
    route: Route


class Plugins(Protocol):
    """The plugin manager: list, enable, disable, install and uninstall plugins while the
    runtime serves."""

    def contributions(self, hook: str) -> list[Contribution]:
        """What the running plugins return from a ``register_*`` hook, in load order."""
        ...

    def routes(self) -> list[ServedRoute]:
        """Every route the runtime serves right now, in table order: the mounted routes of
        built-ins (a disabled one's answer 503) and of loaded third-party plugins, with the
        page files of their ``ui/`` folders (http-api §22)."""
        ...

    def list(self) -> list[PluginInfo]: ...

    async def run_sync(self, plugin: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of ``plugin``'s worker threads: daemons, a few per plugin, so a
        call its caller gave up on (a time limit) holds only that plugin's thread, and never
        the process's exit."""
        ...

    async def enable(self, name: str, *, operator: str) -> PluginChange: ...

    async def disable(self, name: str, *, operator: str) -> PluginChange: ...

    async def install(
        self,
        archive: bytes,
        *,
        sha256: str | None = None,
        operator: str,
        audit: AuditNote | None = None,
    ) -> PluginInstalled:
        """Install or upgrade a plugin from a ``.tar.gz`` archive, as one transaction (http-api
        §7). ``sha256``: the expected digest (lowercase hex). ``audit.target`` and
        ``audit.detail`` are filled in as soon as they are known."""
        ...

    async def uninstall(
        self, name: str, *, purge: bool = False, operator: str
    ) -> PluginUninstalled:
        """Stop and remove an installed plugin; ``purge`` also deletes its data directory."""
        ...


@frozen(kw_only=True)
class AuditRecord:
    """One audit record (http-api §1.8)."""

    id: str
    timestamp_ms: int
    operator: str
    action: str
    target: str
    outcome: str
    detail: str


@frozen(kw_only=True)
class AuditPage:
    items: list[AuditRecord]
    next_cursor: str | None


class AuditLog(Protocol):
    """The append-only audit log in the store."""

    async def record(
        self, *, operator: str, action: str, target: str, outcome: str, detail: str = ""
    ) -> None: ...

    async def query(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        operator: str | None = None,
        action: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> AuditPage: ...


class SkillRunner(Protocol):
    """What the ``skills`` plugin offers other plugins under :data:`SKILL_RUNNER` in the stash:
    run one skill's executor with an event (a workflow action ``{skill: <name>}``)."""

    async def run(self, name: str, event: Event) -> None:
        """Run the skill; raise :class:`~sdk.NotFound` when it does not exist,
        :class:`~sdk.Conflict` when it is disabled, or what its executor raised."""
        ...


#: The skills plugin puts its :class:`SkillRunner` here while it runs.
SKILL_RUNNER: StashKey[SkillRunner] = StashKey()


class Notifier(Protocol):
    """What the ``notifications`` plugin offers other plugins under :data:`NOTIFIER` in the stash:
    raise a notification for the operator (http-api §13) without importing that plugin."""

    async def notify(
        self,
        *,
        severity: str,
        category: str,
        title: str,
        body: str = "",
        source: str = "",
        action_label: str | None = None,
        action_route: str | None = None,
    ) -> str:
        """Store the notification and publish ``notification:created``; answer its id. Raise
        :class:`~sdk.Invalid` for an unknown ``severity`` or ``category`` (http-api §13). The
        action (a button label and a UI route) is kept only when both are given."""
        ...

    @property
    def unread(self) -> int:
        """The number of notifications not dismissed, kept current (SSE snapshots, §23)."""
        ...


#: The notifications plugin puts its :class:`Notifier` here while it runs (absent while it is
#: disabled: ``ctx.stash.get(NOTIFIER)`` is then None).
NOTIFIER: StashKey[Notifier] = StashKey()


@frozen(kw_only=True)
class SkillInfo:
    """An enabled skill as other plugins see it (formats §2.2). ``llm_visible`` is true when it
    has instructions, is LLM-visible and fits this host (``/llm-skills``)."""

    name: str
    description: str = ""
    instructions: str = ""
    tags: tuple[str, ...] = ()
    idle_prompts: tuple[str, ...] = ()
    llm_visible: bool = False


class SkillCatalog(Protocol):
    """What the ``skills`` plugin offers under :data:`SKILL_CATALOG`."""

    def enabled(self) -> list[SkillInfo]:
        """The enabled skills, sorted by name."""
        ...


#: The skills plugin puts its :class:`SkillCatalog` here while it runs.
SKILL_CATALOG: StashKey[SkillCatalog] = StashKey()


@frozen(kw_only=True)
class SoulView:
    """A loaded soul (formats §4): its name, compiled prompt (§4.2) and boundaries; ``source``
    says whether it is the agent's own soul or the global one."""

    name: str
    prompt: str
    boundaries: tuple[str, ...] = ()
    source: Literal["agent", "global"] = "global"
    path: str = ""


class Souls(Protocol):
    """What the ``soul`` plugin offers under :data:`SOULS`."""

    def for_agent(self, agent_id: str) -> SoulView | None:
        """The agent's own soul, else the global one, else ``None``."""
        ...


#: The soul plugin puts its :class:`Souls` here while it runs.
SOULS: StashKey[Souls] = StashKey()


class Agents(Protocol):
    """What the ``chat`` plugin offers under :data:`AGENTS`: which agents exist."""

    def ids(self) -> list[str]:
        """The configured agent ids, sorted (``aman`` when the config defines none)."""
        ...

    def states(self) -> list[dict[str, Any]]:
        """Each agent's ``{"agent_id", "system_state", "status", "active_session_id",
        "pending_turns"}``, sorted by id (the ``agent_states:updated`` SSE snapshot, §23)."""
        ...


#: The chat plugin puts its :class:`Agents` here while it runs.
AGENTS: StashKey[Agents] = StashKey()
