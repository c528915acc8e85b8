"""Auth: the API token rules of http-api §1.2 (essential).

The dispatcher checks the token on every protected route; this plugin reports in ``/plugins``
whether a token is configured.
"""

from __future__ import annotations

from sdk import Health, PluginContext, hookimpl


@hookimpl
def health_check(ctx: PluginContext) -> Health:
    if ctx.settings.get("http.token"):
        return Health(status="healthy", detail="API token configured")
    return Health(status="healthy", detail="no API token: open API, loopback only")
