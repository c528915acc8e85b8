"""``GET /health/llm``: the default provider's backend state (http-api §2)."""

from __future__ import annotations

import asyncio

import pytest

from builtin_plugins.llm import REGISTRY, redact
from sdk import ProviderType, hookimpl

CONFIRM = {"x-aman-confirm": "yes"}


class Failing:
    """A provider whose backend is unreachable until ``Failing.healthy`` is set."""

    healthy = False

    def __init__(self, config) -> None:
        self.config = config

    async def probe(self) -> None:
        if not Failing.healthy:
            raise ConnectionError(f"cannot reach {self.config.base_url} with Bearer {self.config.api_key}")


class Flaky:
    name = "flaky"

    @hookimpl
    def register_llm_providers(self):
        return [ProviderType(type="flaky", factory=Failing, default_model="f-1")]


async def test_echo_is_the_default_and_always_ok(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel())
    resp = await client.get("/health/llm")
    body = await resp.get_json()
    assert resp.status_code == 200
    assert {k: body[k] for k in ("status", "provider", "type", "model", "backend")} == {
        "status": "ok", "provider": "echo", "type": "echo", "model": "echo", "backend": "ok"
    }
    (echo,) = body["providers"]
    assert echo["name"] == "echo" and echo["enabled"] is True and echo["consecutive_failures"] == 0
    assert isinstance(echo["checked_at_ms"], int)


async def test_not_ready_is_503(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(settings={"runtime.autostart": False}))
    resp = await client.get("/health/llm")
    assert (resp.status_code, await resp.get_json()) == (503, {"error": "not ready", "phase": 0, "status": "new"})


async def test_disabling_llm_echo_makes_the_default_unavailable(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(settings={"http.token": "t"}))
    auth = {"x-aman-token": "t"}
    await client.post("/plugin/llm-echo/disable", headers={**CONFIRM, **auth})
    resp = await client.get("/health/llm")
    body = await resp.get_json()
    assert resp.status_code == 503
    assert body["error"] == "llm provider unavailable: provider type echo is not available (no enabled plugin provides it)"
    assert body["provider"] == "echo" and body["providers"][0]["enabled"] is False
    await client.post("/plugin/llm-echo/enable", headers=auth)
    assert (await client.get("/health/llm")).status_code == 200


@pytest.fixture(name="flaky")
async def _flaky(make_kernel, serve_kernel, tmp_path, monkeypatch):
    Failing.healthy = False
    monkeypatch.setenv("AMAN_PROVIDER_REMOTE_API_KEY", "sk-secretsecret123")
    path = tmp_path / "aman.toml"
    path.write_text(
        '[llm]\ndefault_provider = "remote"\n\n'
        '[llm.providers.remote]\ntype = "flaky"\nbase_url = "http://127.0.0.1:9/v1"\n'
    )
    kernel = make_kernel(Flaky(), config_path=path)
    events: list = []
    kernel.bus.observers.append(events.append)
    client = await serve_kernel(kernel)
    registry = kernel.stash[REGISTRY]
    return client, registry, events


async def test_failures_degrade_then_take_the_backend_down_and_success_recovers(flaky):
    client, registry, events = flaky
    for _ in range(6):  # the start-up probe may or may not have run yet: count from zero
        await registry.probe_all()
        body = await (await client.get("/health/llm")).get_json()
        if body.get("backend") == "down":
            break
    resp = await client.get("/health/llm")
    body = await resp.get_json()
    assert resp.status_code == 503
    assert body["backend"] == "down" and body["provider"] == "remote"
    remote = next(p for p in body["providers"] if p["name"] == "remote")
    assert remote["consecutive_failures"] >= 6
    assert "sk-secret" not in body["error"] and "[REDACTED]" in body["error"]
    kinds = [e.event_type for e in events if e.event_type.startswith("llm_backend")]
    assert kinds == ["llm_backend_degraded", "llm_backend_down"]

    Failing.healthy = True
    await registry.probe_all(only_unhealthy=True)
    body = await (await client.get("/health/llm")).get_json()
    assert body["status"] == "ok" and body["backend"] == "ok"
    recovered = [e for e in events if e.event_type == "llm_backend_recovered"]
    assert [(e.source, e.payload["from"], e.payload["to"]) for e in recovered] == [("llm:remote", "down", "ok")]


async def test_degraded_still_serves(flaky):
    client, registry, _ = flaky
    while registry.refresh()["remote"].consecutive_failures < 3:
        await registry.probe("remote")
    body = await (await client.get("/health/llm")).get_json()
    assert body["status"] == "ok" and body["backend"] == "degraded"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"llm.default_provider": "nope"}, "llm.default_provider names no provider in llm.providers: nope"),
        ({"llm.providers.x.model": "m"}, "llm.providers.x.type is required"),
        ({"llm.providers.x.type": "openai"}, "llm.providers.x.model is required for type openai"),
        ({"llm.providers.x.type": "telepathy"}, "unknown provider type for llm.providers.x: telepathy"),
    ],
)
async def test_provider_config_rules(make_kernel, serve_kernel, changes, message):
    client = await serve_kernel(make_kernel())
    resp = await client.post("/config/set", json={"changes": changes}, headers=CONFIRM)
    assert (resp.status_code, (await resp.get_json())["error"]) == (400, f"invalid configuration: {message}")


async def test_a_plugin_provider_type_can_be_configured_live(make_kernel, serve_kernel):
    Failing.healthy = True
    client = await serve_kernel(make_kernel(Flaky()))
    resp = await client.post(
        "/config/set",
        json={"changes": {"llm.providers.f.type": "flaky", "llm.default_provider": "f"}},
        headers=CONFIRM,
    )
    assert (await resp.get_json())["applied"] == ["llm.default_provider", "llm.providers.f.type"]
    body = await (await client.get("/health/llm")).get_json()
    assert (body["provider"], body["model"], body["backend"]) == ("f", "f-1", "unknown")


def test_redaction():
    assert redact("Authorization: Bearer abc.def failed") == "Authorization: Bearer [REDACTED] failed"
    assert redact("key sk-abcdefgh1234 rejected") == "key [REDACTED] rejected"
    assert redact("used k3y!", api_key="k3y!") == "used [REDACTED]"


async def test_probes_run_at_start(make_kernel, serve_kernel):
    kernel = make_kernel()
    await serve_kernel(kernel)
    registry = kernel.stash[REGISTRY]
    deadline = asyncio.get_running_loop().time() + 5
    while registry.refresh()["echo"].state != "ok":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
