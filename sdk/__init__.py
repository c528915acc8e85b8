"""The aman SDK: everything a plugin imports, built-in or third-party.

A plugin is a module with hook implementations marked ``@hookimpl``::

    from sdk import Route, hookimpl

    @hookimpl
    def register_routes(ctx):
        return [Route(method="GET", path="/ping", handler=ping)]

    async def ping(ctx):
        return {"pong": ctx.name}
"""

from __future__ import annotations

import pluggy

from .context import PluginContext
from .errors import (
    ConfigError,
    Conflict,
    Failure,
    Forbidden,
    Invalid,
    NotFound,
    SdkError,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unrecoverable,
    UnsupportedMediaType,
)
from .hookspecs import API_VERSION
from .ids import now_ms, uuid7
from .models import (
    AuditNote,
    ConfigKey,
    ConfigRule,
    Contribution,
    Delivery,
    Event,
    EventHandler,
    EventMetadata,
    Health,
    Migration,
    Priority,
    ProviderConfig,
    ProviderType,
    PublishResult,
    Request,
    Response,
    Route,
    Stash,
    StashKey,
    TrustLevel,
    UiPage,
    in_range,
)
from .services import (
    NOTIFIER,
    SKILL_RUNNER,
    AuditLog,
    AuditPage,
    AuditRecord,
    Bus,
    ConfigChange,
    DeadLetterQueue,
    Lifecycle,
    Notifier,
    PluginChange,
    PluginInfo,
    PluginInstalled,
    Plugins,
    PluginUninstalled,
    Settings,
    SkillRunner,
    Store,
)
from .sources import Emit, EventSource, ImChannel, SourceInfo, Sources
from .tasks import cancel

__all__ = [
    "API_VERSION",
    "NOTIFIER",
    "SKILL_RUNNER",
    "AuditLog",
    "AuditNote",
    "AuditPage",
    "AuditRecord",
    "Bus",
    "ConfigChange",
    "ConfigError",
    "ConfigKey",
    "ConfigRule",
    "Conflict",
    "Contribution",
    "DeadLetterQueue",
    "Delivery",
    "Emit",
    "Event",
    "EventHandler",
    "EventMetadata",
    "EventSource",
    "Failure",
    "Forbidden",
    "Health",
    "ImChannel",
    "Invalid",
    "Lifecycle",
    "Migration",
    "NotFound",
    "Notifier",
    "PluginChange",
    "PluginContext",
    "PluginInfo",
    "PluginInstalled",
    "PluginUninstalled",
    "Plugins",
    "Priority",
    "ProviderConfig",
    "ProviderType",
    "PublishResult",
    "Request",
    "Response",
    "Route",
    "SdkError",
    "Settings",
    "SkillRunner",
    "SourceInfo",
    "Sources",
    "Stash",
    "StashKey",
    "Store",
    "TooLarge",
    "TrustLevel",
    "UiPage",
    "Unauthorized",
    "Unavailable",
    "Unrecoverable",
    "UnsupportedMediaType",
    "cancel",
    "hookimpl",
    "in_range",
    "now_ms",
    "uuid7",
]

#: The marker for hook implementations (pluggy project name ``aman``).
hookimpl = pluggy.HookimplMarker("aman")
