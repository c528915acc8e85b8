"""LLM: the configured providers, their backend health and ``/health/llm`` (http-api §2; D15).

Provider implementations come from plugins (``register_llm_providers``): ``llm-echo`` and,
later, ``llm-openai`` are built in. This plugin owns the ``llm.*`` keys, builds a provider for
each ``[llm.providers.<name>]`` table (plus ``echo``, which always exists unless the file defines
one with that name), and keeps each backend's state: 3 failures in a row make it ``degraded``,
6 ``down``, any success ``ok``. A probe runs at start and then every 60 s while a backend is
not ``ok``.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from attrs import define

from sdk import (
    ConfigKey,
    ConfigRule,
    PluginContext,
    ProviderConfig,
    ProviderType,
    Route,
    StashKey,
    Unavailable,
    cancel,
    hookimpl,
    now_ms,
)

PROBE_INTERVAL_SEC = 60
PROBE_TIMEOUT_SEC = 5
DEGRADED_AFTER, DOWN_AFTER = 3, 6


@define
class Backend:
    """One configured provider and what is known of its backend."""

    config: ProviderConfig
    instance: Any = None
    state: str = "unknown"
    consecutive_failures: int = 0
    last_error: str | None = None
    checked_at_ms: int | None = None


class Registry:
    """The providers of the configuration, built from the types running plugins contribute."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self._backends: dict[str, Backend] = {}
        self._task: asyncio.Task[None] | None = None

    # --- configuration ----------------------------------------------------------------------

    def types(self) -> dict[str, ProviderType]:
        return {
            c.item.type: c.item
            for c in self._ctx.plugins.contributions("register_llm_providers")
            if isinstance(c.item, ProviderType)
        }

    def refresh(self) -> dict[str, Backend]:
        """Match the backends to the configuration now; keep the state of unchanged ones."""
        tables = self._ctx.settings.table("llm.providers")
        tables.setdefault("echo", {"type": "echo"})
        types = self.types()
        backends = {}
        for name, table in sorted(tables.items()):
            kind = types.get(table.get("type", ""))
            config = _provider_config(name, table, kind)
            old = self._backends.get(name)
            backends[name] = (
                old if old is not None and old.config == config else Backend(config=config)
            )
            if kind is None:
                backends[name].instance = None
            elif backends[name].instance is None:
                backends[name].instance = kind.factory(config)
        self._backends = backends
        return backends

    def default_provider(self) -> str:
        """The provider of the default agent (``chat.default_agent``)."""
        settings = self._ctx.settings
        try:
            agent = settings.get("chat.default_agent")
            named = settings.get(f"agents.{agent}.provider")
        except KeyError:  # no agents plugin yet: the default agent uses the default provider
            named = None
        return str(named or settings.get("llm.default_provider"))

    # --- health -----------------------------------------------------------------------------

    async def record(self, name: str, error: BaseException | None) -> None:
        """Count one request or probe of ``name`` and publish a change of its state."""
        backend = self._backends.get(name)
        if backend is None:
            return
        before = backend.state
        backend.checked_at_ms = now_ms()
        if error is None:
            backend.consecutive_failures, backend.last_error, backend.state = 0, None, "ok"
        else:
            backend.consecutive_failures += 1
            backend.last_error = redact(f"{type(error).__name__}: {error}", backend.config.api_key)
            failures = backend.consecutive_failures
            if failures >= DOWN_AFTER:
                backend.state = "down"
            elif failures >= DEGRADED_AFTER:
                backend.state = "degraded"
        after = backend.state
        event = {"degraded": "llm_backend_degraded", "down": "llm_backend_down"}.get(after)
        if after == "ok" and before in ("degraded", "down"):
            event = "llm_backend_recovered"
        if after != before and event:
            await self._ctx.bus.publish(
                event,
                {
                    "provider": name,
                    "base_url": backend.config.base_url,
                    "from": before,
                    "to": after,
                    "consecutive_failures": backend.consecutive_failures,
                    "last_error": backend.last_error,
                },
                source=f"llm:{name}",
            )

    async def probe(self, name: str) -> None:
        backend = self._backends[name]
        if backend.instance is None:
            return
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SEC):
                await backend.instance.probe()
        except Exception as exc:  # noqa: BLE001 - a failed probe is a state, not an error
            await self.record(name, exc)
        else:
            await self.record(name, None)

    async def probe_all(self, *, only_unhealthy: bool = False) -> None:
        for name, backend in self.refresh().items():
            if not only_unhealthy or backend.state != "ok":
                await self.probe(name)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="aman-llm-probes")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _loop(self) -> None:
        await self.probe_all()
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SEC)
            await self.probe_all(only_unhealthy=True)

    def health(self, name: str) -> dict[str, Any]:
        backend = self._backends[name]
        return {
            "name": name,
            "type": backend.config.type,
            "enabled": backend.instance is not None,
            "backend": backend.state,
            "consecutive_failures": backend.consecutive_failures,
            "last_error": backend.last_error,
            "checked_at_ms": backend.checked_at_ms,
        }


