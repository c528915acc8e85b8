"""``GET /capabilities`` (http-api §17)."""

from __future__ import annotations

from typing import Any

from sdk import Health, ProviderType, Route, hookimpl


class Rss:
    """Fetches feeds."""

    name = "rss"

    @hookimpl
    def register_capabilities(self) -> list[str]:
        return ["rss", "feeds"]

    @hookimpl
    def register_routes(self) -> list[Route]:
        return [Route(method="GET", path="/feeds", handler=self.feeds)]

    @hookimpl
    def health_check(self) -> Health:
        return Health(status="degraded", detail="slow upstream")

    async def feeds(self) -> list[Any]:
        return []


class Local:
    name = "local-llm"

    @hookimpl
    def register_llm_providers(self) -> list[ProviderType]:
        return [ProviderType(type="local", factory=lambda config: None)]


async def test_capabilities_follow_the_running_plugins(make_kernel, serve_kernel):
    kernel = make_kernel(Rss(), Local())
    client = await serve_kernel(kernel)
    body = await (await client.get("/capabilities")).get_json()
    assert list(body) == sorted(body)
    assert body["chat"] == [{"capability": "chat", "plugin": "gateway", "version": kernel.version, "status": "Healthy"}]
    assert [e["plugin"] for e in body["llm"]] == ["llm-echo", "llm-openai", "local-llm"]
    assert [e["plugin"] for e in body["tools"]] == ["builtin-tools"]
    assert body["rss"] == [{"capability": "rss", "plugin": "rss", "version": kernel.version, "status": "Degraded"}]
    assert [e["plugin"] for e in body["feeds"]] == ["rss"]
    assert [e["plugin"] for e in body["api"]] == ["rss"]

    await client.post("/plugin/rss/disable", headers={"x-aman-confirm": "yes"})
    await client.post("/plugin/llm-echo/disable", headers={"x-aman-confirm": "yes"})
    await client.post("/plugin/builtin-tools/disable", headers={"x-aman-confirm": "yes"})
    body = await (await client.get("/capabilities")).get_json()
    assert "rss" not in body and "feeds" not in body and "api" not in body and "tools" not in body
    assert [e["plugin"] for e in body["llm"]] == ["llm-openai", "local-llm"]

    await client.post("/plugin/rss/enable")
    body = await (await client.get("/capabilities")).get_json()
    assert [e["plugin"] for e in body["rss"]] == ["rss"]


async def test_hook_register_capabilities(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(Rss()))
    body = await (await client.get("/capabilities")).get_json()
    assert {"rss", "feeds"} <= set(body)
