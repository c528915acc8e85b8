"""``/runtime/config`` and the health aliases (http-api §2, §3)."""

from __future__ import annotations

from pathlib import Path


async def test_runtime_config_reports_absolute_paths_and_never_the_token(make_kernel, serve_kernel, tmp_path):
    kernel = make_kernel(settings={"http.token": "s3cret"})
    client = await serve_kernel(kernel)
    body = await (await client.get("/runtime/config", headers={"x-aman-token": "s3cret"})).get_json()
    runtime_dir = tmp_path / "runtime"
    assert body == {
        "bind_addr": "127.0.0.1:9090",
        "runtime_dir": str(runtime_dir),
        "skills_dir": str(runtime_dir / "skills"),
        "soul_path": str(runtime_dir / "SOUL.md"),
        "plugins_dir": str(runtime_dir / "plugins"),
        "config_path": None,
        "api_token_configured": True,
        "debug_endpoints_enabled": False,
        "risky_capabilities_enabled": False,
        "drain_timeout_sec": 30,
        "event_bus_mode": "persistent",
        "event_bus_max_queue_size": 10000,
        "default_agent": "aman",
        "version": kernel.version,
    }
    assert all(Path(body[k]).is_absolute() for k in ("runtime_dir", "skills_dir", "soul_path", "plugins_dir"))
    assert "s3cret" not in str(body)


async def test_health_is_an_alias_of_ready_and_public(make_kernel, serve_kernel):
    client = await serve_kernel(make_kernel(settings={"http.token": "s3cret"}))
    for path in ("/health", "/health/ready"):
        resp = await client.get(path)
        assert (resp.status_code, await resp.get_json()) == (200, {"status": "ready", "phase": 5})
    assert (await client.get("/runtime/status")).status_code == 401
