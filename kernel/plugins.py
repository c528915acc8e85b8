"""The plugin manager: loading order, enable and disable, health and quarantine.

A plugin is *loaded* when its hooks are registered with pluggy and its declarations (routes,
config keys, metrics) are collected, and *running* once ``on_startup`` and its health check
passed and its subscriptions are live. Built-ins load at kernel creation, so the routes of the
always-available endpoints answer from phase 0; everything starts at phase 2.

Routes of a disabled built-in stay mounted and answer ``503 plugin <name> is disabled``; those
of another plugin disappear (404). Essential plugins cannot be disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from attrs import define, field

import sdk
from sdk import (
    AuditNote,
    Conflict,
    Contribution,
    EventHandler,
    Health,
    Invalid,
    Migration,
    NotFound,
    PluginChange,
    PluginContext,
    PluginInfo,
    PluginInstalled,
    PluginUninstalled,
    Route,
    SdkError,
    Unrecoverable,
)
from sdk.services import ServedRoute

from . import installer
from .hooks import HookFailed, Hooks
from .ids import now_ms

T = TypeVar("T")

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .app import Kernel

__all__ = ["BUILTINS", "ESSENTIAL", "Plugin", "PluginManager"]

log = logging.getLogger("aman.plugins")

#: Built-in plugins in load order: (name, module, essential). Essential ones cannot be disabled;
#: core areas are essential unless http-api §7 lists them otherwise.
BUILTINS: tuple[tuple[str, str, bool], ...] = (
    ("auth", "builtin_plugins.auth", True),
    ("lifecycle", "builtin_plugins.lifecycle", True),
    ("plugin-manager", "builtin_plugins.plugin_manager", True),
    ("config", "builtin_plugins.config", True),
    ("audit", "builtin_plugins.audit", True),
    ("metrics", "builtin_plugins.metrics", True),
    ("debug", "builtin_plugins.debug", True),
    ("events", "builtin_plugins.events", True),
    ("dlq", "builtin_plugins.dlq", True),
    ("stream", "builtin_plugins.stream", True),
    ("llm-echo", "builtin_plugins.llm_echo", False),
    ("llm-openai", "builtin_plugins.llm_openai", False),
    ("llm", "builtin_plugins.llm", True),
    ("cron", "builtin_plugins.cron", False),
    ("timers", "builtin_plugins.timers", False),
    ("webhooks", "builtin_plugins.webhooks", False),
    ("capabilities", "builtin_plugins.capabilities", True),
    ("workflows", "builtin_plugins.workflows", True),
    ("skills", "builtin_plugins.skills", True),
    ("notifications", "builtin_plugins.notifications", False),
    ("security", "builtin_plugins.security", True),
    ("tools", "builtin_plugins.tools", True),
    ("builtin-tools", "builtin_plugins.builtin_tools", False),
    ("soul", "builtin_plugins.soul", True),
    ("chat", "builtin_plugins.chat", True),
    ("idle-run", "builtin_plugins.idle_run", True),
    ("explore", "builtin_plugins.explore", True),
    ("sources", "builtin_plugins.sources", True),
    ("ui", "builtin_plugins.ui", True),
    ("openapi", "builtin_plugins.openapi", True),
)
ESSENTIAL = frozenset(name for name, _, essential in BUILTINS if essential)
#: Names an installed plugin cannot take: the built-ins here and those http-api §7 lists.
RESERVED = frozenset(name for name, _, _ in BUILTINS) | {
    "llm-openai",
    "notifications",
    "builtin-tools",
    "ui",
}

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE plugin_state (
            name TEXT PRIMARY KEY, enabled INTEGER NOT NULL, unstable INTEGER NOT NULL DEFAULT 0
        );
        """,
    ),
    Migration(
        version=2,
        sql="""
        CREATE TABLE plugin_registry (
            name TEXT PRIMARY KEY, version TEXT NOT NULL, sha256 TEXT NOT NULL,
            installed_at_ms INTEGER NOT NULL, enabled INTEGER NOT NULL, manifest TEXT NOT NULL
        );
        """,
    ),
    Migration(
        version=3,
        sql="""
        ALTER TABLE plugin_state ADD COLUMN shutdown_timeouts INTEGER NOT NULL DEFAULT 0;
        """,
    ),
]
#: Names a plugin contributes that must be unique among running plugins (formats §5.4):
#: (hook, attribute, what the error calls it).
UNIQUE_NAMES = (
    ("register_tools", "name", "tool"),
    ("register_llm_providers", "type", "LLM provider type"),
)
Source = Literal["builtin", "entry_point", "installed"]
HEALTH_TIMEOUT_SEC = 10.0
#: http-api §24: the methods a route may have, and its path: literal segments, ``{param}``
#: segments and a final ``{*rest}``.
ROUTE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_SEGMENT = r"/(?:[^/{}<>\s]+|\{[A-Za-z_]\w*\})"
ROUTE_PATH = re.compile(rf"/|(?:{_SEGMENT})+(?:/\{{\*[A-Za-z_]\w*\}})?|/\{{\*[A-Za-z_]\w*\}}")


