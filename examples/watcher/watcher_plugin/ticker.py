"""The ``watcher:ticker`` event source: a pull source that publishes ``watcher:tick``."""

from __future__ import annotations

import asyncio
import contextlib

from sdk import Invalid, Unavailable


class Ticker:
    id = "watcher:ticker"
    kind = "plugin"
    mode = "pull"
    trust_level = "trusted"

    def __init__(self, interval_sec: float) -> None:
        self.interval_sec = interval_sec
        self.ticks = 0
        self._task: asyncio.Task | None = None
        self._running = asyncio.Event()

    def settings(self):
        return {"interval_sec": self.interval_sec}

    async def start(self, emit) -> None:
        self._running.set()
        self._task = asyncio.create_task(self._loop(emit), name="watcher-ticker")

    async def _loop(self, emit) -> None:
        while True:
            await asyncio.sleep(self.interval_sec)
            await self._running.wait()
            self.ticks += 1
            with contextlib.suppress(Unavailable):  # paused or over its rate limit: skip a tick
                await emit("watcher:tick", {"n": self.ticks})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def pause(self) -> None:
        self._running.clear()

    async def resume(self) -> None:
        self._running.set()

    async def reconfigure(self, changes) -> None:
        unknown = set(changes) - {"interval_sec"}
        if unknown:
            raise Invalid(f"unknown key '{sorted(unknown)[0]}'")
        value = changes.get("interval_sec", self.interval_sec)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0.01 <= value <= 3600:
            raise Invalid("field 'interval_sec' must be between 0.01 and 3600")
        self.interval_sec = float(value)
