"""Durability against a real process (http-api §5.1, D9): an acknowledged at-least-once event
survives ``kill -9`` and reaches its subscriber after the restart."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

# A subscriber that holds every event while the block file exists, then records its id.
RECORDER = '''
import asyncio, os, pathlib
from sdk import EventHandler, hookimpl

OUT = pathlib.Path(os.environ["DURABLE_OUT"])
BLOCK = pathlib.Path(os.environ["DURABLE_BLOCK"])

@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="record", handler=record, event_types=("durable.test",))]

async def record(event):
    while BLOCK.exists():
        await asyncio.sleep(0.02)
    with OUT.open("a") as out:
        out.write(event.id + "\\n")
'''


def read_ids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_kill_minus_9_right_after_acknowledged_pushes_loses_nothing(aman, entry_point_plugin, tmp_path):
    plugins = tmp_path / "plugins-src"
    plugins.mkdir()
    entry_point_plugin(plugins, "durable_recorder", "recorder", RECORDER)
    out, block = tmp_path / "received.txt", tmp_path / "block"
    block.touch()
    env = {"DURABLE_OUT": str(out), "DURABLE_BLOCK": str(block)}
    server = aman(env=env, pythonpath=plugins)

    acknowledged = []
    with server.client() as client:
        for n in range(40):
            resp = client.post(
                "/events/push",
                json={"source": "durability", "event_type": "durable.test", "payload": {"n": n}},
            )
            assert resp.status_code == 200, resp.text
            acknowledged.append(resp.json()["id"])
    server.kill()  # SIGKILL: no drain, no checkpoint
    assert read_ids(out) == []

    with sqlite3.connect(server.runtime_dir / "aman.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    block.unlink()
    again = aman(env=env, pythonpath=plugins, runtime_dir=server.runtime_dir)
    deadline = time.monotonic() + 20
    while set(read_ids(out)) != set(acknowledged):
        assert time.monotonic() < deadline, f"missing after restart: {set(acknowledged) - set(read_ids(out))}"
        time.sleep(0.05)
    assert sorted(read_ids(out)) == sorted(acknowledged)  # each exactly once: none had completed
    with again.client() as client:
        for event_id in acknowledged[:3] + acknowledged[-3:]:
            dumped = client.get(f"/events/dump/{event_id}")
            assert dumped.status_code == 200 and dumped.json()["delivery"] == "at_least_once"
    assert again.stop() == 0