REGISTRY = StashKey[Registry]()
_SECRETS = re.compile(r"(Bearer\s+)\S+|\bsk-[A-Za-z0-9_-]{8,}", re.IGNORECASE)


def redact(text: str, api_key: str = "") -> str:
    """Replace API keys and bearer tokens with ``[REDACTED]``."""
    if api_key:
        text = text.replace(api_key, "[REDACTED]")
    return _SECRETS.sub(lambda m: (m.group(1) or "") + "[REDACTED]", text)


def _provider_config(name: str, table: dict[str, Any], kind: ProviderType | None) -> ProviderConfig:
    env_name = "AMAN_PROVIDER_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_API_KEY"
    key_env = table.get("api_key_env", "")
    api_key = (
        os.environ.get(env_name)
        or (os.environ.get(key_env, "") if key_env else "")
        or table.get("api_key", "")
    )
    base_url = table.get(
        "base_url", "https://api.openai.com/v1" if table.get("type") == "openai" else ""
    )
    return ProviderConfig(
        name=name,
        type=table.get("type", ""),
        model=table.get("model") or (kind.default_model if kind else ""),
        base_url=base_url,
        api_key=api_key,
        temperature=float(table.get("temperature", 0.7)),
        timeout_sec=table.get("timeout_sec", 60),
        stream_timeout_sec=table.get("stream_timeout_sec", 600),
        max_retries=table.get("max_retries", 5),
        headers=dict(table.get("headers", {})),
    )


# --- hooks ------------------------------------------------------------------------------------

_P = "llm.providers.*."


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey | ConfigRule]:
    return [
        ConfigKey(name="llm.default_provider", type=str, default="echo"),
        ConfigKey(name=_P + "type", type=str, default=""),
        ConfigKey(name=_P + "base_url", type=str, default=""),
        ConfigKey(name=_P + "api_key", type=str, default=""),
        ConfigKey(name=_P + "api_key_env", type=str, default=""),
        ConfigKey(name=_P + "model", type=str, default=""),
        ConfigKey(name=_P + "temperature", type=float, default=0.7, minimum=0, maximum=2),
        ConfigKey(name=_P + "timeout_sec", type=int, default=60, minimum=1, maximum=3600),
        ConfigKey(name=_P + "stream_timeout_sec", type=int, default=600, minimum=1, maximum=7200),
        ConfigKey(name=_P + "max_retries", type=int, default=5, minimum=1, maximum=10),
        ConfigKey(name=_P + "headers", type=dict, default={}),
        ConfigRule(check=_providers_complete),
        ConfigRule(check=lambda view: _types_known(ctx, view), startup=False),
    ]


def _providers_complete(view: Any) -> str | None:
    """formats §1.3: the default provider exists; every provider has a type (and openai a model)."""
    tables = view.table("llm.providers")
    for name, table in sorted(tables.items()):
        if not table.get("type"):
            return f"llm.providers.{name}.type is required"
        if table["type"] == "openai" and not table.get("model"):
            return f"llm.providers.{name}.model is required for type openai"
    default = view.get("llm.default_provider")
    if default != "echo" and default not in tables:
        return f"llm.default_provider names no provider in llm.providers: {default}"
    return None


def _types_known(ctx: PluginContext, view: Any) -> str | None:
    """``/config/set`` refuses a provider type that no enabled plugin provides (formats §1.3)."""
    registry = ctx.stash.get(REGISTRY)
    known = set(registry.types()) if registry else set()
    for name, table in sorted(view.table("llm.providers").items()):
        if table.get("type") not in known:
            return f"unknown provider type for llm.providers.{name}: {table.get('type')}"
    return None


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    registry = Registry(ctx)
    ctx.stash[REGISTRY] = registry
    registry.start()


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    registry = ctx.stash.get(REGISTRY)
    if registry is not None:
        await registry.stop()
        del ctx.stash[REGISTRY]


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="GET", path="/health/llm", handler=health_llm, public=True, availability="always"
        )
    ]


async def health_llm(ctx: PluginContext) -> dict[str, Any]:
    life = ctx.lifecycle
    registry = ctx.stash.get(REGISTRY)
    if life.status != "ready" or registry is None:
        raise Unavailable(
            "not ready",
            retry_after=None if life.status == "stopped" else 1,
            phase=life.phase,
            status=life.status,
        )
    backends = registry.refresh()
    providers = [registry.health(name) for name in backends]
    name = registry.default_provider()
    backend = backends.get(name)
    if backend is None:
        reason, state = f"provider {name} is not configured", "unknown"
    elif backend.instance is None:
        reason, state = (
            f"provider type {backend.config.type} is not available (no enabled plugin provides it)",
            backend.state,
        )
    elif backend.state == "down":
        reason, state = backend.last_error or "backend down", "down"
    else:
        return {
            "status": "ok",
            "provider": name,
            "type": backend.config.type,
            "model": backend.config.model,
            "backend": backend.state,
            "providers": providers,
        }
    raise Unavailable(
        f"llm provider unavailable: {reason}", provider=name, backend=state, providers=providers
    )
