"""The one composition root: ``create_kernel()`` wires the kernel, ``create_app()`` serves it.

The kernel's responsibilities, each in its own module: the plugin manager and its hook facade
(``plugins``, ``hooks``), the live router with auth (``router``, ``auth``), the event bus
(``bus``), the lifecycle (``lifecycle``), the store and the audit log on it (``store``,
``audit``) and the configuration (``config``). Every feature is a plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import quart
from quart import Quart

from sdk import ConfigChange, Migration, PluginContext, PublishResult, Stash

from . import audit as audit_module
from . import bus as bus_module
from . import dead_letters as dead_letters_module
from . import plugins as plugins_module
from . import sources as sources_module
from .audit import SqliteAudit
from .bus import EventBus, PluginBus
from .config import Config, _is_secret
from .convert import converter
from .dead_letters import DeadLetters
from .errors import error_body
from .hooks import HookFailed, Hooks, PluginThreads, new_manager
from .ids import now_ms
from .lifecycle import Lifecycle
from .metrics import KernelMetrics, LoopWatch
from .plugins import PluginManager
from .router import Router
from .sources import PluginSources, SourceRegistry
from .store import SqliteStore

__all__ = ["Kernel", "KernelApp", "create_app", "create_kernel"]

log = logging.getLogger("aman")

try:
    __version__ = version("aman")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.1.0"

_CONFIG_LOG = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE config_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, timestamp_ms INTEGER NOT NULL,
            operator TEXT NOT NULL, key TEXT NOT NULL, old_value TEXT, new_value TEXT
        );
        """,
    )
]