@define(kw_only=True)
class Installed:
    """What the registry knows of an installed plugin (http-api §7)."""

    install_dir: Path
    installed_at_ms: int
    sha256: str
    manifest: installer.Manifest | None  # None: unreadable at start-up
    package: str  # the private package its module was imported under

    @property
    def manifest_path(self) -> Path:
        return self.install_dir / "plugin.toml"


class _Broken:
    """Stands in for the module of an installed plugin that could not be loaded at start-up."""

    def __init__(self, name: str) -> None:
        self.__name__ = name


@define(kw_only=True)
class Plugin:
    """The manager's record of one plugin."""

    name: str
    obj: object
    source: Source
    version: str
    description: str = ""
    essential: bool = False
    enabled: bool = True
    loaded: bool = False
    state: Literal["running", "disabled", "failed"] = "disabled"
    unstable: bool = False
    error: str | None = None
    health: Health = field(factory=Health)
    routes: list[Route] = field(factory=list)
    handlers: list[EventHandler] = field(factory=list)
    collectors: list[Any] = field(factory=list)
    failures: int = 0
    shutdown_timeouts: int = 0  # on_shutdown timeouts in a row, across restarts (http-api §7)
    keys_declared: bool = False
    contributed: dict[str, list[Any]] = field(factory=dict)
    ctx: PluginContext | None = None
    installed: Installed | None = None

    @property
    def builtin(self) -> bool:
        return self.source == "builtin"

    @property
    def module(self) -> str:
        if self.installed is not None and self.installed.manifest is not None:
            return self.installed.manifest.module
        return getattr(self.obj, "__name__", type(self.obj).__name__)

    @property
    def public_routes(self) -> tuple[str, ...]:
        """The manifest's ``public_routes`` (installed plugins; http-api §24)."""
        if self.installed is None or self.installed.manifest is None:
            return ()
        return self.installed.manifest.public_routes


def _listed(route: Route, entries: Iterable[str]) -> bool:
    """Whether a ``public_routes`` entry (``"METHOD /path"`` or ``"/path"``) names ``route``."""
    for entry in entries:
        method, _, path = entry.strip().rpartition(" ")
        if path == route.path and (not method or method.upper() == route.method.upper()):
            return True
    return False


def _summary(obj: object) -> str:
    """The first line of a plugin's docstring, without reStructuredText literals."""
    return (getattr(obj, "__doc__", None) or "").strip().split("\n")[0].replace("``", "")


