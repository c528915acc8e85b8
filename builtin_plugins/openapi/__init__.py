"""OpenAPI: ``GET /openapi.json`` describes the routes the runtime serves right now (issue 7).

The document is generated from the live route table at every request (``document.py``), so it
always matches what is served, the routes of plugins installed or enabled a moment ago included.
The route is protected like the rest of the API (open while no token is configured, http-api
§1.2) and answers in every phase (``always``, §1.7): the route table exists from phase 0.
"""

from __future__ import annotations

from typing import Any

from sdk import PluginContext, Route, hookimpl

from .document import document

__all__ = ["openapi"]


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(
            method="GET",
            path="/openapi.json",
            handler=openapi,
            name="openapi",
            availability="always",
        )
    ]


async def openapi(ctx: PluginContext) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the served routes."""
    return document(
        ctx.plugins.routes(),
        ctx.plugins.list(),
        version=ctx.lifecycle.version,
        dump=ctx.converter.unstructure,
    )
