"""Tests of the watcher example, with the SDK's pytest plugin only."""

import asyncio
from pathlib import Path

import pytest

from sdk.testing import load_plugin, wait_for

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": "Bearer secret"}

pytestmark = pytest.mark.asyncio


@pytest.fixture
def aman_plugins():
    return [load_plugin(ROOT)]


@pytest.fixture
def aman_settings():
    return {"http.token": "secret", "plugin.watcher.interval_sec": 0.02}


async def counted(client, event_type):
    # Public once installed (the manifest's public_routes); in-process the token is needed.
    resp = await client.get("/api/v1/watcher/stats", headers=AUTH)
    assert resp.status_code == 200
    return (await resp.get_json())["by_type"].get(event_type, 0)


async def eventually(client, event_type, at_least):
    seen = [0]

    async def check():
        seen[0] = await counted(client, event_type)
        return seen[0] >= at_least

    for _ in range(300):
        if await check():
            return seen[0]
        await asyncio.sleep(0.01)
    pytest.fail(f"{event_type}: {seen[0]} events, expected {at_least}")


async def test_the_ticker_publishes_and_the_subscription_counts(client):
    await eventually(client, "watcher:tick", 3)


async def test_pushed_events_are_counted(client):
    resp = await client.post(
        "/events/push", json={"event_type": "deploy:done", "source": "ci", "payload": {}}, headers=AUTH
    )
    assert resp.status_code in (200, 202), await resp.get_data()
    assert await eventually(client, "deploy:done", 1) == 1


async def test_the_source_can_be_paused_and_reconfigured(client):
    source = "/event-source/watcher:ticker"
    assert (await client.post(f"{source}/pause", headers=AUTH)).status_code == 200
    before = await counted(client, "watcher:tick")
    await asyncio.sleep(0.1)
    assert await counted(client, "watcher:tick") - before <= 1  # a tick already in flight
    resp = await client.put(f"{source}/config", json={"interval_sec": 0.01}, headers=AUTH)
    assert resp.status_code == 200, await resp.get_data()
    bad = await client.put(f"{source}/config", json={"colour": 1}, headers=AUTH)
    assert bad.status_code == 400
    assert (await client.post(f"{source}/resume", headers=AUTH)).status_code == 200
    await eventually(client, "watcher:tick", before + 2)


async def test_the_subscription_stops_with_the_plugin(client, kernel):
    confirm = {**AUTH, "x-aman-confirm": "yes"}
    assert (await client.post("/plugin/watcher/disable", headers=confirm)).status_code == 200
    assert (await client.get("/api/v1/watcher/stats", headers=AUTH)).status_code == 404
    await wait_for(lambda: "watcher:ticker" not in {s.id for s in kernel.sources.list()})
