"""The cron scheduler: one loop that checks every second which jobs are due (http-api §19).

Each job is an event source of kind ``cron`` (``CronSource``) in the kernel's registry, so the
registry starts it at phase 4, pauses it for operators and under backpressure, and publishes what
it emits with the job id as the event source. A job fires while its source runs, it is enabled and
it is not paused. When it is due, the scheduler takes the latest scheduled time that has passed
(the latest missed tick when it fell behind), records it in the store as fired, and only then
publishes ``cron_tick`` with the dedup key ``cron:<id>:<scheduled ms>``: a scheduled time fires at
most once, across restarts too.

Ticks that fell due while a job was paused or disabled never fire. Ticks that fell due while it was
stopped (the runtime down, the plugin disabled) follow the job's ``misfire`` policy when it starts
again: ``skip`` (the default) publishes none of them, ``run_once`` publishes the latest one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sdk import (
    AGENTS,
    CHAT,
    Conflict,
    Emit,
    Invalid,
    Migration,
    NotFound,
    PluginContext,
    SdkError,
    cancel,
)

from . import expression as cron
from .models import ID, Job, JobIn, JobRecord, check_misfire, check_prompt, clean_changes

__all__ = ["MIGRATIONS", "CronSource", "Scheduler"]

log = logging.getLogger("aman.plugin.cron")

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE cron_jobs (
            id TEXT PRIMARY KEY,
            expression TEXT NOT NULL,
            timezone TEXT NOT NULL,
            enabled INTEGER NOT NULL,
            agent_key TEXT NOT NULL,
            prompt TEXT,
            misfire TEXT NOT NULL DEFAULT 'skip',
            session_id TEXT,
            created_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL,
            last_run_at_ms INTEGER,
            fired_through_ms INTEGER
        );
        """,
    )
]
_COLUMNS = (
    "id, expression, timezone, enabled, agent_key, prompt, misfire, session_id,"
    " created_at_ms, updated_at_ms, last_run_at_ms, fired_through_ms"
)


def _ms(instant: datetime) -> int:
    return round(instant.timestamp() * 1000)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class CronSource:
    """One job as an event source (``sdk.EventSource``): kind ``cron``, pulled by the scheduler."""

    kind = "cron"
    mode: Literal["pull"] = "pull"
    trust_level: Literal["trusted"] = "trusted"

    def __init__(self, scheduler: Scheduler, record: JobRecord) -> None:
        self.id = record.id
        self.record = record
        self.expression = cron.parse(record.expression)
        self.tz: ZoneInfo = cron.zone(record.timezone)
        self.emit: Emit | None = None  # set while started
        self.paused = False
        self.next_due: datetime | None = None  # the next scheduled time, while armed
        self._scheduler = scheduler

    @property
    def live(self) -> bool:
        """Started, enabled and not paused: its ticks are published."""
        return self.emit is not None and not self.paused and self.record.enabled

    def settings(self) -> Mapping[str, Any]:
        return self.record.settings()

    async def start(self, emit: Emit) -> None:
        self.emit = emit
        await self._scheduler.arm(self, after_stop=True)

    async def stop(self) -> None:
        self.emit, self.next_due = None, None

    async def pause(self) -> None:
        self.paused, self.next_due = True, None

    async def resume(self) -> None:
        self.paused = False
        await self._scheduler.arm(self)

    async def reconfigure(self, changes: Mapping[str, Any]) -> None:
        """``PUT /event-source/{id}/config``: the fields of ``/cron/{id}/update`` (http-api §6)."""
        await self._scheduler.update(
            self.id, changes, unknown=lambda key: f"unknown config key for source {self.id}: {key}"
        )


