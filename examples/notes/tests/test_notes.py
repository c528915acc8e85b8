"""Tests of the notes example, with the SDK's pytest plugin only."""

from pathlib import Path

import pytest

from sdk.testing import load_plugin

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.asyncio


@pytest.fixture
def aman_plugins():
    return [load_plugin(ROOT)]


@pytest.fixture
def aman_settings():
    return {"http.token": "secret"}


AUTH = {"Authorization": "Bearer secret"}


async def test_add_list_get_delete(client):
    resp = await client.post("/api/v1/notes/items", json={"text": "buy milk"}, headers=AUTH)
    assert resp.status_code == 200
    note = await resp.get_json()
    assert note["text"] == "buy milk"
    listed = await (await client.get("/api/v1/notes/items", headers=AUTH)).get_json()
    assert listed == {"items": [note]}
    assert await (await client.get(f"/api/v1/notes/items/{note['id']}", headers=AUTH)).get_json() == note
    assert (await client.delete(f"/api/v1/notes/items/{note['id']}", headers=AUTH)).status_code == 200
    missing = await client.get(f"/api/v1/notes/items/{note['id']}", headers=AUTH)
    assert missing.status_code == 404
    assert await missing.get_json() == {"error": f"note not found: {note['id']}"}


async def test_routes_need_the_token_and_a_valid_body(client):
    assert (await client.get("/api/v1/notes/items")).status_code == 401
    resp = await client.post("/api/v1/notes/items", json={"text": "  "}, headers=AUTH)
    assert resp.status_code == 400


async def test_notes_survive_a_restart(make_kernel, tmp_path):
    from sdk.testing import serve

    for expected in (0, 1):
        kernel = make_kernel(load_plugin(ROOT), runtime_dir=tmp_path / "rt")
        async for client in serve(kernel):
            body = await (await client.get("/api/v1/notes/items")).get_json()
            assert len(body["items"]) == expected
            await client.post("/api/v1/notes/items", json={"text": "kept"})


async def test_the_page_is_served_without_the_token(client):
    resp = await client.get("/api/v1/notes/ui/index.html")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"<h1>Notes</h1>" in await resp.get_data()
    script = await client.get("/api/v1/notes/ui/notes.js")
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
