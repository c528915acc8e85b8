"""The kernel's Prometheus registry and its own metric families (http-api §21), and the watch
on the event loop.

One registry per kernel, never the global one, so kernels in one process (tests) stay apart.
Plugins add collectors through ``register_metrics``; the ``metrics`` plugin serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from types import FrameType

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["STALL_THRESHOLD_SEC", "KernelMetrics", "LoopWatch"]

log = logging.getLogger("aman.loop")

#: A turn of the event loop longer than this is a stall: logged and counted.
STALL_THRESHOLD_SEC = 0.25
_BEAT_SEC = 0.05


class KernelMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "http_requests", "Requests served.", ["method", "route", "status"], registry=r
        )
        self.auth_failures = Counter("http_auth_failures", "401 answers.", registry=r)
        self.hook_errors = Counter(
            "plugin_hook_errors",
            "Hook calls that raised or timed out.",
            ["plugin", "hook"],
            registry=r,
        )
        self.phase = Gauge("runtime_phase", "Runtime phase, 0..5.", registry=r)
        self.ready = Gauge("runtime_ready", "1 when the runtime is ready.", registry=r)
        self.loop_stalls = Histogram(
            "event_loop_stall_seconds",
            f"Event loop turns longer than {STALL_THRESHOLD_SEC:g} s, by length.",
            buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.storage_full = Gauge(
            "storage_full", "1 while writes are refused for want of space.", registry=r
        )


class LoopWatch:
    """Notices event loop stalls. A task on the loop beats every 50 ms and measures how late
    each beat comes; a late beat of ``threshold`` or more is a stall, observed in
    ``event_loop_stall_seconds`` and logged. A thread checks the beats meanwhile and, while one
    is overdue, notes which function the loop thread is running, so the log names it."""

    def __init__(self, metrics: KernelMetrics, threshold: float = STALL_THRESHOLD_SEC) -> None:
        self._metrics = metrics
        self._threshold = threshold
        self._beat = time.monotonic()
        self._culprit: tuple[float, str] | None = None  # (the overdue beat, what ran)
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Start watching the running loop."""
        if self._task is not None:
            return
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self._beats(), name="aman-loop-watch")
        self._thread = threading.Thread(target=self._watch, name="aman-loop-watch", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = self._thread = None

    async def _beats(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(_BEAT_SEC)
            late = time.monotonic() - self._beat - _BEAT_SEC
            if late >= self._threshold:
                self._report(late)

    def _report(self, late: float) -> None:
        self._metrics.loop_stalls.observe(late)
        culprit = self._culprit
        what = f" in {culprit[1]}" if culprit is not None and culprit[0] == self._beat else ""
        log.warning("event loop blocked for %.2f s%s", late, what)

    def _watch(self) -> None:
        while not self._stop.wait(self._threshold / 2):
            beat = self._beat
            overdue = time.monotonic() - beat > self._threshold
            if overdue and (self._culprit is None or self._culprit[0] != beat):
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None:
                    self._culprit = (beat, _describe(frame))


def _describe(frame: FrameType) -> str:
    """``module.function (file:line)`` of the innermost frame."""
    code = frame.f_code
    module = frame.f_globals.get("__name__", "?")
    return f"{module}.{code.co_qualname} ({code.co_filename}:{frame.f_lineno})"
