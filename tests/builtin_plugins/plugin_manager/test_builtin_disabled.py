"""A disabled built-in keeps its routes, which answer 503 (http-api §7)."""

from __future__ import annotations

from sdk import Route, hookimpl


class Extra:
    """A non-essential built-in, as later features (cron, notifications) will be."""

    name = "extra"

    @hookimpl
    def register_routes(self):
        return [Route(method="GET", path="/extra", handler=self.extra)]

    async def extra(self):
        return {"ok": True}


async def test_disabled_builtin_routes_answer_503_and_come_back(make_kernel, serve_kernel):
    kernel = make_kernel(("extra", Extra()))
    kernel.plugins.records["extra"].source = "builtin"
    kernel.rebuild_routes()
    client = await serve_kernel(kernel)
    assert (await client.get("/extra")).status_code == 200
    await client.post("/plugin/extra/disable", headers={"x-aman-confirm": "yes"})
    resp = await client.get("/extra")
    assert (resp.status_code, await resp.get_json()) == (503, {"error": "plugin extra is disabled"})
    assert "Retry-After" not in resp.headers
    await client.post("/plugin/extra/enable")
    assert (await client.get("/extra")).status_code == 200
