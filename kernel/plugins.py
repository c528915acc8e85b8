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
import importlib
import logging
import sqlite3
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from attrs import define, field

import sdk
from sdk import (
    Conflict,
    Contribution,
    EventHandler,
    Health,
    Migration,
    NotFound,
    PluginChange,
    PluginContext,
    PluginInfo,
    Route,
    Unrecoverable,
)

from .hooks import HookFailed, Hooks

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
    ("llm", "builtin_plugins.llm", True),
    ("cron", "builtin_plugins.cron", False),
    ("timers", "builtin_plugins.timers", False),
    ("webhooks", "builtin_plugins.webhooks", False),
    ("capabilities", "builtin_plugins.capabilities", True),
    ("workflows", "builtin_plugins.workflows", True),
    ("skills", "builtin_plugins.skills", True),
    ("sources", "builtin_plugins.sources", True),
)
ESSENTIAL = frozenset(name for name, _, essential in BUILTINS if essential)

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE plugin_state (
            name TEXT PRIMARY KEY, enabled INTEGER NOT NULL, unstable INTEGER NOT NULL DEFAULT 0
        );
        """,
    )
]
Source = Literal["builtin", "entry_point", "installed"]
HEALTH_TIMEOUT_SEC = 10.0


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
    keys_declared: bool = False
    contributed: dict[str, list[Any]] = field(factory=dict)
    ctx: PluginContext | None = None

    @property
    def builtin(self) -> bool:
        return self.source == "builtin"

    @property
    def module(self) -> str:
        return getattr(self.obj, "__name__", type(self.obj).__name__)


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
        except Exception:
            self._unload(rec)
            raise
        rec.loaded = True
        self.on_routes_changed()

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
        rows = await self._kernel.store.fetchall("SELECT name, enabled, unstable FROM plugin_state")
        for row in rows:
            rec = self.records.get(row["name"])
            if rec is None or rec.essential:
                continue
            rec.enabled, rec.unstable = bool(row["enabled"]), bool(row["unstable"])
            if not rec.enabled and rec.loaded:
                self._unload(rec)

    async def start_all(self) -> None:
        """Phase 2: start every enabled plugin in load order. A built-in that fails aborts."""
        for rec in list(self.records.values()):
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
        except HookFailed as exc:
            await kernel.sources.remove_plugin(rec.name)
            with contextlib.suppress(HookFailed):
                await self.hooks.call("on_shutdown", rec.name, ctx=rec.ctx, timeout=timeout)
            raise self._fail(rec, exc) from None
        kernel.bus.subscribe(rec.name, rec.handlers, builtin=rec.builtin)
        rec.state, rec.error, rec.failures = "running", None, 0

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
        with contextlib.suppress(HookFailed):  # logged and counted; the plugin is removed anyway
            await self.hooks.call("on_shutdown", rec.name, ctx=rec.ctx, timeout=timeout)
        rec.state = "disabled"

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
            asyncio.get_running_loop().create_task(self._quarantine(rec, hook))

    def note_success(self, plugin: str) -> None:
        if (rec := self.records.get(plugin)) is not None:
            rec.failures = 0

    async def _quarantine(self, rec: Plugin, hook: str) -> None:
        async with self._lock:
            if rec.state != "running":
                return
            log.error(
                "plugin %s quarantined after %d failures in a row (last: %s)",
                rec.name,
                rec.failures,
                hook,
            )
            await self._stop(rec)
            self._unload(rec)
            error = f"quarantined after {rec.failures} failures in a row (last: {hook})"
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
                return PluginChange(ok=True, name=name, state=rec.state, changed=False)
            await self._stop(rec)
            self._unload(rec)
            await self._persist(rec, enabled=False)
            rec.enabled = False
        await self._kernel.publish_system(
            "plugin:disabled", {"name": name, "version": rec.version}, source="plugin-manager"
        )
        return PluginChange(ok=True, name=name, state="disabled", changed=True)

    async def _persist(self, rec: Plugin, *, enabled: bool, unstable: bool = False) -> None:
        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO plugin_state (name, enabled, unstable) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled, unstable = excluded.unstable",
                (rec.name, int(enabled), int(unstable)),
            )

        await self._kernel.store.write(save)

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

    def list(self) -> list[PluginInfo]:
        return [self.info(rec) for _, rec in sorted(self.records.items())]

    def info(self, rec: Plugin) -> PluginInfo:
        prefix = "" if rec.builtin else f"/api/v1/{rec.name}"
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
            manifest_path=None,
            install_dir=None,
            installed_at_ms=None,
            sha256=None,
            health={"status": rec.health.status, "detail": rec.health.detail},
            routes=[
                {"method": r.method.upper(), "path": prefix + r.path, "public": r.public}
                for r in rec.routes
            ],
            ui_pages=[],
            error=rec.error,
        )
