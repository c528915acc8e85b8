"""The ``Llm`` service under ``sdk.LLM``: providers by name, retries of transient errors before
the first piece, backend health (http-api §11.3 step 3, §2 ``/health/llm``)."""

from __future__ import annotations

import asyncio

import pytest
from attrs import frozen

from builtin_plugins.llm import REGISTRY, Registry, retry_delay
from sdk import LLM, ChatMessage, Llm, LlmError, LlmRequest, ProviderType, hookimpl
from sdk.testing import serve, wait_for
from sdk.testing_openai import OpenAIServer, Reply

KEY = "sk-service-0123456789"
CONFIRM = {"x-aman-confirm": "yes"}
HI = LlmRequest(model="", messages=[ChatMessage(role="user", content="hi")])


@frozen
class Booted:
    kernel: object
    client: object
    service: Llm
    registry: Registry

    def failures(self, name: str = "oa") -> int:
        return self.registry.health(name)["consecutive_failures"]


def config_file(tmp_path, base_url: str, max_retries: int, extra: str = ""):
    path = tmp_path / "aman.toml"
    path.write_text(
        '[llm]\ndefault_provider = "oa"\n\n'
        f'[llm.providers.oa]\ntype = "openai"\nmodel = "m"\nbase_url = "{base_url}"\n'
        f"max_retries = {max_retries}\n{extra}"
    )
    return path


@pytest.fixture(name="boot")
def _boot(make_kernel, serve_kernel, openai_server, tmp_path):
    """``await boot(*plugins, max_retries=5, extra="")``: a served kernel whose default provider
    ``oa`` is the local server, after its start-up probe."""

    async def start(*plugins, max_retries: int = 5, extra: str = "") -> Booted:
        path = config_file(tmp_path, openai_server.base_url, max_retries, extra)
        kernel = make_kernel(*plugins, config_path=path)
        client = await serve_kernel(kernel)
        registry = kernel.stash[REGISTRY]
        await wait_for(lambda: registry.refresh()["oa"].state == "ok")
        return Booted(kernel, client, kernel.stash[LLM], registry)

    return start


def chats(server: OpenAIServer) -> int:
    return sum(r.path == "/v1/chat/completions" for r in server.requests)


async def text(service: Llm, provider: str = "oa", request: LlmRequest = HI) -> str:
    return "".join([d.text async for d in service.stream(provider, request)])


async def failure(service: Llm, provider: str = "oa") -> tuple[str, LlmError]:
    seen = []
    with pytest.raises(LlmError) as caught:
        async for delta in service.stream(provider, HI):
            seen.append(delta.text)
    return "".join(seen), caught.value


def test_retry_delays_triple_up_to_two_minutes():
    assert [retry_delay(n) for n in range(1, 8)] == [1, 3, 9, 27, 81, 120, 120]


async def test_names_models_and_availability(boot):
    booted = await boot()
    service = booted.service
    assert service.names() == ["echo", "oa"]
    assert (service.model("oa"), service.model("echo")) == ("m", "echo")
    with pytest.raises(KeyError):
        service.model("nope")
    assert service.unavailable("oa") is None
    assert service.unavailable("nope") == "provider nope is not configured"
    with pytest.raises(LlmError, match=r"^provider nope is not configured$"):
        await text(service, "nope")

    await booted.client.post("/plugin/llm-openai/disable", headers=CONFIRM)
    reason = "provider type openai is not available (no enabled plugin provides it)"
    assert service.unavailable("oa") == reason
    _, error = await failure(service)
    assert (str(error), error.transient) == (reason, False)
    await booted.client.post("/plugin/llm-openai/enable")
    assert service.unavailable("oa") is None
    assert await text(service) == "echo: hi"


async def test_both_builtin_providers_stream(boot, openai_server):
    booted = await boot()
    assert await text(booted.service, "echo") == "echo: hi"
    assert await text(booted.service) == "echo: hi"
    assert openai_server.requests[-1].body["model"] == "m"


async def test_a_client_error_fails_at_once_and_counts_against_the_backend(boot, openai_server):
    booted = await boot(max_retries=5)
    openai_server.push(Reply(status=400, error="unknown model"))
    _, error = await failure(booted.service)
    assert (error.transient, error.status, chats(openai_server)) == (False, 400, 1)
    assert str(error).endswith(": unknown model")
    assert booted.failures() == 1
    assert await text(booted.service) == "echo: hi"
    assert booted.failures() == 0


