"""Phases 0..5, start-up and the drain (contract D3; http-api §1.7, §3).

Each phase is one kernel step: 1 opens the store and restores state, 2 starts the plugins,
3 (workflows) and 4 (sources) start what plugins registered for them, 5 is ready. Shutdown walks
back down. ``POST /agent/shutdown`` and SIGINT/SIGTERM take the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Literal

from sdk import Conflict, Failure, Unavailable

from .ids import now_ms

if TYPE_CHECKING:
    from .app import Kernel

__all__ = ["Lifecycle"]

log = logging.getLogger("aman.lifecycle")
Status = Literal["new", "starting", "ready", "draining", "stopped"]


class Lifecycle:
    """The :class:`sdk.Lifecycle` of the kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._phase = 0
        self._status: Status = "new"
        self._start_task: asyncio.Task[None] | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._started_at_ms = now_ms()
        self._stopped: asyncio.Event | None = None
        self.fast = False  # a second signal: skip the remaining waits

    @property
    def phase(self) -> int:
        return self._phase

    @property
    def status(self) -> Status:
        return self._status

    @property
    def version(self) -> str:
        return self._kernel.version

    @property
    def started_at_ms(self) -> int:
        return self._started_at_ms

    @property
    def stopped(self) -> asyncio.Event:
        if self._stopped is None:
            self._stopped = asyncio.Event()
        return self._stopped

    def _set_phase(self, phase: int) -> None:
        self._phase = phase
        self._kernel.metrics.phase.set(phase)
        self._kernel.metrics.ready.set(1 if phase == 5 and self._status == "ready" else 0)

    def require_ready(self) -> None:
        """Raise the 503 of http-api §1.7 unless the status is ``ready``."""
        if self._status == "ready":
            return
        if self._status == "draining":
            raise Unavailable("runtime is draining")
        if self._status == "stopped":
            raise Unavailable("runtime is stopped", retry_after=None)
        raise Unavailable(f"runtime not ready (phase {self._phase})")

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Run phases 1..5, or wait for the start already running; a no-op once ready."""
        if self._status == "ready":
            return
        if self._status in ("draining", "stopped"):
            raise Conflict("invalid state transition: runtime is shutting down")
        if self._start_task is None:
            self._start_task = asyncio.get_running_loop().create_task(
                self._start(), name="aman-start"
            )
        task = self._start_task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise Conflict(
                    "invalid state transition: startup interrupted by shutdown"
                ) from None
            raise

    async def _start(self) -> None:
        kernel = self._kernel
        self._status = "starting"
        await kernel.publish_system("gateway:starting", {"phase": self._phase}, source="gateway")
        steps = (kernel.open_storage, kernel.start_plugins, _nothing, kernel.sources.start_all)
        try:
            async with asyncio.timeout(kernel.config.get("runtime.start_timeout_sec")):
                for phase, step in enumerate(steps, start=1):
                    try:
                        await step()
                    except Exception as exc:
                        await kernel.audit.record(
                            operator="system",
                            action="runtime.phase",
                            target="agent",
                            outcome="failed",
                            detail=f"phase={phase} {exc}",
                        )
                        await self._rollback()
                        raise Failure(f"startup failed in phase {phase}: {exc}") from exc
                    self._set_phase(phase)
        except TimeoutError:
            phase = self._phase + 1
            await kernel.audit.record(
                operator="system",
                action="runtime.phase",
                target="agent",
                outcome="failed",
                detail=f"phase={phase} timed out",
            )
            await self._rollback()
            raise Failure(f"startup failed in phase {phase}: timed out") from None
        finally:
            self._start_task = None
        self._status = "ready"
        self._set_phase(5)
        log.info("runtime ready")
        await kernel.publish_system("gateway:ready", {"phase": 5}, source="gateway")

    async def _rollback(self) -> None:
        """Undo the completed phases so that a later start may be tried (http-api §3)."""
        kernel = self._kernel
        with contextlib.suppress(Exception):
            await kernel.sources.stop_all()
        with contextlib.suppress(Exception):
            await kernel.plugins.stop_all()
        with contextlib.suppress(Exception):
            await kernel.close_storage()
        self._status = "new"
        self._set_phase(0)

    # --- shutdown ---------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Drain and stop; concurrent calls share one shutdown."""
        if self._status == "stopped":
            return
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(
                self._shutdown(), name="aman-shutdown"
            )
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        kernel = self._kernel
        if self._start_task is not None:
            self._start_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._start_task
        if self._phase == 0 and self._status in ("new", "starting"):
            self._status = "stopped"
            self.stopped.set()
            return
        self._status = "draining"
        self._kernel.metrics.ready.set(0)
        await self._step(
            0, kernel.publish_system("gateway:stopping", {"phase": self._phase}, source="gateway")
        )
        # 5 → 4 → 3: stop taking work and the sources; let the bus drain.
        await self._step(4, kernel.sources.stop_all())
        drain = kernel.config.get("runtime.drain_timeout_sec")
        await self._step(4, kernel.bus.drain(drain, give_up=lambda: self.fast))
        self._set_phase(3)
        self._set_phase(2)
        # 2 → 1: plugins stop in reverse load order.
        await self._step(2, kernel.plugins.stop_all())
        self._set_phase(1)
        # 1 → 0: storage checkpointed and closed.
        await self._step(1, kernel.close_storage())
        self._status = "stopped"
        self._set_phase(0)
        log.info("runtime stopped")
        self.stopped.set()

    async def _step(self, phase: int, work: Awaitable[object]) -> None:
        """One shutdown step: a failure is logged and audited, and the shutdown goes on."""
        try:
            await work
        except Exception as exc:
            log.exception("shutdown step failed in phase %d", phase)
            await self._kernel.audit.record(
                operator="system",
                action="runtime.phase",
                target="agent",
                outcome="failed",
                detail=f"phase={phase} {exc}",
            )


async def _nothing() -> None:
    """Phase 3 (workflows) starts what plugins register for it; the kernel has nothing to do."""
