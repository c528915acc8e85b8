"""The API token over real HTTP (contract D5, http-api §1.2)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.server

TOKEN = "tok-3f9a"
UNAUTHORIZED = {"error": "missing or invalid API token"}
PROTECTED = ("/runtime/status", "/runtime/config", "/audit-log", "/plugins", "/config")
PUBLIC = ("/health/live", "/health/ready", "/health", "/metrics")


def assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json() == UNAUTHORIZED
    assert r.headers["www-authenticate"] == 'Bearer realm="aman"'
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.headers["cache-control"] == "no-store"


def check_token_rules(base_url: str, token: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        for path in PROTECTED:
            assert_401(c.get(path))
            assert_401(c.get(path, headers={"Authorization": "Bearer wrong"}))
            assert_401(c.get(path, headers={"x-aman-token": "wrong"}))
            assert c.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200, (
                path
            )
            assert c.get(path, headers={"x-aman-token": token}).status_code == 200, path
        for path in PUBLIC:
            assert c.get(path).status_code == 200, path
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 200, path

        # The scheme is case-sensitive; another scheme counts as absent (then x-aman-token is used).
        assert_401(c.get("/runtime/status", headers={"Authorization": f"bearer {token}"}))
        assert_401(c.get("/runtime/status", headers={"Authorization": f"Basic {token}"}))
        r = c.get(
            "/runtime/status", headers={"Authorization": f"Basic {token}", "x-aman-token": token}
        )
        assert r.status_code == 200
        # A present but wrong Bearer value fails even with a right x-aman-token.
        assert_401(
            c.get(
                "/runtime/status", headers={"Authorization": "Bearer nope", "x-aman-token": token}
            )
        )
        # The token is never a query parameter outside /events/stream.
        assert_401(c.get("/runtime/status", params={"token": token}))


def test_token_from_flag(aman) -> None:
    server = aman(token=TOKEN)
    check_token_rules(server.base_url, TOKEN)
    with server.client() as c:
        r = c.get("/runtime/config")
        assert r.json()["api_token_configured"] is True
        assert TOKEN not in r.text  # the token itself is never returned
        r = c.get("/config")
        assert TOKEN not in r.text
        assert r.json()["config"]["http"]["token"] == "[REDACTED]"
        assert "http.token" in r.json()["overridden"]

    # Refused calls change nothing and are not audited.
    with server.client(auth=False) as anon:
        assert_401(anon.post("/agent/shutdown", headers={"x-aman-confirm": "yes"}))
        assert_401(
            anon.post(
                "/config/set",
                headers={"x-aman-confirm": "yes", "Authorization": "Bearer wrong"},
                json={"changes": {"event_bus.max_queue_size": 4096}},
            )
        )
    with server.client() as c:
        assert c.get("/runtime/status").json()["status"] == "ready"
        assert c.get("/config").json()["config"]["event_bus"]["max_queue_size"] == 10000
        assert c.get("/audit-log").json() == {"items": [], "next_cursor": None}
    assert not (server.cwd / "aman.toml").exists()
    assert server.stop() == 0


def test_token_from_environment_allows_a_non_loopback_bind(aman, free_port) -> None:
    port = free_port()
    server = aman(env={"AMAN_HTTP_TOKEN": TOKEN}, bind=f"0.0.0.0:{port}", port=port)
    check_token_rules(server.base_url, TOKEN)
    with server.client(TOKEN) as c:
        cfg = c.get("/runtime/config").json()
        assert cfg["api_token_configured"] is True
        assert cfg["bind_addr"] == f"0.0.0.0:{port}"
        assert "http.token" in c.get("/config").json()["overridden"]
    assert server.stop() == 0
