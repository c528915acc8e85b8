"""Audit: the ``/audit-log`` reader (http-api §1.8, §20). The log itself lives in the kernel."""

from __future__ import annotations

from attrs import field, frozen

from sdk import INT_MAX, AuditPage, PluginContext, Route, hookimpl


@frozen
class AuditQuery:
    limit: int = field(default=50, metadata={"clamp": (1, 1000)})
    cursor: str | None = None
    operator: str | None = None
    action: str | None = None
    target: str | None = None
    outcome: str | None = None
    since_ms: int | None = field(default=None, metadata={"clamp": (0, INT_MAX)})
    until_ms: int | None = field(default=None, metadata={"clamp": (0, INT_MAX)})


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="GET",
            path="/audit-log",
            handler=audit_log,
            query=AuditQuery,
            availability="always",
        )
    ]


async def audit_log(ctx: PluginContext, query: AuditQuery) -> AuditPage:
    return await ctx.audit.query(
        limit=query.limit,
        cursor=query.cursor,
        operator=query.operator,
        action=query.action,
        target=query.target,
        outcome=query.outcome,
        since_ms=query.since_ms,
        until_ms=query.until_ms,
    )
