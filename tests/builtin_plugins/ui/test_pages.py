"""``GET /ui/pages`` and the page files under ``/api/v1/<plugin>/ui/`` (http-api §22)."""

from __future__ import annotations

import os
import types

import pytest

from sdk import UiPage, hookimpl
from sdk.testing import load_plugin

MODULE = '''
from sdk import UiPage, hookimpl


@hookimpl
def register_ui_pages(ctx):
    return [UiPage(id="board"), {"id": "stats", "label": "Numbers", "path": "ui/stats.html"}, "help"]
'''


@pytest.fixture
def team(tmp_path):
    """A plugin source tree: plugin.toml, a package and a ui/ folder."""
    root = tmp_path / "team"
    (root / "team_plugin").mkdir(parents=True)
    (root / "plugin.toml").write_text(
        'name = "team"\nversion = "0.1.0"\nmodule = "team_plugin"\napi = "1"\n'
    )
    (root / "team_plugin" / "__init__.py").write_text(MODULE)
    ui = root / "ui"
    (ui / "css").mkdir(parents=True)
    (ui / "index.html").write_text("<h1>board</h1>")
    (ui / "css" / "site.css").write_text("h1 {}")
    (ui / "data.bin").write_bytes(b"\x00\x01")
    (root / "secret.txt").write_text("outside ui/")
    os.symlink(root / "secret.txt", ui / "link.txt")
    os.symlink(root, ui / "up")
    return root


class Broken:
    name = "broken"

    @hookimpl
    def register_ui_pages(self):
        return [UiPage(id="Bad Id"), UiPage(id="ok", path="../outside.html"), UiPage(id="fine")]


async def test_hook_register_ui_pages(make_kernel, serve_kernel, team):
    client = await serve_kernel(make_kernel(load_plugin(team), Broken()))
    resp = await client.get("/ui/pages")  # public
    assert resp.status_code == 200
    assert await resp.get_json() == [
        {"id": "fine", "label": "Fine", "plugin": "broken", "url": "/api/v1/broken/ui/index.html"},
        {"id": "board", "label": "Board", "plugin": "team", "url": "/api/v1/team/ui/index.html"},
        {"id": "stats", "label": "Numbers", "plugin": "team", "url": "/api/v1/team/ui/stats.html"},
        {"id": "help", "label": "Help", "plugin": "team", "url": "/api/v1/team/ui/index.html"},
    ]


async def test_pages_of_a_disabled_plugin_disappear(make_kernel, serve_kernel, team):
    client = await serve_kernel(make_kernel(load_plugin(team), settings={"http.token": "t"}))
    auth = {"Authorization": "Bearer t", "x-aman-confirm": "yes"}
    assert len(await (await client.get("/ui/pages")).get_json()) == 3
    assert (await client.post("/plugin/team/disable", headers=auth)).status_code == 200
    assert await (await client.get("/ui/pages")).get_json() == []
    assert (await client.get("/api/v1/team/ui/index.html")).status_code == 404
    assert (await client.post("/plugin/team/enable", headers=auth)).status_code == 200
    assert len(await (await client.get("/ui/pages")).get_json()) == 3


async def test_no_pages_before_phase_two(make_kernel, team):
    from builtin_plugins.ui import pages

    kernel = make_kernel(load_plugin(team))  # created, not started: nothing runs yet
    assert await pages(kernel.plugins.records["ui"].ctx) == []


async def test_page_files_are_public_regular_files(make_kernel, serve_kernel, team):
    client = await serve_kernel(make_kernel(load_plugin(team), settings={"http.token": "t"}))
    resp = await client.get("/api/v1/team/ui/index.html")
    assert resp.status_code == 200
    assert await resp.get_data() == b"<h1>board</h1>"
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-cache"
    css = await client.get("/api/v1/team/ui/css/site.css")
    assert (css.status_code, css.headers["Content-Type"]) == (200, "text/css; charset=utf-8")
    binary = await client.get("/api/v1/team/ui/data.bin")
    assert binary.headers["Content-Type"] == "application/octet-stream"
    head = await client.head("/api/v1/team/ui/index.html")
    assert head.status_code == 200
    for path in [
        "css",  # a directory: no listing
        "css/",
        "missing.html",
        "link.txt",  # a link to a file
        "up/secret.txt",  # through a link to a directory
        "../secret.txt",
        "%2e%2e/secret.txt",
        "css/%2e%2e/index.html",
        "./index.html",
    ]:
        resp = await client.get(f"/api/v1/team/ui/{path}")
        assert resp.status_code == 404, path
        assert await resp.get_json() == {"error": "not found"}


async def test_a_plugin_without_ui_folder_serves_no_files(make_kernel, serve_kernel):
    plugin = types.ModuleType("bare")
    client = await serve_kernel(make_kernel(("bare", plugin)))
    assert (await client.get("/api/v1/bare/ui/index.html")).status_code == 404


async def test_a_plugin_route_under_ui_wins(make_kernel, serve_kernel, team):
    from sdk import Route

    class Own:
        name = "team"

        @hookimpl
        def register_routes(self):
            return [Route(method="GET", path="/ui/{*path}", handler=self.own)]

        async def own(self, path):
            return {"own": path}

    mod = load_plugin(team)[1]
    Own.__module__ = mod.__name__  # its folder has a ui/ folder too
    client = await serve_kernel(make_kernel(Own(), settings={}))
    assert await (await client.get("/api/v1/team/ui/index.html")).get_json() == {"own": "index.html"}
