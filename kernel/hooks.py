"""The typed facade over pluggy: the only module that calls hook implementations.

Hooks are called plugin by plugin, so the kernel knows who contributed each route, handler or
key, and so that one plugin's failure never reaches another. Registration hooks
(``register_*``) are sync and called directly; notification hooks (``on_*``, ``health_check``)
are awaited with a time limit: an ``async def`` implementation runs on the event loop, a sync one
in one of the plugin's own worker threads (:class:`PluginThreads`), so that neither can stall
the loop beyond its limit. An ``async def`` that blocks the loop cannot be cut short; once it
returns past its limit it counts as timed out all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pluggy

import sdk.hookspecs

from .metrics import KernelMetrics

__all__ = ["THREADS_PER_PLUGIN", "HookFailed", "Hooks", "PluginThreads", "declared"]

log = logging.getLogger("aman.plugins")
T = TypeVar("T")

#: Sync calls of one plugin running at once; more wait for a free thread (within their limit).
THREADS_PER_PLUGIN = 8


class HookFailed(Exception):
    """A plugin's hook raised or timed out; ``str()`` is the reason."""

    def __init__(self, plugin: str, hook: str, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.plugin, self.hook, self.reason, self.timed_out = plugin, hook, reason, timed_out


class PluginThreads:
    """Where plugins' sync code runs: each call in a daemon thread of its own, at most
    :data:`THREADS_PER_PLUGIN` per plugin at once.

    A call that outlives its time limit keeps its thread (Python cannot stop a thread) and its
    plugin's slot until it returns, so a plugin that hangs uses up only its own slots, never
    the threads other plugins or the kernel need; and, being a daemon, it never holds up the
    process's exit (a default-executor thread would).
    """

    def __init__(self, per_plugin: int = THREADS_PER_PLUGIN) -> None:
        self._per_plugin = per_plugin
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def run(self, plugin: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a thread of ``plugin``; cancelling the wait leaves the
        thread to finish on its own."""
        slots = self._slots.setdefault(plugin, asyncio.Semaphore(self._per_plugin))
        await slots.acquire()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()

        def settle(result: Any, error: BaseException | None) -> None:
            slots.release()
            if future.done():  # the caller gave up (a time limit)
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def work() -> None:
            try:
                outcome: tuple[Any, BaseException | None] = (context.run(fn, *args, **kwargs), None)
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                outcome = (None, exc)
            except BaseException as exc:  # noqa: BLE001 - a SystemExit ends the call, not the server
                outcome = (None, RuntimeError(f"{type(exc).__name__} raised in a plugin thread"))
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, *outcome)

        try:
            threading.Thread(target=work, name=f"aman-plugin-{plugin}", daemon=True).start()
        except BaseException:
            slots.release()
            raise
        return await future


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
    def __init__(
        self, pm: pluggy.PluginManager, metrics: KernelMetrics, threads: PluginThreads | None = None
    ) -> None:
        self.pm = pm
        self._metrics = metrics
        self.threads = threads or PluginThreads()
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
        loop = asyncio.get_running_loop()
        for fn in self._impls(hook, plugin):
            started = loop.time()
            try:
                async with asyncio.timeout(timeout):
                    if inspect.iscoroutinefunction(fn):
                        result = await _call(fn, kwargs)
                    else:
                        result = await self.threads.run(plugin, _call, fn, kwargs)
                        if inspect.isawaitable(result):
                            result = await result
                if loop.time() - started > timeout:  # it blocked the loop past its limit
                    raise TimeoutError
            except TimeoutError:
                reason = f"{hook} timed out after {timeout:g} s"
                raise self.failed(plugin, hook, reason, timed_out=True) from None
            except Exception as exc:  # noqa: BLE001 - isolated: counted, logged, reported
                raise self.failed(plugin, hook, f"{type(exc).__name__}: {exc}", exc) from None
        return result

    def failed(
        self,
        plugin: str,
        hook: str,
        reason: str,
        exc: BaseException | None = None,
        *,
        timed_out: bool = False,
    ) -> HookFailed:
        """Count and log a hook failure and return the exception to raise."""
        self._metrics.hook_errors.labels(plugin=plugin, hook=hook).inc()
        log.error("plugin %s: %s failed: %s", plugin, hook, reason, exc_info=exc)
        if self.on_error is not None:
            self.on_error(plugin, hook)
        return HookFailed(plugin, hook, reason, timed_out=timed_out)