class Kernel:
    """The microkernel: bus, auth, lifecycle, plugin manager, router, store, config."""

    def __init__(self, config: Config) -> None:
        self.version = __version__
        self.config = config
        self.metrics = KernelMetrics()
        self.loop_watch = LoopWatch(self.metrics)
        self.converter = converter
        self.stash = Stash()
        self.store = SqliteStore()
        self.store.on_full = self._storage_full
        self.audit = SqliteAudit(self.store, lambda: config.get("audit.max_records"))
        self.dead_letters = DeadLetters(self.store, config.get)
        threads = PluginThreads()
        self.bus = EventBus(
            config, self.metrics.registry, self.store, self.dead_letters, threads=threads
        )
        self.bus.audit = self._system_audit
        self.sources = SourceRegistry(self.bus, self.store)
        self.plugins = PluginManager(self, Hooks(new_manager(), self.metrics, threads))
        self.router = Router(self)
        self.lifecycle = Lifecycle(self)
        self.plugins.on_routes_changed = self.rebuild_routes
        self.bus.on_failure = lambda plugin: self.plugins.note_failure(plugin, "event handler")
        self.bus.on_success = self.plugins.note_success
        config.on_change = self._config_changed
        self.boot_task: asyncio.Task[None] | None = None
        self.composed = False
        self._background: set[asyncio.Future[Any]] = set()

    @property
    def runtime_dir(self) -> Path:
        return self.config.resolve_path("runtime.dir")

    def context(self, name: str, version: str, *, builtin: bool) -> PluginContext:
        return PluginContext(
            name=name,
            version=version,
            builtin=builtin,
            data_dir=self.runtime_dir / "plugin-data" / name,
            log=logging.getLogger(f"aman.plugin.{name}"),
            stash=self.stash,
            converter=self.converter,
            bus=PluginBus(self.bus, name, builtin=builtin),
            store=self.store,
            settings=self.config,
            lifecycle=self.lifecycle,
            plugins=self.plugins,
            audit=self.audit,
            registry=self.metrics.registry,
            sources=PluginSources(self.sources, name),
        )

    def rebuild_routes(self) -> None:
        """Swap in a route table built from the plugins now (once composed; while
        ``create_kernel`` loads plugins one by one, it builds the table once at the end)."""
        if self.composed:
            self.router.rebuild(self.plugins.records.values(), lambda plugin: plugin.public_routes)

    async def publish_system(self, event_type: str, payload: Any, *, source: str) -> PublishResult:
        return await self.bus.publish(event_type, payload, source=source)

    # --- phase 1 ---------------------------------------------------------------------------

    async def open_storage(self) -> None:
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.store.open(
            self.runtime_dir / "aman.db",
            synchronous=self.config.get("storage.synchronous"),
            max_bytes=self.config.get("storage.max_db_bytes"),
        )
        await self.store.migrate("kernel.audit", audit_module.MIGRATIONS)
        await self.store.migrate("kernel.plugins", plugins_module.MIGRATIONS)
        await self.store.migrate("kernel.config", _CONFIG_LOG)
        await self.store.migrate("kernel.bus", bus_module.MIGRATIONS)
        await self.store.migrate("kernel.dead_letters", dead_letters_module.MIGRATIONS)
        await self.store.migrate("kernel.sources", sources_module.MIGRATIONS)
        await self.sources.open()
        await self.audit.flush()
        await self.dead_letters.open()
        replayed = await self.bus.replay()
        if replayed:
            log.info("replaying %d guaranteed events not done before the last stop", replayed)
        await self.plugins.restore_state()

    async def start_plugins(self) -> None:
        """Phase 2: start the plugins, then dispatch (replayed events reach their subscribers)."""
        await self.plugins.load_installed()
        self.config.claim()  # the installed plugins' keys are declared now
        await self.plugins.start_all()
        self.bus.start()

    def _storage_full(self, full: bool, error: str) -> None:
        """The store ran out of space, or has room again: log, gauge and event
        (``storage:full``, ``storage:recovered``; decided here, see docs/decisions.md)."""
        self.metrics.storage_full.set(1 if full else 0)
        if full:
            log.error("storage is full (%s): writes answer 503 until there is room", error)
        else:
            log.warning("storage has room again: writes resume")
        payload = {"error": error, "max_db_bytes": self.config.get("storage.max_db_bytes")}
        event_type = "storage:full" if full else "storage:recovered"
        task = asyncio.ensure_future(self.bus.publish(event_type, payload, source="storage"))
        self._background.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("could not publish a storage event: %s", exc)

    async def _system_audit(self, action: str, target: str, detail: str) -> None:
        await self.audit.record(
            operator="system", action=action, target=target, outcome="ok", detail=detail
        )

    async def close_storage(self) -> None:
        await self.bus.stop()
        await self.store.close()

    async def persist_early_audit(self) -> None:
        """At exit: write the audit records of a process whose store never opened (a shutdown
        before the start, ``runtime.autostart = false``), so that they are not lost (D9)."""
        if not self.audit.pending or self.store.path is not None:
            return
        synchronous = self.config.get("storage.synchronous")
        await self.store.open(self.runtime_dir / "aman.db", synchronous=synchronous)
        try:
            await self.store.migrate("kernel.audit", audit_module.MIGRATIONS)
            await self.audit.flush()
        finally:
            await self.store.close()

    # --- configuration changes -------------------------------------------------------------

    async def _config_changed(
        self, change: ConfigChange, values: Mapping[str, tuple[Any, Any]], operator: str
    ) -> None:
        """Record a ``/config/set``, publish ``config_changed`` and tell the owning plugins."""
        ts = now_ms()
        # A new storage cap applies after the change is logged, or first when the store is
        # full: then the log needs the room it gives.
        cap = "storage.max_db_bytes" in change.applied
        if cap and self.store.full:
            await self.store.set_max_bytes(self.config.get("storage.max_db_bytes"))
            cap = False

        def shown(key: str, value: Any) -> str | None:
            if value is None:
                return None
            return "[REDACTED]" if _is_secret(key) and value else repr(value)

        def save(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO config_log (timestamp_ms, operator, key, old_value, new_value)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (ts, operator, k, shown(k, old), shown(k, new))
                    for k, (old, new) in sorted(values.items())
                ],
            )

        await self.store.write(save)
        keys = sorted(values)
        await self.bus.publish(
            "config_changed",
            {"keys": keys, "restart_required": change.restart_required, "operator": operator},
            source="config",
            delivery="at_least_once",
        )
        if cap:
            await self.store.set_max_bytes(self.config.get("storage.max_db_bytes"))
        owners: dict[str, dict[str, Any]] = {}
        for key in change.applied:
            owner = self.config.owner(key)
            if key.startswith("plugin."):
                owner = key.split(".")[1]
            if owner in self.plugins.records:
                owners.setdefault(owner, {})[key] = self.config.get(key)
        for owner, changes in owners.items():
            rec = self.plugins.records[owner]
            if rec.state == "running":
                # A failure is counted and logged by the facade; the change stays applied.
                with contextlib.suppress(HookFailed):
                    await self.plugins.hooks.call(
                        "on_config_changed",
                        owner,
                        ctx=rec.ctx,
                        changes=changes,
                        timeout=self.config.get("plugins.load_timeout_sec"),
                    )