class Scheduler:
    """The jobs of one kernel, their store and the loop that fires them."""

    def __init__(self, ctx: PluginContext, *, clock: Callable[[], datetime] | None = None) -> None:
        self._ctx = ctx
        #: The time now, as an aware datetime (tests may replace it).
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._sources: dict[str, CronSource] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.checks = 0  # checks made so far

    # --- start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored jobs, register each as a source and start the loop."""
        rows = await self._ctx.store.fetchall(f"SELECT {_COLUMNS} FROM cron_jobs ORDER BY id")
        for row in rows:
            record = JobRecord(**dict(row))
            record.enabled = bool(record.enabled)
            try:
                source = CronSource(self, record)
                await self._ctx.sources.add(source)
            except Exception as exc:  # noqa: BLE001 - one bad job never stops the others
                log.error("cron job %s is not scheduled: %s", record.id, exc)
                continue
            self._sources[record.id] = source
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="aman-cron")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        self._sources.clear()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(1.0 - time.time() % 1.0 + 0.001)  # just after each whole second
            try:
                await self.check()
            except Exception:  # the loop never dies
                log.exception("cron check failed")

    # --- firing ---------------------------------------------------------------------------

    async def arm(self, source: CronSource, *, after_stop: bool = False) -> None:
        """Compute the next run of a job that (re)starts running. Ticks missed while it was not
        running are consumed (``skip``), except that a job starting after a stop with the policy
        ``run_once`` keeps them, so that the next check publishes the latest one."""
        async with self._lock:
            record, now = source.record, self.clock()
            if not source.live:
                source.next_due = None
                return
            if after_stop and record.misfire == "run_once" and record.fired_through_ms is not None:
                since = _utc(record.fired_through_ms)  # the next check publishes the latest missed
            else:
                since = now
                if (record.fired_through_ms or 0) < _ms(now):
                    record.fired_through_ms = _ms(now)
                    await self._save_progress(record)
            source.next_due = source.expression.next_after(since, source.tz)

    async def check(self) -> None:
        """Fire every job that is due now (called every second by the loop). Checks take turns:
        one that finds nothing due still returns only after a check firing at the time has
        published its ticks."""
        async with self._lock:
            now = self.clock()
            for source in list(self._sources.values()):
                if source.next_due is not None and source.next_due <= now:
                    await self._fire(source, now)
            self.checks += 1

    async def _fire(self, source: CronSource, now: datetime) -> None:
        """Publish the job's latest due tick (with the lock held)."""
        record, emit = source.record, source.emit
        if not source.live or emit is None or source.next_due is None or source.next_due > now:
            return
        scheduled = source.expression.latest_at_or_before(now, source.tz)
        source.next_due = source.expression.next_after(now, source.tz)
        if scheduled is None or _ms(scheduled) <= (record.fired_through_ms or -1):
            return  # never the same scheduled time twice
        record.fired_through_ms = record.last_run_at_ms = _ms(scheduled)
        # saved before publishing: a crash loses a tick, never repeats one
        await self._save_progress(record)
        payload = {
            "cron_expression": record.expression,
            "scheduled_at": cron.rfc3339(scheduled, source.tz),
            "timezone": record.timezone,
            "job_id": record.id,
            "agent_key": record.agent_key,
        }
        try:
            await emit(
                "cron_tick",
                payload,
                delivery="at_least_once",
                dedup_key=f"cron:{record.id}:{_ms(scheduled)}",
            )
        except SdkError as exc:
            log.warning(
                "cron job %s: tick %s not published: %s", record.id, payload["scheduled_at"], exc
            )
        if record.prompt:
            await self._prompt(record)

    async def _prompt(self, record: JobRecord) -> None:
        """The job's prompt as a user message in its own background session (http-api §19)."""
        chat = self._ctx.stash.get(CHAT)
        if chat is None:
            log.warning("cron job %s: prompt skipped: the chat plugin is not running", record.id)
            return
        agent_id = record.agent_key or str(self._ctx.settings.get("chat.default_agent"))
        try:
            session_id = await chat.open_session(
                agent_id=agent_id,
                operator="system",
                session_type="background",
                session_id=record.session_id,
            )
            if session_id != record.session_id:
                record.session_id = session_id
                await self._ctx.store.execute(
                    "UPDATE cron_jobs SET session_id = ? WHERE id = ?", (session_id, record.id)
                )
            await chat.submit(
                session_id,
                record.prompt or "",
                source=f"cron:{record.id}",
                operator="system",
                activity="cron",
                checks=False,
            )
        except SdkError as exc:
            log.warning("cron job %s: prompt skipped: %s", record.id, exc)

    # --- jobs -----------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        source = self._sources.get(job_id)
        if source is None:
            raise NotFound(f"cron job not found: {job_id}")
        record = source.record
        try:
            state = self._ctx.sources.get(job_id).state
        except NotFound:
            state = "shutdown"
        next_run: int | None = None
        if record.enabled and state != "paused" and state != "shutdown":
            due = source.next_due
            if due is None and source.emit is None:  # not started yet (before phase 4)
                due = source.expression.next_after(self.clock(), source.tz)
            next_run = _ms(due) if due is not None else None
        return Job(
            id=record.id,
            expression=record.expression,
            timezone=record.timezone,
            enabled=record.enabled,
            agent_key=record.agent_key,
            prompt=record.prompt,
            misfire=record.misfire,
            session_id=record.session_id,
            state=state,
            created_at_ms=record.created_at_ms,
            updated_at_ms=record.updated_at_ms,
            next_run_at_ms=next_run,
            last_run_at_ms=record.last_run_at_ms,
        )

    def jobs(self) -> list[Job]:
        return [self.job(job_id) for job_id in sorted(self._sources)]

    async def add(self, body: JobIn) -> Job:
        """``POST /cron/add``: validate in the order of the error table of http-api §19, store the
        job and register it as a source (started at once in a ready runtime)."""
        if ID.fullmatch(body.id) is None:
            raise Invalid(f"invalid cron job id: {body.id}")
        timezone = (
            body.timezone
            if body.timezone is not None
            else self._ctx.settings.get("cron.default_timezone")
        )
        check_prompt(body.prompt)
        check_misfire(body.misfire)
        self._check_schedule(body.expression, timezone)
        self._check_agent(body.agent_key)
        async with self._lock:
            self._check_free(body.id)
            now = _ms(self.clock())
            record = JobRecord(
                id=body.id,
                expression=body.expression,
                timezone=timezone,
                enabled=body.enabled,
                agent_key=body.agent_key,
                prompt=body.prompt,
                misfire=body.misfire,
                session_id=None,
                created_at_ms=now,
                updated_at_ms=now,
                fired_through_ms=now,  # nothing before its creation ever fires
            )
            await self._save(record)
            source = CronSource(self, record)
            self._sources[record.id] = source
        try:
            await self._ctx.sources.add(source)
        except Exception:
            self._sources.pop(record.id, None)
            await self._delete(record.id)
            raise
        return self.job(record.id)

    async def update(
        self, job_id: str, changes: Mapping[str, Any], *, unknown: Callable[[str], str]
    ) -> Job:
        """``POST /cron/{id}/update`` and the source's ``reconfigure``: a merge of the given fields;
        the job is stored and its next run recomputed."""
        changes = clean_changes(changes, unknown)
        source = self._sources.get(job_id)
        if source is None:
            raise NotFound(f"cron job not found: {job_id}")
        record = source.record
        merged = {**record.settings(), **changes}
        # only what changes is checked: a job's own values stay valid even if, say,
        # cron.min_interval_sec was raised since it was created
        changed = {key for key, value in changes.items() if value != getattr(record, key)}
        if "prompt" in changed:
            check_prompt(changes["prompt"])
        if "expression" in changed or "timezone" in changed:
            self._check_schedule(merged["expression"], merged["timezone"])
        if "agent_key" in changed:
            self._check_agent(merged["agent_key"])
        if not changed:  # idempotent: the same values change nothing, not even updated_at
            return self.job(job_id)
        async with self._lock:
            for key, value in merged.items():
                setattr(record, key, value)
            record.updated_at_ms = _ms(self.clock())
            source.expression = cron.parse(record.expression)
            source.tz = cron.zone(record.timezone)
            await self._save(record)
        if changed & {"expression", "timezone", "enabled"}:
            await self.arm(source)  # the new schedule starts from now
        return self.job(job_id)

    async def remove(self, job_id: str) -> None:
        """``POST /cron/{id}/remove``: stop and unregister the source, delete the job."""
        if job_id not in self._sources:
            raise NotFound(f"cron job not found: {job_id}")
        with contextlib.suppress(NotFound):
            await self._ctx.sources.remove(
                job_id, forget=True
            )  # a new job with this id starts afresh
        async with self._lock:
            self._sources.pop(job_id, None)
            await self._delete(job_id)

    # --- checks ---------------------------------------------------------------------------

    def _check_schedule(self, expression: str, timezone: str) -> None:
        try:
            cron.check(
                expression,
                timezone,
                min_interval_sec=self._ctx.settings.get("cron.min_interval_sec"),
                now=self.clock(),
            )
        except (cron.CronError, cron.UnknownZone, cron.TooFrequent) as exc:
            raise Invalid(str(exc)) from None

    def _check_agent(self, agent_key: str) -> None:
        if agent_key and agent_key not in known_agents(self._ctx):
            raise NotFound(f"agent not found: {agent_key}")

    def _check_free(self, job_id: str) -> None:
        taken = job_id in self._sources
        if not taken:
            try:
                self._ctx.sources.get(job_id)
                taken = True
            except NotFound:
                pass
        if taken:
            raise Conflict(f"source already exists: {job_id}")

    # --- store ----------------------------------------------------------------------------

    async def _save(self, record: JobRecord) -> None:
        values = (
            record.id,
            record.expression,
            record.timezone,
            int(record.enabled),
            record.agent_key,
            record.prompt,
            record.misfire,
            record.session_id,
            record.created_at_ms,
            record.updated_at_ms,
            record.last_run_at_ms,
            record.fired_through_ms,
        )

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR REPLACE INTO cron_jobs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )

        await self._ctx.store.write(save)

    async def _save_progress(self, record: JobRecord) -> None:
        values = (record.last_run_at_ms, record.fired_through_ms, record.id)

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE cron_jobs SET last_run_at_ms = ?, fired_through_ms = ? WHERE id = ?", values
            )

        await self._ctx.store.write(save)

    async def _delete(self, job_id: str) -> None:
        await self._ctx.store.execute("DELETE FROM cron_jobs WHERE id = ?", (job_id,))


def known_agents(ctx: PluginContext) -> set[str]:
    """The agents a job may name: those of the chat plugin (:data:`sdk.AGENTS`)."""
    agents = ctx.stash.get(AGENTS)
    return set(agents.ids()) if agents is not None else set()