async def test_a_rate_limit_is_retried_after_a_second(boot, openai_server):
    booted = await boot(max_retries=2)
    openai_server.push(Reply(status=429, error="slow down"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await text(booted.service) == "echo: hi"
    assert loop.time() - started >= 1
    assert chats(openai_server) == 2 and booted.failures() == 0


async def test_transient_errors_give_up_after_max_retries_attempts(boot, openai_server):
    booted = await boot(max_retries=1)
    openai_server.push(Reply(status=503, error="overloaded"))
    _, error = await failure(booted.service)
    assert (error.transient, error.status, chats(openai_server)) == (True, 503, 1)
    assert booted.failures() == 1


async def test_no_retry_once_a_piece_was_streamed(boot, openai_server):
    booted = await boot(max_retries=5)
    openai_server.push(Reply(text="one two three", drop_after=3))
    seen, error = await failure(booted.service)
    assert (seen, error.transient, chats(openai_server)) == ("one two ", True, 1)
    assert booted.failures() == 1


async def test_closing_the_stream_early_closes_the_connection(boot, openai_server):
    booted = await boot()
    openai_server.push(Reply(text="word " * 500, chunk_delay=0.005))
    stream = booted.service.stream("oa", HI)
    assert (await anext(stream)).text == "word "
    await stream.aclose()
    await wait_for(lambda: openai_server.disconnects == 1)
    assert booted.failures() == 0


class Buggy:
    """A provider type whose stream fails with a plain exception (a provider's bug)."""

    name = "buggy"

    @hookimpl
    def register_llm_providers(self):
        return [ProviderType(type="buggy", factory=BuggyProvider, default_model="b-1")]


class BuggyProvider:
    def __init__(self, config) -> None:
        self.config = config

    async def probe(self) -> None:
        pass

    async def stream(self, request):
        raise RuntimeError(f"boom with {self.config.api_key}")
        yield  # an async generator


async def test_a_provider_bug_is_an_llm_error_without_the_key(boot):
    extra = f'\n[llm.providers.b]\ntype = "buggy"\napi_key = "{KEY}"\n'
    booted = await boot(Buggy(), extra=extra)
    _, error = await failure(booted.service, "b")
    assert (str(error), error.transient) == (
        "provider b failed: RuntimeError: boom with [REDACTED]",
        False,
    )
    assert booted.failures("b") == 1


async def test_health_llm_probes_the_openai_server_with_the_key(boot, openai_server, monkeypatch):
    monkeypatch.setenv("AMAN_PROVIDER_OA_API_KEY", KEY)
    booted = await boot()
    resp = await booted.client.get("/health/llm")
    body = await resp.get_json()
    assert resp.status_code == 200
    assert {k: body[k] for k in ("status", "provider", "type", "model", "backend")} == {
        "status": "ok",
        "provider": "oa",
        "type": "openai",
        "model": "m",
        "backend": "ok",
    }
    probe = next(r for r in openai_server.requests if r.path == "/v1/models")
    assert probe.headers["authorization"] == f"Bearer {KEY}"


async def test_health_llm_reports_a_down_server_without_the_key(boot, openai_server, monkeypatch):
    monkeypatch.setenv("AMAN_PROVIDER_OA_API_KEY", KEY)
    booted = await boot()
    openai_server.models_status = 500
    for _ in range(6):
        await booted.registry.probe("oa")
    resp = await booted.client.get("/health/llm")
    body = await resp.get_json()
    assert resp.status_code == 503
    assert body["error"] == (
        f"llm provider unavailable: LlmError: HTTP 500 from {openai_server.base_url}/models: scripted"
    )
    assert (body["provider"], body["backend"]) == ("oa", "down")
    assert KEY not in str(body)


async def test_stopping_removes_the_service_and_closes_the_providers(
    make_kernel, tmp_path, openai_server
):
    kernel = make_kernel(config_path=config_file(tmp_path, openai_server.base_url, 5))
    running = serve(kernel)
    await anext(running)
    provider = kernel.stash[REGISTRY].refresh()["oa"].instance
    assert await text(kernel.stash[LLM]) == "echo: hi"
    assert provider._client is not None
    await running.aclose()
    assert LLM not in kernel.stash and REGISTRY not in kernel.stash
    assert provider._client is None
