"""``timer:<name>``: a pull source that emits ``timer_tick`` or ``heartbeat`` every ``interval_ms``
(formats §1.4), ``at_most_once`` with priority ``normal``."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from sdk import TrustLevel, Unavailable, cancel, now_ms

from .base import ConfiguredSource

__all__ = ["TimerSource"]

log = logging.getLogger("aman.plugin.timers")


class TimerSource(ConfiguredSource):
    """Ticks on a fixed schedule from the moment it starts, resumes or is reconfigured; ticks
    missed while the event loop was stalled are skipped, not caught up. ``tick`` counts the
    ticks since the source was created."""

    kind = "timer"
    mode: Literal["pull", "push"] = "pull"
    trust_level: TrustLevel = "trusted"

    _task: asyncio.Task[None] | None = None
    _ticks = 0

    async def _begin(self) -> None:
        await cancel(self._task)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"aman-{self.id}")

    async def _end(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._settings["interval_ms"] / 1000
        start, start_ms = loop.time(), now_ms()
        n = 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - loop.time()))
            behind = loop.time() - (start + n * interval)
            if behind >= interval:  # the loop stalled: skip what was missed
                n += int(behind // interval)
            emit = self._emit
            if emit is None or asyncio.current_task() is not self._task:
                return  # stopped, or replaced by a newer run
            self._ticks += 1
            payload = {
                **self._settings["payload"],
                "tick": self._ticks,
                "scheduled_at_ms": start_ms + round(n * interval * 1000),
            }
            try:
                await emit(
                    self._settings["event_type"],
                    payload,
                    delivery="at_most_once",
                    priority="normal",
                )
            except Unavailable as exc:  # paused or refused under backpressure: this tick is lost
                log.debug("%s: tick %d not published: %s", self.id, self._ticks, exc)
            except Exception:  # the timer keeps ticking
                log.exception("%s: tick %d failed", self.id, self._ticks)
