"""Audit: the ``/audit-log`` reader (http-api §1.8, §20). The log itself lives in the kernel."""

from __future__ import annotations

from attrs import field, frozen

from sdk import AuditPage, PluginContext, Route, hookimpl

#: The largest SQLite integer (http-api §0: an ``int`` fits in 64 bits). A time bound beyond it
#: is lowered to it, which selects the same records, instead of overflowing the query (a 500).
_INT_MAX = 2**63 - 1


@frozen
class AuditQuery:
    limit: int = field(default=50, metadata={"clamp": (1, 1000)})
    cursor: str | None = None
    operator: str | None = None
    action: str | None = None
    target: str | None = None
    outcome: str | None = None
    since_ms: int | None = field(default=None, metadata={"clamp": (0, _INT_MAX)})
    until_ms: int | None = field(default=None, metadata={"clamp": (0, _INT_MAX)})


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