class _Recorder:
    """Stands in for the registry in ``register_metrics`` and notes what a plugin registered, so
    that its collectors can be removed when it is unloaded."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.added: list[Any] = []

    def register(self, collector: Any) -> None:
        self._registry.register(collector)
        self.added.append(collector)

    def unregister(self, collector: Any) -> None:
        self._registry.unregister(collector)
        self.added.remove(collector)


class PluginManager:
    """The :class:`sdk.Plugins` service of the kernel."""

    def __init__(self, kernel: Kernel, hooks: Hooks) -> None:
        self._kernel = kernel
        self.hooks = hooks
        self.records: dict[str, Plugin] = {}
        self._lock = asyncio.Lock()
        self._health_task: asyncio.Task[None] | None = None
        self._quarantines: set[asyncio.Task[None]] = set()
        self.on_routes_changed: Callable[[], None] = lambda: None
        hooks.on_error = self.note_failure

    # --- loading ---------------------------------------------------------------------------

    def add(
        self,
        name: str,
        obj: object,
        *,
        source: Source,
        version: str | None = None,
        description: str = "",
        essential: bool = False,
        installed: Installed | None = None,
    ) -> Plugin:
        """Know a plugin and load it (register its hooks, collect its declarations)."""
        if name in self.records:
            raise sdk.ConfigError(f"two plugins are named {name}")
        rec = Plugin(
            name=name,
            obj=obj,
            source=source,
            version=version or self._kernel.version,
            description=description or _summary(obj),
            essential=essential,
            installed=installed,
        )
        rec.ctx = self._kernel.context(rec.name, rec.version, builtin=rec.builtin)
        self.records[name] = rec
        self._load(rec)
        return rec

    def load_builtins(self, disabled: Iterable[str] = ()) -> None:
        disabled = set(disabled)
        if refused := disabled & ESSENTIAL:
            raise sdk.ConfigError(
                f"essential plugins cannot be disabled: {', '.join(sorted(refused))}"
            )
        for name, module, essential in BUILTINS:
            try:
                obj = importlib.import_module(module)
            except Exception as exc:
                raise sdk.ConfigError(f'error importing plugin "{name}": {exc}') from exc
            self.add(name, obj, source="builtin", essential=essential)
        for name in disabled:
            if name in self.records:
                self._unload(self.records[name])
                self.records[name].enabled = False

    def load_entry_points(self) -> None:
        for ep in entry_points(group="aman.plugins"):
            try:
                obj = ep.load()
                dist = ep.dist
                self.add(
                    ep.name,
                    obj,
                    source="entry_point",
                    version=dist.version if dist else None,
                    description=dist.metadata["Summary"]
                    if dist and "Summary" in dist.metadata
                    else "",
                )
            except Exception as exc:  # noqa: BLE001 - a bad third-party plugin is reported, not fatal
                log.error("plugin %s (entry point) failed to load: %s", ep.name, exc)

    def _load(self, rec: Plugin) -> None:
        assert rec.ctx is not None
        self.hooks.pm.register(rec.obj, name=rec.name)
        try:
            if not rec.keys_declared:
                self._kernel.config.declare(
                    rec.name, self.hooks.collect("register_config", rec.name, ctx=rec.ctx)
                )
                rec.keys_declared = True
            if not (rec.builtin and rec.routes):
                routes = self.hooks.collect("register_routes", rec.name, ctx=rec.ctx)
                rec.routes = self._checked_routes(rec, routes)
            recorder = _Recorder(self._kernel.metrics.registry)
            self.hooks.collect("register_metrics", rec.name, ctx=rec.ctx, registry=recorder)
            rec.collectors = recorder.added
            rec.loaded = True
            self.on_routes_changed()  # raises on a route clash with another plugin
        except Exception:
            self._unload(rec)
            raise

    def _unload(self, rec: Plugin) -> None:
        """Unregister the plugin's hooks and collectors. A built-in keeps its routes (they answer
        503 while it is disabled); any plugin keeps its config keys until it is uninstalled."""
        for collector in rec.collectors:
            with contextlib.suppress(KeyError):
                self._kernel.metrics.registry.unregister(collector)
        rec.collectors = []
        if self.hooks.pm.is_registered(rec.obj):
            self.hooks.pm.unregister(rec.obj)
        rec.loaded = False
        if not rec.builtin:
            rec.routes = []
        self.on_routes_changed()

    @staticmethod
    def _checked_routes(rec: Plugin, routes: list[Any]) -> list[Route]:
        seen: set[tuple[str, str]] = set()
        for route in routes:
            if not isinstance(route, Route):
                raise TypeError(
                    f"plugin {rec.name}: register_routes returned {route!r}, not a Route"
                )
            if route.method.upper() not in ROUTE_METHODS:
                raise ValueError(
                    f"plugin {rec.name}: route method {route.method!r} is not one of"
                    f" {', '.join(ROUTE_METHODS)}"
                )
            if not ROUTE_PATH.fullmatch(route.path):
                raise ValueError(
                    f"plugin {rec.name}: invalid route path {route.path!r} (it starts with '/';"
                    " its segments are literals, {param} or a final {*rest})"
                )
            key = (route.method.upper(), route.path)
            if key in seen:
                raise ValueError(f"plugin {rec.name} registers {key[0]} {key[1]} twice")
            seen.add(key)
        return routes

    def check_pending(self) -> None:
        """A misspelt hook is an error, not a silent no-op (pluggy's ``check_pending``)."""
        self.hooks.pm.check_pending()

    # --- starting and stopping -------------------------------------------------------------

    async def restore_state(self) -> None:
        """Phase 1: apply the persisted enabled flags (http-api §7: the state survives restarts)."""
        rows = await self._kernel.store.fetchall(
            "SELECT name, enabled, unstable, shutdown_timeouts FROM plugin_state"
        )
        for row in rows:
            rec = self.records.get(row["name"])
            if rec is None or rec.essential:
                continue
            rec.enabled, rec.unstable = bool(row["enabled"]), bool(row["unstable"])
            rec.shutdown_timeouts = row["shutdown_timeouts"]
            if not rec.enabled and rec.loaded:
                self._unload(rec)

    async def start_all(self) -> None:
        """Phase 2: start every enabled plugin in load order. A built-in that fails aborts."""
        for rec in list(self.records.values()):
            if isinstance(rec.obj, _Broken):  # failed at load_installed, audited there
                continue
            if not rec.enabled:
                rec.state = "disabled"
                continue
            try:
                await self._start(rec)
            except HookFailed as exc:
                if rec.builtin:
                    raise RuntimeError(
                        f"built-in plugin {rec.name} failed to start: {exc}"
                    ) from exc
                await self._kernel.audit.record(
                    operator="system",
                    action="plugin.load",
                    target=f"plugin:{rec.name}",
                    outcome="failed",
                    detail=str(exc),
                )
        self._health_task = asyncio.create_task(self._health_loop(), name="aman-plugin-health")

    async def stop_all(self) -> None:
        """Shutdown 2 → 1: stop the running plugins in reverse load order."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for rec in reversed(list(self.records.values())):
            if rec.state == "running":
                await self._stop(rec)

    async def _start(self, rec: Plugin) -> None:
        assert rec.ctx is not None
        kernel = self._kernel
        if isinstance(rec.obj, _Broken):
            raise self._fail(rec, HookFailed(rec.name, "import", rec.error or "not loaded"))
        if not rec.loaded:
            try:
                self._load(rec)
            except Exception as exc:
                raise self._fail(
                    rec, HookFailed(rec.name, "register", f"{type(exc).__name__}: {exc}")
                ) from exc
        try:
            migrations = self.hooks.collect("register_migrations", rec.name, ctx=rec.ctx)
            await kernel.store.migrate(rec.name, migrations)
        except Exception as exc:
            raise self._fail(
                rec, self.hooks.failed(rec.name, "register_migrations", str(exc), exc)
            ) from exc
        rec.ctx.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        timeout = kernel.config.get("plugins.load_timeout_sec")
        try:
            await self.hooks.call("on_startup", rec.name, ctx=rec.ctx, timeout=timeout)
            rec.health = await self._health(rec)
            if rec.health.status == "error":
                raise self.hooks.failed(
                    rec.name, "health_check", f"health check failed: {rec.health.detail}"
                )
            rec.handlers = self.hooks.collect("register_event_handlers", rec.name, ctx=rec.ctx)
            for source in self.hooks.collect("register_sources", rec.name, ctx=rec.ctx):
                try:
                    await kernel.sources.add(rec.name, source)
                except Exception as exc:  # a collision or a bad source fails the start
                    raise self.hooks.failed(rec.name, "register_sources", str(exc), exc) from exc
            for hook, key, what in UNIQUE_NAMES:
                self._claim(rec, hook, key, what)
        except HookFailed as exc:
            await kernel.sources.remove_plugin(rec.name)
            with contextlib.suppress(HookFailed):
                await self.hooks.call("on_shutdown", rec.name, ctx=rec.ctx, timeout=timeout)
            raise self._fail(rec, exc) from None
        kernel.bus.subscribe(rec.name, rec.handlers, builtin=rec.builtin)
        rec.state, rec.error, rec.failures = "running", None, 0

    def _claim(self, rec: Plugin, hook: str, key: str, what: str) -> None:
        """Collect ``hook`` for a starting plugin; a name a running plugin has fails the start."""
        try:
            mine = self.hooks.collect(hook, rec.name, ctx=rec.ctx)
        except Exception as exc:
            raise self.hooks.failed(rec.name, hook, f"{type(exc).__name__}: {exc}", exc) from exc
        taken = {getattr(c.item, key, None): c.plugin for c in self.contributions(hook)}
        for item in mine:
            owner = taken.get(getattr(item, key, None))
            if owner is not None and owner != rec.name:
                name = getattr(item, key)
                raise self.hooks.failed(
                    rec.name, hook, f"{what} {name} is already provided by {owner}"
                )
        rec.contributed[hook] = mine

    def _fail(self, rec: Plugin, exc: HookFailed) -> HookFailed:
        rec.state, rec.error = "failed", exc.reason
        self._kernel.bus.unsubscribe(rec.name)
        if rec.loaded:
            self._unload(rec)
        return exc

    async def _stop(self, rec: Plugin) -> None:
        await self._kernel.sources.remove_plugin(rec.name)
        self._kernel.bus.unsubscribe(rec.name)
        rec.contributed.clear()
        timeout = self._kernel.config.get("plugins.unload_timeout_sec")
        timed_out = False
        try:
            await self.hooks.call("on_shutdown", rec.name, ctx=rec.ctx, timeout=timeout)
        except HookFailed as exc:  # logged and counted; the plugin is removed anyway
            timed_out = exc.timed_out
        rec.state = "disabled"
        await self._count_shutdown(rec, timed_out)

    async def _count_shutdown(self, rec: Plugin, timed_out: bool) -> None:
        """Count ``on_shutdown`` timeouts in a row, persisted (they happen once per stop); at
        ``plugins.quarantine_after_failures`` the plugin is quarantined (http-api §7)."""
        if rec.essential or (not timed_out and not rec.shutdown_timeouts):
            return
        rec.shutdown_timeouts = rec.shutdown_timeouts + 1 if timed_out else 0
        await self._persist(rec, enabled=rec.enabled, unstable=rec.unstable)
        limit = self._kernel.config.get("plugins.quarantine_after_failures")
        if rec.shutdown_timeouts >= limit:
            error = f"quarantined after {rec.shutdown_timeouts} on_shutdown timeouts in a row"
            await self._mark_unstable(rec, error)

    async def _health(self, rec: Plugin) -> Health:
        try:
            result = await self.hooks.call(
                "health_check", rec.name, ctx=rec.ctx, timeout=HEALTH_TIMEOUT_SEC
            )
        except HookFailed as exc:
            return Health(status="error", detail=exc.reason)
        if result is None:
            return Health()
        if isinstance(result, Health):
            return result
        try:
            return self._kernel.converter.structure(dict(result), Health)
        except Exception:  # noqa: BLE001 - any malformed answer is an unhealthy plugin
            return Health(status="error", detail=f"health_check returned {result!r}")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._kernel.config.get("plugins.health_interval_sec"))
            for rec in list(self.records.values()):
                if rec.state == "running":
                    rec.health = await self._health(rec)

    # --- failures and quarantine -----------------------------------------------------------

    def note_failure(self, plugin: str, hook: str) -> None:
        rec = self.records.get(plugin)
        if rec is None:
            return
        rec.failures += 1
        limit = self._kernel.config.get("plugins.quarantine_after_failures")
        if rec.failures >= limit and rec.state == "running" and not rec.essential:
            self._kernel.bus.unsubscribe(rec.name)  # no further deliveries, from this moment
            task = asyncio.get_running_loop().create_task(
                self._quarantine(rec, f"{rec.failures} failures in a row (last: {hook})")
            )
            self._quarantines.add(task)
            task.add_done_callback(self._quarantines.discard)

    def note_success(self, plugin: str) -> None:
        if (rec := self.records.get(plugin)) is not None:
            rec.failures = 0

    async def _quarantine(self, rec: Plugin, why: str) -> None:
        async with self._lock:
            if rec.state != "running":
                return
            log.error("plugin %s quarantined after %s", rec.name, why)
            await self._stop(rec)
            self._unload(rec)
            await self._mark_unstable(rec, f"quarantined after {why}")

    async def _mark_unstable(self, rec: Plugin, error: str) -> None:
        """Quarantine a stopped plugin: ``unstable``, disabled, persisted, audited, published."""
        if rec.unstable:
            return
        await self._persist(rec, enabled=False, unstable=True)
        await self._kernel.audit.record(
            operator="system",
            action="plugin.quarantine",
            target=f"plugin:{rec.name}",
            outcome="quarantined",
            detail=error,
        )
        rec.enabled, rec.unstable, rec.error = False, True, error
        await self._kernel.publish_system(
            "plugin:quarantined",
            {"name": rec.name, "version": rec.version},
            source="plugin-manager",
        )

    # --- the service (http-api §7) ---------------------------------------------------------

    def _get(self, name: str) -> Plugin:
        rec = self.records.get(name)
        if rec is None:
            raise NotFound(f"plugin not found: {name}")
        return rec

    def _exclusive(self) -> asyncio.Lock:
        if self._lock.locked():
            raise Conflict("another plugin operation is in progress")
        return self._lock

    async def enable(self, name: str, *, operator: str) -> PluginChange:
        rec = self._get(name)
        async with self._exclusive():
            if rec.state == "running":
                return PluginChange(ok=True, name=name, state="running", changed=False)
            try:
                await self._start(rec)
            except HookFailed as exc:
                raise Unrecoverable(f"plugin failed to start: {exc.reason}") from None
            if rec.unstable:  # the quarantine ends: its count starts again
                rec.shutdown_timeouts = 0
            await self._persist(rec, enabled=True)
            rec.enabled, rec.unstable = True, False
            self.on_routes_changed()
        await self._kernel.publish_system(
            "plugin:enabled", {"name": name, "version": rec.version}, source="plugin-manager"
        )
        return PluginChange(ok=True, name=name, state="running", changed=True)

    async def disable(self, name: str, *, operator: str) -> PluginChange:
        rec = self._get(name)
        if rec.essential:
            raise Conflict(f"plugin {name} is essential and cannot be disabled")
        async with self._exclusive():
            if rec.state != "running":
                if rec.enabled:  # a failed plugin: not started again at the next start either
                    await self._persist(rec, enabled=False, unstable=rec.unstable)
                    rec.enabled = False
                return PluginChange(ok=True, name=name, state=rec.state, changed=False)
            await self._stop(rec)
            self._unload(rec)
            await self._persist(rec, enabled=False, unstable=rec.unstable)
            rec.enabled = False
        await self._kernel.publish_system(
            "plugin:disabled", {"name": name, "version": rec.version}, source="plugin-manager"
        )
        return PluginChange(ok=True, name=name, state="disabled", changed=True)

    async def _persist(self, rec: Plugin, *, enabled: bool, unstable: bool = False) -> None:
        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO plugin_state (name, enabled, unstable, shutdown_timeouts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled,"
                " unstable = excluded.unstable, shutdown_timeouts = excluded.shutdown_timeouts",
                (rec.name, int(enabled), int(unstable), rec.shutdown_timeouts),
            )
            conn.execute(
                "UPDATE plugin_registry SET enabled = ? WHERE name = ?", (int(enabled), rec.name)
            )

        await self._kernel.store.write(save)

    # --- installed plugins (http-api §7, formats §5) ----------------------------------------

    def _plugins_dir(self) -> Path:
        return self._kernel.config.resolve_path("plugins.dir")

    def installed_names(self) -> list[str]:
        """The names of the plugins installed over HTTP (their folders), before they load."""
        try:
            return [
                p.name for p in self._plugins_dir().iterdir() if p.is_dir() and p.name[0] != "."
            ]
        except OSError:  # no plugins directory yet
            return []

    def _limits(self) -> installer.Limits:
        get = self._kernel.config.get
        return installer.Limits(
            max_members=get("plugins.max_members"),
            max_member_bytes=get("plugins.max_member_bytes"),
            max_unpacked_bytes=get("plugins.max_unpacked_bytes"),
        )

    async def load_installed(self) -> None:
        """Phase 2, before :meth:`start_all`: empty the staging area and load the installed
        plugins in registry order. One that cannot be loaded is listed ``failed`` (system audit
        ``plugin.load``); start-up continues."""
        base = self._plugins_dir()
        staging = base / ".staging"
        if staging.exists():  # emptied, not removed (formats §1.6)
            installer.remove_tree(staging)
            staging.mkdir(mode=0o700)
        rows = await self._kernel.store.fetchall(
            "SELECT r.name, r.version, r.sha256, r.installed_at_ms, s.enabled, s.unstable,"
            " s.shutdown_timeouts FROM plugin_registry r LEFT JOIN plugin_state s"
            " ON s.name = r.name ORDER BY r.rowid"
        )
        for row in rows:
            name, version, digest = row["name"], row["version"], row["sha256"]
            enabled = row["enabled"] is None or bool(row["enabled"])
            if name in self.records:
                error = f"plugin {name} is shadowed by the {self.records[name].source} plugin of that name"
                log.error("installed %s", error)
                await self._audit_load(name, error)
                continue
            final = base / name / version
            self._drop_other_versions(base / name, version)
            inst = Installed(
                install_dir=final,
                installed_at_ms=row["installed_at_ms"],
                sha256=digest,
                manifest=None,
                package=installer.private_module_name(name, digest),
            )
            try:
                manifest = installer.parse_manifest((final / "plugin.toml").read_bytes())
                if (manifest.name, manifest.version) != (name, version):
                    raise Invalid(f"plugin.toml names {manifest.name} {manifest.version}")
                inst.manifest = manifest
                module = await asyncio.to_thread(installer.import_plugin, final, manifest, digest)
            except (OSError, SdkError) as exc:
                error = exc.message if isinstance(exc, SdkError) else f"{type(exc).__name__}: {exc}"
                self._add_broken(name, version, inst, error, enabled)
                await self._audit_load(name, error)
                continue
            try:
                rec = self.add(
                    name,
                    module,
                    source="installed",
                    version=version,
                    description=manifest.description,
                    installed=inst,
                )
            except Exception as exc:  # noqa: BLE001 - a bad installed plugin never stops start-up
                error = f"{type(exc).__name__}: {exc}"
                self.records.pop(name, None)
                installer.forget_module(inst.package)
                self._add_broken(name, version, inst, error, enabled)
                await self._audit_load(name, error)
                continue
            rec.enabled, rec.unstable = enabled, bool(row["unstable"] or 0)
            rec.shutdown_timeouts = row["shutdown_timeouts"] or 0
            if not enabled:
                self._unload(rec)

    def _add_broken(
        self, name: str, version: str, inst: Installed, error: str, enabled: bool
    ) -> None:
        log.error("installed plugin %s failed to load: %s", name, error)
        rec = Plugin(
            name=name,
            obj=_Broken(name),
            source="installed",
            version=version,
            description=inst.manifest.description if inst.manifest else "",
            enabled=enabled,
            state="failed",
            error=error,
            installed=inst,
        )
        rec.ctx = self._kernel.context(name, version, builtin=False)
        self.records[name] = rec

    async def _audit_load(self, name: str, error: str) -> None:
        await self._kernel.audit.record(
            operator="system",
            action="plugin.load",
            target=f"plugin:{name}",
            outcome="failed",
            detail=error,
        )

    @staticmethod
    def _drop_other_versions(folder: Path, keep: str) -> None:
        """Version directories an interrupted install or upgrade left behind."""
        with contextlib.suppress(FileNotFoundError):
            for entry in folder.iterdir():
                if entry.name != keep and not entry.is_symlink() and entry.is_dir():
                    installer.remove_tree(entry)

    async def install(
        self,
        archive: bytes,
        *,
        sha256: str | None = None,
        operator: str,
        audit: AuditNote | None = None,
    ) -> PluginInstalled:
        async with self._exclusive():
            result = await self._install(archive, sha256, audit)
        await self._kernel.publish_system(
            "plugin:installed",
            {
                "name": result.plugin_name,
                "version": result.version,
                "replaced_version": result.replaced_version,
            },
            source="plugin-manager",
        )
        return result

    async def _install(
        self, archive: bytes, expected: str | None, audit: AuditNote | None
    ) -> PluginInstalled:
        # 1. the upload
        digest = hashlib.sha256(archive).hexdigest()
        if expected is not None and expected.strip().lower() != digest:
            raise Invalid(
                f"archive sha256 mismatch: expected {expected.strip().lower()}, got {digest}"
            )
        # 2.-3. the headers, then the manifest (nothing is written yet)
        limits = self._limits()
        found = await asyncio.to_thread(installer.scan, archive, limits)
        manifest = installer.parse_manifest(found.manifest, found.files())
        name, version = manifest.name, manifest.version
        if audit is not None:
            audit.target = f"plugin:{name}"
        # 4. the name
        old = self.records.get(name)
        if name in RESERVED or (old is not None and old.builtin):
            raise Conflict(f"plugin name is reserved by a built-in plugin: {name}")
        if old is not None and old.installed is None:
            raise Conflict(f"plugin {name} was installed with pip; uninstall it with pip")
        if old is not None and old.version == version:
            raise Conflict(f"plugin {name} {version} is already installed")
        # 5. api and requires
        installer.check_api(manifest)
        installer.check_requires(manifest)
        # 6. staging, then the version's own directory
        base = self._plugins_dir()
        staging_root = base / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = staging_root / uuid.uuid4().hex
        os.mkdir(staging, 0o700)
        final = base / name / version
        try:
            await asyncio.to_thread(installer.extract, archive, found, staging, limits)
            (base / name).mkdir(mode=0o755, exist_ok=True)
            installer.remove_tree(final)  # the leftover of an interrupted install, never registered
            os.rename(staging, final)
        except BaseException:
            installer.remove_tree(staging)
            raise
        inst = Installed(
            install_dir=final,
            installed_at_ms=now_ms(),
            sha256=digest,
            manifest=manifest,
            package=installer.private_module_name(name, digest),
        )
        data_dir = self._kernel.runtime_dir / "plugin-data" / name
        had_data = data_dir.exists()
        old_running = old is not None and old.state == "running"
        rec: Plugin | None = None
        try:
            # 7. import
            module = await asyncio.to_thread(installer.import_plugin, final, manifest, digest)
            # 8. stop the running version
            if old is not None:
                await self._remove(old)
            # 9. register, start, check
            try:
                rec = self.add(
                    name,
                    module,
                    source="installed",
                    version=version,
                    description=manifest.description,
                    installed=inst,
                )
                self.hooks.pm.check_pending()
            except Exception as exc:  # noqa: BLE001 - any registration failure fails the load
                rec = self.records.get(name)
                raise Unrecoverable(f"plugin failed to load: {type(exc).__name__}: {exc}") from None
            for entry in manifest.public_routes:
                if not any(_listed(route, [entry]) for route in rec.routes):
                    raise Unrecoverable(
                        f"plugin failed to load: public_routes entry '{entry}' matches no route"
                    )
            try:
                await self._start(rec)
            except HookFailed as exc:
                raise Unrecoverable(f"plugin failed to load: {exc.reason}") from None
            # 10. commit
            await self._register(rec, inst, manifest)
        except BaseException:
            if rec is not None:
                await self._remove(rec)
            installer.forget_module(inst.package)
            installer.remove_tree(final)
            with contextlib.suppress(OSError):  # the name's folder, if this made it
                (base / name).rmdir()
            if not had_data:
                installer.remove_tree(data_dir)
            if old is not None:
                await self._restore(old, old_running)
            self.on_routes_changed()
            raise
        rec.enabled, rec.unstable = True, False
        if old is not None and old.installed is not None:
            if old.installed.install_dir != final:
                installer.remove_tree(old.installed.install_dir)
            installer.forget_module(old.installed.package)
        if old is not None:  # a fresh install's routes went live when it was loaded
            self.on_routes_changed()
        replaced = old.version if old is not None else None
        if audit is not None:
            audit.detail = f"version={version} sha256={digest[:16]}" + (
                f" replaced={replaced}" if replaced else ""
            )
        return PluginInstalled(
            plugin_name=name,
            version=version,
            install_dir=str(final),
            state=rec.state,
            replaced_version=replaced,
            sha256=digest,
            routes=list(self.info(rec).routes),
        )

    async def _remove(self, rec: Plugin) -> None:
        """Stop and unregister a plugin and forget it (its config keys included)."""
        if rec.state == "running":
            await self._stop(rec)
        if rec.loaded:
            self._unload(rec)
        self._kernel.bus.unsubscribe(rec.name)
        self._kernel.config.undeclare(rec.name)
        rec.keys_declared = False
        if self.records.get(rec.name) is rec:
            del self.records[rec.name]

    async def _restore(self, old: Plugin, running: bool) -> None:
        """Put back the version an install failed to replace, running if it was."""
        self.records[old.name] = old
        if running:
            try:
                await self._start(old)
            except HookFailed as exc:
                log.error(
                    "plugin %s could not be restarted after a failed upgrade: %s", old.name, exc
                )
        elif not isinstance(old.obj, _Broken):
            with contextlib.suppress(Exception):  # keys of a stopped plugin stay declared
                keys = self.hooks.collect("register_config", old.name, obj=old.obj, ctx=old.ctx)
                self._kernel.config.declare(old.name, keys)
                old.keys_declared = True

    async def _register(self, rec: Plugin, inst: Installed, manifest: installer.Manifest) -> None:
        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO plugin_registry"
                " (name, version, sha256, installed_at_ms, enabled, manifest)"
                " VALUES (?, ?, ?, ?, 1, ?)"
                " ON CONFLICT (name) DO UPDATE SET version = excluded.version,"
                " sha256 = excluded.sha256, installed_at_ms = excluded.installed_at_ms,"
                " enabled = 1, manifest = excluded.manifest",
                (
                    rec.name,
                    rec.version,
                    inst.sha256,
                    inst.installed_at_ms,
                    json.dumps(manifest.to_json()),
                ),
            )
            conn.execute(
                "INSERT INTO plugin_state (name, enabled, unstable) VALUES (?, 1, 0)"
                " ON CONFLICT (name) DO UPDATE SET enabled = 1, unstable = 0",
                (rec.name,),
            )

        await self._kernel.store.write(save)

    async def uninstall(
        self, name: str, *, purge: bool = False, operator: str
    ) -> PluginUninstalled:
        rec = self._get(name)
        if rec.builtin:
            raise Conflict(f"built-in plugin cannot be uninstalled: {name}")
        if rec.installed is None:
            raise Conflict(f"plugin {name} was installed with pip; uninstall it with pip")
        async with self._exclusive():
            keys = self._kernel.config.declared_by(name)
            await self._remove(rec)
            installer.forget_module(rec.installed.package)
            # its keys would be unknown at the next start: they go with it
            if leftover := {key: None for key in keys if self._kernel.config.in_file(key)}:
                try:
                    await self._kernel.config.set(leftover, operator=operator)
                except SdkError as exc:  # the file on disk no longer parses: left as it is
                    log.warning("plugin %s: its config keys stay in the file: %s", name, exc)

            def forget(conn: sqlite3.Connection) -> None:
                conn.execute("DELETE FROM plugin_registry WHERE name = ?", (name,))
                conn.execute("DELETE FROM plugin_state WHERE name = ?", (name,))

            await self._kernel.store.write(forget)
            installer.remove_tree(self._plugins_dir() / name)
            if purge:
                installer.remove_tree(self._kernel.runtime_dir / "plugin-data" / name)
        await self._kernel.publish_system(
            "plugin:uninstalled", {"name": name, "version": rec.version}, source="plugin-manager"
        )
        return PluginUninstalled(ok=True, name=name, version=rec.version, purged=purge)

    async def run_sync(self, plugin: str, fn: Callable[..., T], *args: Any) -> T:
        return await self.hooks.threads.run(plugin, fn, *args)

    def contributions(self, hook: str) -> list[Contribution]:
        """What the running plugins return from ``hook`` (a ``register_*`` hook), in load order.

        Each plugin's answer is collected once per start; a plugin that raises contributes
        nothing (the failure is counted and logged).
        """
        out: list[Contribution] = []
        for rec in self.records.values():
            if rec.state != "running":
                continue
            if hook not in rec.contributed:
                try:
                    rec.contributed[hook] = self.hooks.collect(hook, rec.name, ctx=rec.ctx)
                except Exception as exc:  # noqa: BLE001 - isolated: counted and logged
                    self.hooks.failed(rec.name, hook, f"{type(exc).__name__}: {exc}", exc)
                    rec.contributed[hook] = []
            out += [Contribution(plugin=rec.name, item=item) for item in rec.contributed[hook]]
        return out

    def routes(self) -> list[ServedRoute]:
        """The router's live table, as the SDK describes it (``GET /openapi.json``)."""
        return [
            ServedRoute(
                method=ep.route.method.upper(),
                path=ep.path,
                public=ep.public,
                plugin=ep.plugin.name,
                route=ep.route,
            )
            for ep in self._kernel.router.endpoints()
        ]

    def list(self) -> list[PluginInfo]:
        return [self.info(rec) for _, rec in sorted(self.records.items())]

    def info(self, rec: Plugin) -> PluginInfo:
        prefix = "" if rec.builtin else f"/api/v1/{rec.name}"
        inst = rec.installed
        return PluginInfo(
            name=rec.name,
            version=rec.version,
            description=rec.description,
            source=rec.source,
            builtin=rec.builtin,
            essential=rec.essential,
            installed=rec.source == "installed",
            loaded=rec.loaded,
            enabled=rec.enabled,
            state=rec.state,
            unstable=rec.unstable,
            api=sdk.API_VERSION,
            module=rec.module,
            manifest_path=str(inst.manifest_path) if inst else None,
            install_dir=str(inst.install_dir) if inst else None,
            installed_at_ms=inst.installed_at_ms if inst else None,
            sha256=inst.sha256 if inst else None,
            health={"status": rec.health.status, "detail": rec.health.detail},
            routes=[
                {
                    "method": r.method.upper(),
                    "path": prefix + r.path,
                    "public": r.public if rec.builtin else _listed(r, rec.public_routes),
                }
                for r in rec.routes
            ],
            ui_pages=[dict(p) for p in inst.manifest.ui_pages]
            if inst is not None and inst.manifest is not None
            else [],
            error=rec.error,
        )
