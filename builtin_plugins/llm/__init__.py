"""LLM: the configured providers, their backend health, ``/health/llm`` (http-api §2; D15) and
the :class:`sdk.Llm` service every model call goes through (http-api §11.3 step 3).

Provider implementations come from plugins (``register_llm_providers``): ``llm-echo`` and
``llm-openai`` are built in. This plugin owns the ``llm.*`` keys, builds a provider for
each ``[llm.providers.<name>]`` table (plus ``echo``, which always exists unless the file defines
one with that name), and keeps each backend's state: 3 failures in a row make it ``degraded``,
6 ``down``, any success ``ok``. A probe runs at start and then every 60 s while a backend is
not ``ok``; every attempt of a model call counts too. ``ctx.stash[LLM].stream(name, request)``
retries transient errors before the first piece with delays of 1, 3, 9, 27 s (×3, capped at
120 s).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from attrs import define

from sdk import (
    LLM,
    ConfigKey,
    ConfigRule,
    Delta,
    LlmError,
    LlmRequest,
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
RETRY_FIRST_SEC, RETRY_FACTOR, RETRY_CAP_SEC = 1, 3, 120


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
        self._retired: list[Any] = []  # dropped provider instances, closed at stop
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
        backends, previous = {}, dict(self._backends)
        for name, table in sorted(tables.items()):
            kind = types.get(table.get("type", ""))
            config = _provider_config(name, table, kind)
            backend = previous.pop(name, None)
            if backend is None or backend.config != config:
                self._retire(backend)
                backend = Backend(config=config)
            if kind is None:
                self._retire(backend)
            elif backend.instance is None:
                backend.instance = kind.factory(config)
            backends[name] = backend
        for removed in previous.values():
            self._retire(removed)
        self._backends = backends
        return backends

    def _retire(self, backend: Backend | None) -> None:
        """Drop the provider of ``backend``; it is closed at stop (a turn may still use it)."""
        if backend is not None and backend.instance is not None:
            self._retired.append(backend.instance)
            backend.instance = None

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
        if after == before or not event:
            return
        payload = {
            "provider": name,
            "base_url": backend.config.base_url,
            "from": before,
            "to": after,
            "consecutive_failures": backend.consecutive_failures,
            "last_error": backend.last_error,
        }
        try:
            await self._ctx.bus.publish(event, payload, source=f"llm:{name}")
        except Unavailable as exc:  # backpressure: the state changed, only its event is lost
            self._ctx.log.warning("%s for provider %s not published: %s", event, name, exc)

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
        """Stop probing and close every provider that has an ``aclose()`` (its HTTP client)."""
        await cancel(self._task)
        self._task = None
        for backend in self._backends.values():
            self._retire(backend)
        retired, self._retired = self._retired, []
        for instance in retired:
            close = getattr(instance, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception:  # one provider failing to close must not keep the others open
                self._ctx.log.exception("closing LLM provider %r failed", instance)

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


def retry_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, …) before the next one: 1, 3, 9,
    27, … capped at 120 (http-api §11.3 step 3)."""
    return float(min(RETRY_FIRST_SEC * RETRY_FACTOR ** (attempt - 1), RETRY_CAP_SEC))


def unavailable(name: str, backend: Backend | None) -> str | None:
    """Why provider ``name`` cannot take requests now, or None (``/health/llm`` and
    :meth:`Service.unavailable`)."""
    if backend is None:
        return f"provider {name} is not configured"
    if backend.instance is None:
        return (
            f"provider type {backend.config.type} is not available (no enabled plugin provides it)"
        )
    return None


class Service:
    """The :class:`sdk.Llm` under :data:`sdk.LLM`: model calls by provider name, with retries and
    backend health (http-api §11.3 step 3)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def names(self) -> list[str]:
        return list(self._registry.refresh())

    def model(self, provider: str) -> str:
        return self._registry.refresh()[provider].config.model

    def unavailable(self, provider: str) -> str | None:
        return unavailable(provider, self._registry.refresh().get(provider))

    async def stream(self, provider: str, request: LlmRequest) -> AsyncIterator[Delta]:
        """Stream through ``provider``; retry transient errors until the first piece. Every
        attempt is recorded in the backend's health; closing early records nothing."""
        backend = self._registry.refresh().get(provider)
        reason = unavailable(provider, backend)
        if backend is None or reason is not None:
            raise LlmError(str(reason))
        attempts = backend.config.max_retries
        for attempt in range(1, attempts + 1):
            started = False
            try:
                async with aclosing(backend.instance.stream(request)) as deltas:
                    async for delta in deltas:
                        started = True
                        yield delta
            except Exception as exc:  # noqa: BLE001 - any provider failure is an LlmError to callers
                error = _llm_error(exc, backend.config)
            else:
                await self._registry.record(provider, None)
                return
            await self._registry.record(provider, error)
            if started or not error.transient or attempt == attempts:
                raise error
            await asyncio.sleep(retry_delay(attempt))


def _llm_error(exc: Exception, config: ProviderConfig) -> LlmError:
    """``exc`` as an :class:`LlmError` whose message holds no API key; an error that is not an
    LlmError (a provider's bug) is not transient."""
    if not isinstance(exc, LlmError):
        text = f"provider {config.name} failed: {type(exc).__name__}: {exc}"
        return LlmError(redact(text, config.api_key))
    message = redact(str(exc), config.api_key)
    if message == str(exc):
        return exc
    return LlmError(message, transient=exc.transient, status=exc.status)


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
    ctx.stash[LLM] = Service(registry)
    registry.start()


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    if LLM in ctx.stash:
        del ctx.stash[LLM]
    registry = ctx.stash.get(REGISTRY)
    if registry is not None:
        del ctx.stash[REGISTRY]
        await registry.stop()


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
    reason = unavailable(name, backend)
    if reason is None and backend is not None and backend.state != "down":
        return {
            "status": "ok",
            "provider": name,
            "type": backend.config.type,
            "model": backend.config.model,
            "backend": backend.state,
            "providers": providers,
        }
    state = backend.state if backend is not None else "unknown"
    if reason is None:
        reason = (backend.last_error if backend else None) or "backend down"
    raise Unavailable(
        f"llm provider unavailable: {reason}", provider=name, backend=state, providers=providers
    )
