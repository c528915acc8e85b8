"""The typed facade over pluggy: the only module that calls hook implementations.

Hooks are called plugin by plugin, so the kernel knows who contributed each route, handler or
key, and so that one plugin's failure never reaches another. Registration hooks
(``register_*``) are sync and called directly; notification hooks (``on_*``, ``health_check``)
are awaited with a time limit: an ``async def`` implementation runs on the event loop, a sync one
in a worker thread, so that neither can stall the loop beyond its limit.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pluggy

import sdk.hookspecs

from .metrics import KernelMetrics

__all__ = ["HookFailed", "Hooks", "declared"]

log = logging.getLogger("aman.plugins")


class HookFailed(Exception):
    """A plugin's hook raised or timed out; ``str()`` is the reason."""

    def __init__(self, plugin: str, hook: str, reason: str) -> None:
        super().__init__(reason)
        self.plugin, self.hook, self.reason = plugin, hook, reason


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("aman")
    pm.add_hookspecs(sdk.hookspecs)
    return pm


def hook_names() -> list[str]:
    """Every hook of the SDK, in declaration order."""
    return [n for n, f in vars(sdk.hookspecs).items() if hasattr(f, "aman_spec")]


def declared(obj: object, hook: str) -> Callable[..., Any] | None:
    """The hook implementation ``obj`` marks for ``hook``, registered with pluggy or not."""
    for name in dir(obj):
        fn = getattr(obj, name, None)
        opts = getattr(fn, "aman_impl", None)
        if opts is not None and (opts.get("specname") or name) == hook:
            return fn
    return None


def _call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    wanted = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in kwargs.items() if k in wanted})


class Hooks:
    def __init__(self, pm: pluggy.PluginManager, metrics: KernelMetrics) -> None:
        self.pm = pm
        self._metrics = metrics
        self.on_error: Callable[[str, str], None] | None = None

    def _impls(self, hook: str, plugin: str) -> list[Callable[..., Any]]:
        caller = getattr(self.pm.hook, hook)
        return [i.function for i in caller.get_hookimpls() if i.plugin_name == plugin]

    def collect(
        self, hook: str, plugin: str, obj: object | None = None, **kwargs: Any
    ) -> list[Any]:
        """The flattened results of one plugin's ``register_*`` implementation.

        With ``obj`` the implementation is taken from the object even when it is not registered
        (the declarations of a disabled built-in). Errors propagate: they fail the load.
        """
        impls = (
            [f for f in [declared(obj, hook)] if f]
            if obj is not None
            else self._impls(hook, plugin)
        )
        out: list[Any] = []
        for fn in impls:
            result = _call(fn, kwargs)
            if inspect.isawaitable(result):
                raise TypeError(f"{hook} of plugin {plugin} must not be async")
            if isinstance(result, Mapping):  # name -> callable hooks (guards, pipelines, ...)
                out.extend(result.items())
            else:
                out.extend(result or [])
        return out

    async def call(self, hook: str, plugin: str, *, timeout: float, **kwargs: Any) -> Any:
        """Call one plugin's implementation of a notification hook; raise :class:`HookFailed`."""
        result = None
        for fn in self._impls(hook, plugin):
            try:
                async with asyncio.timeout(timeout):
                    if inspect.iscoroutinefunction(fn):
                        result = await _call(fn, kwargs)
                    else:
                        result = await asyncio.to_thread(_call, fn, kwargs)
                        if inspect.isawaitable(result):
                            result = await result
            except TimeoutError:
                raise self.failed(plugin, hook, f"{hook} timed out after {timeout:g} s") from None
            except Exception as exc:  # noqa: BLE001 - isolated: counted, logged, reported
                raise self.failed(plugin, hook, f"{type(exc).__name__}: {exc}", exc) from None
        return result

    def failed(
        self, plugin: str, hook: str, reason: str, exc: BaseException | None = None
    ) -> HookFailed:
        """Count and log a hook failure and return the exception to raise."""
        self._metrics.hook_errors.labels(plugin=plugin, hook=hook).inc()
        log.error("plugin %s: %s failed: %s", plugin, hook, reason, exc_info=exc)
        if self.on_error is not None:
            self.on_error(plugin, hook)
        return HookFailed(plugin, hook, reason)
