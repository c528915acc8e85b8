"""The skills directory watcher (formats §2.5): after ``skills.hot_reload.debounce_ms`` without
changes, one incremental reload pass.

``watchfiles`` (imported when the watch starts, as the timers plugin does) delivers raw changes
in small batches; every batch pushes the deadline back, and when it passes ``on_change`` runs.
A missing directory is checked for every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from sdk import cancel

__all__ = ["Watcher"]

log = logging.getLogger("aman.plugin.skills")
STEP_MS = 50  # watchfiles: quiet time that closes a batch of raw changes
GROUP_MS = 100  # watchfiles: longest batch
RESCAN_SEC = 1.0  # how often a missing directory is looked for, and the retry delay


class Watcher:
    def __init__(
        self,
        root: Path,
        debounce_ms: Callable[[], int],
        on_change: Callable[[], Awaitable[None]],
    ) -> None:
        self.root = root
        self._debounce_ms = debounce_ms
        self._on_change = on_change
        self._dirty_at: float | None = None
        self._wake = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch(), name="aman-skills-watch"),
            loop.create_task(self._settle(), name="aman-skills-reload"),
        ]

    async def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        tasks, self._tasks = self._tasks, []
        await cancel(*tasks)

    async def _watch(self) -> None:
        from watchfiles import awatch  # imported when a watch starts: keeps start-up short

        while True:
            if not self.root.is_dir():
                await asyncio.sleep(RESCAN_SEC)
                continue
            self._stop = asyncio.Event()
            try:
                watcher = awatch(
                    self.root,
                    debounce=GROUP_MS,
                    step=STEP_MS,
                    stop_event=self._stop,
                    rust_timeout=int(RESCAN_SEC * 1000),
                    yield_on_timeout=True,
                    recursive=True,
                )
                async with contextlib.aclosing(watcher) as changes:
                    async for batch in changes:
                        if batch:
                            self._dirty_at = asyncio.get_running_loop().time()
                            self._wake.set()
                        if not self.root.is_dir():
                            break
            except Exception as exc:  # noqa: BLE001 - keep watching
                log.warning("watching %s failed: %s", self.root, exc)
                await asyncio.sleep(RESCAN_SEC)

    async def _settle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty_at is not None:
                due = self._dirty_at + self._debounce_ms() / 1000
                if loop.time() < due:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(due - loop.time()):
                            await self._wake.wait()
                    self._wake.clear()
                    continue
                self._dirty_at = None
                try:
                    await self._on_change()
                except Exception:  # keep watching
                    log.exception("reloading skills after a change failed")
