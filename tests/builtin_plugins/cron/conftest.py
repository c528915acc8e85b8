"""Fixtures of the cron tests: a kernel with a subscriber to ``cron_tick``, and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from builtin_plugins.cron import SCHEDULER
from sdk import Event
from sdk.testing import Recorder


class Clock:
    """A clock the scheduler reads instead of the real one; ``advance`` moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Cron:
    """A served kernel with the cron plugin, a recorder and helpers."""

    def __init__(self, client: Any, kernel: Any, recorder: Recorder) -> None:
        self.client, self.kernel, self.recorder = client, kernel, recorder

    @property
    def scheduler(self) -> Any:
        return self.kernel.stash[SCHEDULER]

    def fake_clock(self, now: datetime = datetime(2030, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)) -> Clock:
        clock = Clock(now)
        self.scheduler.clock = clock
        return clock

    async def add(self, **body: Any) -> Any:
        return await self.client.post("/cron/add", json=body)

    async def job(self, job_id: str) -> dict[str, Any]:
        items = (await (await self.client.get("/cron")).get_json())["items"]
        return next(item for item in items if item["id"] == job_id)

    def ticks(self, job_id: str | None = None) -> list[Event]:
        return [e for e in self.recorder.seen if job_id is None or e.source == job_id]

    def scheduled(self, job_id: str | None = None) -> list[str]:
        return [e.payload["scheduled_at"] for e in self.ticks(job_id)]

    async def published(self, job_id: str | None = None) -> list[str]:
        """The ``scheduled_at`` of every ``cron_tick`` the bus accepted (stored), oldest first."""
        events = await self.kernel.bus.recent(1000, event_type="cron_tick", source=job_id)
        return sorted(e.payload["scheduled_at"] for e in events)


@pytest.fixture(name="start_cron")
def _start_cron(make_kernel, serve_kernel) -> Callable[..., Any]:
    """``cron = await start_cron(settings={...}, runtime_dir=...)``."""

    async def start(*plugins: object, **options: Any) -> Cron:
        recorder = Recorder("cron_tick")
        kernel = make_kernel(recorder, *plugins, **options)
        client = await serve_kernel(kernel)
        return Cron(client, kernel, recorder)

    return start


@pytest.fixture(name="cron")
async def _cron(start_cron) -> Cron:
    return await start_cron()
