"""The example plugins, packed with ``aman plugin pack`` and installed with ``aman plugin install``
into a real ``aman serve`` (issue 5, items 5 to 7): routes, their own table, a UI page, a bus
subscription and an event source; then an upgrade and an uninstall."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import aman_command, clean_env

pytestmark = pytest.mark.server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOKEN = "t0ken"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*aman_command(), "plugin", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def pack_and_install(src: Path, tmp_path: Path, url: str) -> dict:
    packed = cli("pack", str(src), "-o", str(tmp_path / "dist" / f"{src.name}.tar.gz"), cwd=tmp_path)
    assert packed.returncode == 0, packed.stderr
    archive = Path(packed.stdout.split(" sha256=")[0])
    installed = cli("install", str(archive), "--url", url, "--token", TOKEN, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    return json.loads(installed.stdout)


def test_examples_pack_install_run_upgrade_uninstall(aman, tmp_path):
    server = aman(token=TOKEN)
    with server.client() as c, server.client(auth=False) as anonymous:
        notes = pack_and_install(EXAMPLES / "notes", tmp_path, server.base_url)
        assert (notes["plugin_name"], notes["version"], notes["state"]) == ("notes", "0.1.0", "running")
        created = c.post("/api/v1/notes/items", json={"text": "from the CLI test"})
        assert created.status_code == 200, created.text
        assert c.get("/api/v1/notes/items").json()["items"][0]["text"] == "from the CLI test"
        assert anonymous.get("/api/v1/notes/items").status_code == 401
        assert anonymous.get("/ui/pages").json() == [
            {"id": "notes", "label": "Notes", "plugin": "notes", "url": "/api/v1/notes/ui/index.html"}
        ]
        page = anonymous.get("/api/v1/notes/ui/index.html")
        assert page.status_code == 200 and "<h1>Notes</h1>" in page.text
        assert page.headers["cache-control"] == "no-cache"

        watcher = pack_and_install(EXAMPLES / "watcher", tmp_path, server.base_url)
        assert watcher["state"] == "running"
        c.post("/events/push", json={"event_type": "deploy:done", "source": "ci", "payload": {}})
        deadline = time.monotonic() + 10
        while True:
            stats = anonymous.get("/api/v1/watcher/stats")  # public_routes
            assert stats.status_code == 200, stats.text
            if stats.json()["by_type"].get("deploy:done") == 1:
                break
            assert time.monotonic() < deadline, stats.json()
            time.sleep(0.05)

        # Upgrade: the same plugin with a new version; its table and rows are kept.
        src = tmp_path / "notes-src"
        shutil.copytree(EXAMPLES / "notes", src, ignore=shutil.ignore_patterns("__pycache__"))
        manifest = src / "plugin.toml"
        manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
        upgraded = pack_and_install(src, tmp_path, server.base_url)
        assert (upgraded["version"], upgraded["replaced_version"]) == ("0.2.0", "0.1.0")
        assert len(c.get("/api/v1/notes/items").json()["items"]) == 1

        # The same version again is refused, with the server's message and a non-zero exit.
        again = cli("install", str(tmp_path / "dist" / "notes-src.tar.gz"), "--url", server.base_url, "--token", TOKEN, cwd=tmp_path)
        assert again.returncode == 1
        assert "plugin notes 0.2.0 is already installed" in again.stderr

        assert c.post("/plugin/notes/uninstall").status_code == 200
        assert c.get("/api/v1/notes/items").status_code == 404
        assert anonymous.get("/api/v1/notes/ui/index.html").status_code == 404
        assert anonymous.get("/ui/pages").json() == []
    assert server.stop() == 0
