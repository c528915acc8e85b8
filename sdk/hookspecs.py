"""The hooks of SDK API "1": the versioned contract between the runtime and its plugins.

Built-in and third-party plugins implement the same hooks with the ``hookimpl`` marker. Hooks are
called with keyword arguments, plugin by plugin, by the kernel's facade (``kernel/hooks.py``);
an implementation may accept any subset of a hook's parameters, so parameters can be added later.

Naming: ``register_<things>`` returns a list and every implementation is called; ``on_<event>``
is a notification whose return value is ignored. Hooks marked "may be async" accept an ``async
def`` implementation; the kernel awaits it with a time limit. Sync implementations of those hooks
run in a worker thread so that they cannot block the event loop.

``docs/hooks.md`` has one section per hook; a contract test keeps them in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from prometheus_client import CollectorRegistry

    from .context import PluginContext
    from .models import (
        ConfigKey,
        ConfigRule,
        EventHandler,
        Health,
        Migration,
        ProviderType,
        Route,
        UiPage,
    )
    from .policies import InputPolicy, OutputPolicy, ToolGuard
    from .sources import EventSource, ImChannel
    from .tools import Tool

__all__ = ["API_VERSION", "hookspec"]

API_VERSION = "1"
hookspec = pluggy.HookspecMarker("aman")


@hookspec
def on_startup(ctx: PluginContext) -> None:
    """Start the plugin: open its resources, start its background tasks.

    :param ctx: The plugin's context.
    :returns: Nothing.

    Called once each time the plugin starts: at start-up in phase 2 (in load order), at install and
    at enable. May be async; limited to ``plugins.load_timeout_sec``. Raising (or timing out) fails
    the start: the plugin is marked ``failed`` (a built-in plugin aborts start-up).

    .. versionadded:: 1
    """


@hookspec
def on_shutdown(ctx: PluginContext) -> None:
    """Stop the plugin: cancel its tasks and release what ``on_startup`` took.

    :param ctx: The plugin's context.
    :returns: Nothing.

    Called once each time the plugin stops: disable, uninstall, quarantine, upgrade and runtime
    shutdown (in reverse load order). May be async; limited to ``plugins.unload_timeout_sec``; an
    error or a timeout is logged and counted, and the plugin is removed anyway.

    .. versionadded:: 1
    """


@hookspec
def health_check(ctx: PluginContext) -> Health | Mapping[str, str] | None:
    """Report the plugin's health.

    :param ctx: The plugin's context.
    :returns: A :class:`~sdk.Health` (or a mapping with ``status`` and ``detail``); ``status`` is
        ``healthy``, ``degraded`` or ``error``. ``None`` counts as healthy.

    Called after the plugin starts and then every ``plugins.health_interval_sec``. May be async;
    limited to 10 s. ``error`` at start fails the start; later it is reported in ``/plugins``.
    Raising counts as ``error``.

    .. versionadded:: 1
    """


@hookspec
def register_routes(ctx: PluginContext) -> list[Route]:
    """Contribute HTTP routes.

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.Route`. Built-in plugins mount at the API's own paths;
        installed plugins under ``/api/v1/<name>``.

    Called once when the plugin is loaded (boot, install, enable), before ``on_startup``, so that
    routes marked ``availability="always"`` answer from phase 0. Sync only. Two routes with the
    same method and path fail the load.

    .. versionadded:: 1
    """


@hookspec
def register_event_handlers(ctx: PluginContext) -> list[EventHandler]:
    """Subscribe to events on the bus.

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.EventHandler`, each with a name, a handler (sync or async,
        receiving the :class:`~sdk.Event`) and optional filters on type, source, priority and
        payload.

    Called once each time the plugin starts, after ``on_startup``; the subscriptions end when the
    plugin stops. Sync only. A handler that raises never affects other subscribers.

    .. versionadded:: 1
    """


@hookspec
def register_config(ctx: PluginContext) -> list[ConfigKey | ConfigRule]:
    """Declare the configuration keys the plugin owns, and the rules between them.

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.ConfigKey` (dotted name, type, default, range or choices,
        whether a change needs a restart, an overriding environment variable) and
        :class:`~sdk.ConfigRule` (a check over several keys).

    Called once when the plugin is loaded, before the configuration file is validated, so its keys
    are accepted in ``aman.toml`` and checked by ``/config/set``. Sync only. A plugin's free-form
    ``[plugin.<name>]`` table needs no declaration.

    .. versionadded:: 1
    """


@hookspec
def register_migrations(ctx: PluginContext) -> list[Migration]:
    """Declare versioned schema steps for the plugin's own tables in the runtime store.

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.Migration`; each ``version`` is applied once, in order,
        and recorded per plugin.

    Called once each time the plugin starts, before its other start hooks (at start-up in
    phase 1, when the store opens). Sync only. A failing step fails the plugin's start.

    .. versionadded:: 1
    """


@hookspec
def register_metrics(ctx: PluginContext, registry: CollectorRegistry) -> None:
    """Register Prometheus collectors on the kernel's registry.

    :param ctx: The plugin's context.
    :param registry: The kernel's ``CollectorRegistry`` (one per kernel, never the global one).
    :returns: Nothing.

    Called once when the plugin is loaded. Sync only. Collectors a plugin registers are
    unregistered when it is unloaded.

    .. versionadded:: 1
    """


@hookspec
def register_llm_providers(ctx: PluginContext) -> list[ProviderType]:
    """Contribute LLM provider implementations.

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.ProviderType`, each naming a ``type`` usable in
        ``llm.providers.<name>.type`` and a factory that builds a provider from its
        :class:`~sdk.ProviderConfig`. A provider has at least ``async probe()``.

    Read by the ``llm`` plugin while the contributing plugin runs; disabling the plugin makes its
    types unavailable (providers of that type report ``enabled: false``). Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_tools(ctx: PluginContext) -> list[Tool]:
    """Contribute tools that agents can call and operators can run (http-api §18).

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.Tool`: name, description, JSON Schema of the arguments,
        sensitivity (``low``/``medium``/``high``, default ``medium``) and handler
        ``handler(args, tc)`` (sync handlers run in a worker thread).

    Collected when the plugin starts; a tool name another running plugin already provides fails
    the start. The ``tools`` plugin runs every call through the schema, the tool guards of
    ``register_policies``, approval (agent calls) and ``runtime.tool_timeout_sec``. The tools
    disappear when the plugin stops. Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_policies(ctx: PluginContext) -> list[InputPolicy | OutputPolicy | ToolGuard]:
    """Contribute safety policies: input checks, output checks and tool guards.

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.InputPolicy` (chat texts before they are stored),
        :class:`~sdk.OutputPolicy` (final replies before they are stored) and
        :class:`~sdk.ToolGuard` (tool calls before they run), each with a ``name`` and an
        ``order``; each kind runs in ascending order across all plugins.

    Read on every check while the plugin runs, so a disabled plugin's policies stop applying at
    once. A check that raises fails closed (the text or call is refused). Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_sources(ctx: PluginContext) -> list[EventSource]:
    """Contribute event sources.

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.EventSource` (id, kind, mode, trust level and the
        start/stop/pause/resume/reconfigure methods). Source ids are unique among all sources;
        a collision fails the plugin's start.

    Called once each time the plugin starts, after ``on_startup``. The kernel starts the sources
    at phase 4 (or at once in a ready runtime), pauses them for operators and under
    backpressure, and stops them when the plugin stops. Sources added later with
    ``ctx.sources.add`` behave the same. Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_im_channels(ctx: PluginContext) -> list[ImChannel]:
    """Contribute IM platforms (Telegram, Slack, Discord, Matrix, ...).

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.ImChannel`, each a platform name and a factory building the
        source ``chat:<platform>:<instance>`` from the plugin's configuration.

    Read while the plugin runs by ``POST /im-channel/{platform}/{instance}/reload``, which
    shuts the old source down and starts a fresh one. Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_skill_executors(ctx: PluginContext) -> Mapping[str, Callable[..., Any]]:
    """Give skills something to do: executors by skill name.

    :param ctx: The plugin's context.
    :returns: A mapping from skill name to an executor ``executor(event)`` (sync or async). A
        skill without an executor is declarative: it succeeds without doing anything.

    Read by the ``skills`` plugin while the contributing plugin runs, when it dispatches a
    matching event to the skill and when a workflow action ``{skill: <name>}`` runs it. An
    executor that raises (or exceeds its limit) fails that execution. Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_workflows(ctx: PluginContext) -> list[Mapping[str, Any]]:
    """Contribute workflow definitions.

    :param ctx: The plugin's context.
    :returns: A list of definitions in the model of ``formats.md`` §3 (the canonical form, as
        mappings), validated like workflow files.

    Read by the ``workflows`` plugin at phase 3 and when the contributing plugin is enabled;
    built-in definitions come first, then plugins', then files'. Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_guards(ctx: PluginContext) -> Mapping[str, Callable[..., Any]]:
    """Contribute workflow guards by name.

    :param ctx: The plugin's context.
    :returns: A mapping from guard name to ``guard(instance, event) -> bool`` (sync or async).

    Read by the ``workflows`` plugin when definitions are loaded (an unknown guard name is a load
    error) and when a transition with that guard is taken. Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_pipelines(ctx: PluginContext) -> Mapping[str, Callable[..., Any]]:
    """Contribute workflow pipelines by id, for actions ``{pipeline: <id>}``.

    :param ctx: The plugin's context.
    :returns: A mapping from pipeline id to ``pipeline(instance, event)`` (sync or async). It
        fails the action by raising; it may return ``{"partial_rollback": True}``.

    Read by the ``workflows`` plugin when an action runs (limit ``workflows.action_timeout_sec``).
    Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_capabilities(ctx: PluginContext) -> list[str]:
    """Declare capability names the plugin provides (``GET /capabilities``).

    :param ctx: The plugin's context.
    :returns: Capability names (``rss``, ``telegram``, ...).

    Read by the ``capabilities`` plugin on every request while the plugin runs, so an installed
    or enabled plugin's capabilities show up at once. Sync only.

    .. versionadded:: 1
    """