def create_kernel(
    plugins: Iterable[object | tuple[str, object]] = (),
    *,
    config: Config | None = None,
    config_path: Path | None = None,
    runtime_dir: Path | str | None = None,
    settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    builtins: bool = True,
    load_entry_points: bool = False,
    disabled: Iterable[str] = (),
) -> Kernel:
    """Build a kernel: built-ins, then entry points, then the given ``plugins`` (objects named by
    their ``name`` attribute or module, or ``(name, object)`` pairs).

    :param settings: command-line style overrides by dotted key (``{"http.token": "t"}``).
    :raises sdk.ConfigError: a bad plugin, a misspelt hook or an invalid configuration.
    """
    cli = dict(settings or {})
    if runtime_dir is not None:
        cli["runtime.dir"] = str(runtime_dir)
    config = config or Config(config_path, cli=cli, env=env)
    kernel = Kernel(config)
    if builtins:
        kernel.plugins.load_builtins(disabled)
    if load_entry_points:
        kernel.plugins.load_entry_points()
    for item in plugins:
        name, obj = item if isinstance(item, tuple) else (_plugin_name(item), item)
        kernel.plugins.add(name, obj, source="entry_point")
    kernel.plugins.check_pending()
    config.validate(installed=kernel.plugins.installed_names())
    kernel.composed = True
    kernel.rebuild_routes()
    return kernel


def _plugin_name(obj: object) -> str:
    name = getattr(obj, "name", None) or getattr(obj, "__name__", type(obj).__name__)
    return str(name).rsplit(".", 1)[-1].replace("_", "-").lower()


class KernelApp(Quart):
    """Quart with its own routing bypassed: every request goes to the kernel's live router."""

    kernel: Kernel

    async def dispatch_request(self, request_context: Any = None) -> quart.Response:
        return await self.kernel.router.dispatch(quart.request)


def create_app(kernel: Kernel) -> KernelApp:
    """The ASGI app of a kernel. Serving starts the runtime (unless ``runtime.autostart`` is
    false) in the background, so the health endpoints answer during start-up."""
    app = KernelApp("aman")
    app.kernel = kernel
    app.config.update(
        MAX_CONTENT_LENGTH=None,  # bodies are limited by the router, per route, on bytes read
        RESPONSE_TIMEOUT=None,  # streams (SSE) stay open
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )

    @app.before_serving
    async def _boot() -> None:
        kernel.loop_watch.start()
        if kernel.config.get("runtime.autostart"):
            kernel.boot_task = asyncio.get_running_loop().create_task(kernel.lifecycle.start())

    @app.after_serving
    async def _halt() -> None:
        await kernel.lifecycle.shutdown()
        await kernel.persist_early_audit()
        await kernel.loop_watch.stop()

    @app.errorhandler(Exception)
    async def _escaped(exc: Exception) -> quart.Response:
        """An error the router did not answer (its audit record could not be written: the
        storage is full) is still the JSON error of contract D4, not Quart's HTML page."""
        status, body, headers = error_body(exc)
        return quart.Response(
            json.dumps(body), status=status, headers=headers, content_type="application/json"
        )

    return app
