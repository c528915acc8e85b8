"""``PluginContext``: what every hook receives as ``ctx``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import frozen

from .models import Stash

if TYPE_CHECKING:
    from cattrs import Converter
    from prometheus_client import CollectorRegistry

    from .services import AuditLog, Bus, Lifecycle, Plugins, Settings, Store
    from .sources import Sources

__all__ = ["PluginContext"]


@frozen(kw_only=True)
class PluginContext:
    """The calling plugin's view of the runtime.

    :ivar name: the plugin's name (``cron``, ``hello``).
    :ivar version: its version (the runtime version for built-ins).
    :ivar data_dir: ``<runtime.dir>/plugin-data/<name>/``, the plugin's own directory.
    :ivar log: a logger named ``aman.plugin.<name>``.
    :ivar stash: the kernel's typed stash, for plugin state (``ctx.stash[KEY]``).
    :ivar converter: the one cattrs converter of the kernel.
    :ivar bus: the event bus; events default to the source ``plugin:<name>``.
    :ivar store: the runtime's SQLite store (tables from ``register_migrations``).
    :ivar settings: the effective configuration.
    :ivar lifecycle: the runtime's phase and status; start and shutdown.
    :ivar plugins: the plugin manager.
    :ivar audit: the audit log.
    :ivar registry: the kernel's Prometheus registry.
    :ivar sources: the event source registry; sources the plugin adds belong to it.
    """

    name: str
    version: str
    builtin: bool
    data_dir: Path
    log: logging.Logger
    stash: Stash
    converter: Converter
    bus: Bus
    store: Store
    settings: Settings
    lifecycle: Lifecycle
    plugins: Plugins
    audit: AuditLog
    registry: CollectorRegistry
    sources: Sources

    @property
    def config(self) -> Mapping[str, Any]:
        """The plugin's ``[plugin.<name>]`` table, as it is now."""
        return self.settings.plugin_config(self.name)