@hookspec
def register_ui_pages(ctx: PluginContext) -> list[UiPage | Mapping[str, str] | str]:
    """Contribute pages to the runtime's UI (``GET /ui/pages``).

    :param ctx: The plugin's context.
    :returns: A list of :class:`~sdk.UiPage` (or mappings with ``id``, ``label``, ``path``, or
        bare ids). ``label`` defaults to the id with its first letter upper-cased; ``path`` is the
        page's entry file inside the plugin's ``ui/`` folder, relative to the plugin's root,
        default ``ui/index.html``.

    Read by the ``ui`` plugin on every ``GET /ui/pages`` while the plugin runs, after the pages of
    the manifest's ``[ui] pages`` (installed plugins). The files of the plugin's ``ui/`` folder are
    served publicly at ``/api/v1/<plugin>/ui/<path>``, so a page's ``url`` is
    ``/api/v1/<plugin>/<path>``. A page with an invalid id, label or path (or an id the plugin
    already listed) is left out and logged. Sync only.

    .. versionadded:: 1
    """


@hookspec
def on_config_changed(ctx: PluginContext, changes: Mapping[str, Any]) -> None:
    """React to a live configuration change.

    :param ctx: The plugin's context.
    :param changes: The changed keys that took effect at once, with their new values (dotted
        names; ``plugin.<name>.<key>`` for the plugin's own table, or keys it declared).

    Called after ``/config/set`` applied keys the plugin owns or its ``[plugin.<name>]`` table.
    May be async. Errors are logged and counted; the change stays applied.

    .. versionadded:: 1
    """
