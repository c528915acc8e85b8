"""Cron: scheduled jobs that publish ``cron_tick`` events (http-api §19; formats §6).

Each job is an event source of kind ``cron`` whose id is the job id, so ``/event-source/{id}/…``
pauses, resumes and reconfigures it too. Jobs live in the plugin's table of the runtime store;
``scheduler.py`` fires them, ``expression.py`` reads their expressions.
"""

from __future__ import annotations

from typing import Any

from sdk import (
    AuditNote,
    ConfigKey,
    ConfigRule,
    Migration,
    PluginContext,
    Route,
    StashKey,
    hookimpl,
)

from . import expression
from .models import Job, JobIn
from .scheduler import MIGRATIONS, Scheduler

__all__ = ["SCHEDULER"]

SCHEDULER = StashKey[Scheduler]()


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey | ConfigRule]:
    return [
        ConfigKey(
            name="cron.default_timezone",
            type=str,
            default="UTC",
            doc="Zone for jobs without timezone.",
        ),
        ConfigKey(
            name="cron.min_interval_sec",
            type=int,
            default=1,
            minimum=1,
            maximum=86_400,
            doc="Shortest allowed interval between firings.",
        ),
        ConfigRule(check=_default_zone_exists),
    ]


def _default_zone_exists(view: Any) -> str | None:
    name = view.get("cron.default_timezone")
    try:
        expression.zone(name)
    except expression.UnknownZone:
        return f"invalid value for 'cron.default_timezone': unknown time zone: {name}"
    return None


@hookimpl
def register_migrations(ctx: PluginContext) -> list[Migration]:
    return MIGRATIONS


@hookimpl
async def on_startup(ctx: PluginContext) -> None:
    scheduler = Scheduler(ctx)
    ctx.stash[SCHEDULER] = scheduler
    await scheduler.start()


@hookimpl
async def on_shutdown(ctx: PluginContext) -> None:
    scheduler = ctx.stash.get(SCHEDULER)
    if scheduler is not None:
        await scheduler.stop()
        del ctx.stash[SCHEDULER]


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(method="GET", path="/cron", handler=list_jobs, name="list_jobs"),
        Route(
            method="POST",
            path="/cron/add",
            handler=add_job,
            name="add_job",
            body=JobIn,
            audit="cron.add",
            target="cron",  # the id is in the body: the handler names it
        ),
        Route(
            method="POST",
            path="/cron/{job_id}/update",
            handler=update_job,
            name="update_job",
            body=dict,
            audit="cron.update",
            target="cron:{job_id}",
        ),
        Route(
            method="POST",
            path="/cron/{job_id}/remove",
            handler=remove_job,
            name="remove_job",
            audit="cron.remove",
            target="cron:{job_id}",
        ),
    ]


async def list_jobs(ctx: PluginContext) -> dict[str, list[Job]]:
    return {"items": ctx.stash[SCHEDULER].jobs()}


async def add_job(ctx: PluginContext, body: JobIn, audit: AuditNote) -> dict[str, Any]:
    audit.target = f"cron:{body.id}"
    job = await ctx.stash[SCHEDULER].add(body)
    audit.detail = job.expression
    return {"ok": True, "job": job}


async def update_job(
    ctx: PluginContext, job_id: str, body: dict[str, Any], audit: AuditNote
) -> dict[str, Any]:
    job = await ctx.stash[SCHEDULER].update(
        job_id, body, unknown=lambda key: f"unknown cron job field: {key}"
    )
    audit.detail = job.expression
    return {"ok": True, "job": job}


async def remove_job(ctx: PluginContext, job_id: str) -> dict[str, bool]:
    """The body is optional and ignored (an ``agent_key`` used to be required)."""
    await ctx.stash[SCHEDULER].remove(job_id)
    return {"ok": True}
