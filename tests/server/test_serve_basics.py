"""A default ``aman serve`` over real HTTP: health, runtime control, error shapes (http-api §1–§3)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.server

JSON = "application/json; charset=utf-8"


def test_default_start_answers_health_and_runtime(aman, tmp_path: Path) -> None:
    server = aman()
    with server.client() as c:
        r = c.get("/health/live")
        assert r.status_code == 200
        assert r.headers["content-type"] == JSON
        assert r.headers["cache-control"] == "no-store"
        assert r.json() == {"status": "live", "phase": 5}

        for path in ("/health/ready", "/health"):
            r = c.get(path)
            assert r.status_code == 200, path
            assert r.json() == {"status": "ready", "phase": 5}
            assert r.headers["cache-control"] == "no-store"

        r = c.get("/runtime/status")
        assert r.status_code == 200
        assert r.json() == {"phase": 5, "ready": True, "live": True, "status": "ready"}

        r = c.get("/runtime/config")
        assert r.status_code == 200
        cfg = r.json()
        assert cfg["bind_addr"] == f"127.0.0.1:{server.port}"
        assert cfg["runtime_dir"] == str((tmp_path / "runtime").resolve())
        for key in ("runtime_dir", "skills_dir", "soul_path", "plugins_dir"):
            assert Path(cfg[key]).is_absolute(), (key, cfg[key])
        assert cfg["plugins_dir"] == str((tmp_path / "runtime" / "plugins").resolve())
        assert cfg["config_path"] is None  # no ./aman.toml: built-in defaults
        assert cfg["api_token_configured"] is False
        assert cfg["debug_endpoints_enabled"] is False
        assert cfg["drain_timeout_sec"] == 30
        assert cfg["event_bus_mode"] == "persistent"
        assert cfg["event_bus_max_queue_size"] == 10000
        assert isinstance(cfg["version"], str) and cfg["version"]
        assert "token" not in cfg and "http_token" not in cfg

        # HEAD is accepted wherever GET is: same status and headers, no body.
        get = c.get("/health/live")
        head = c.head("/health/live")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["cache-control"] == "no-store"
        assert c.head("/runtime/status").status_code == 200
        assert c.head("/nope").status_code == 404

        # No token configured: the API is open, and any presented value is ignored.
        for path in ("/runtime/status", "/plugins", "/audit-log", "/config", "/debug/metrics"):
            assert c.get(path).status_code == 200, path
        assert (
            c.get("/runtime/status", headers={"Authorization": "Bearer whatever"}).status_code
            == 200
        )

    # The runtime dir was created where we said, with the SQLite store in it.
    assert (tmp_path / "runtime" / "aman.db").is_file()
    assert server.stop() == 0


def test_unknown_path_and_wrong_method_are_json(aman) -> None:
    server = aman(token="t")
    # No token needed for 404/405 (http-api §1.4 step 1 comes before auth).
    with server.client(auth=False) as c:
        for path in ("/nope", "/health/live/", "/dlq/", "/health//live", "/Health/live"):
            r = c.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"] == JSON
            assert r.headers["cache-control"] == "no-store"
            assert r.json() == {"error": "not found"}

        r = c.post("/health/live")
        assert r.status_code == 405
        assert r.json() == {"error": "method not allowed"}
        assert r.headers["cache-control"] == "no-store"
        allow = {m.strip() for m in r.headers["allow"].split(",")}
        assert {"GET", "HEAD"} <= allow and "POST" not in allow

        r = c.get("/agent/shutdown")
        assert r.status_code == 405
        assert r.json() == {"error": "method not allowed"}
        assert {m.strip() for m in r.headers["allow"].split(",")} == {"POST"}

        r = c.delete("/runtime/status")
        assert r.status_code == 405
        assert "GET" in r.headers["allow"]

        # /metrics is public Prometheus text, and counts the 401s.
        assert c.get("/runtime/status").status_code == 401
        r = c.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert r.headers["cache-control"] == "no-store"
        lines = [line for line in r.text.splitlines() if line and not line.startswith("#")]
        assert all(" " in line for line in lines)
        assert "runtime_phase 5.0" in lines
        assert "runtime_ready 1.0" in lines
        assert any(
            line.startswith("http_auth_failures_total ") and not line.endswith(" 0.0")
            for line in lines
        )
