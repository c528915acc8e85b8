"""Disk full, simulated by the cap ``storage.max_db_bytes`` (SQLite's ``max_page_count``):
mutating requests answer 503 with a clear error, reads go on, nothing is half-written, and the
runtime takes writes again as soon as the cap is raised, without a restart."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from .conftest import integrity, metric, poll, read_only

pytestmark = pytest.mark.server

CONFIRM = {"x-aman-confirm": "yes"}
FULL = {"error": "storage is full: database or disk is full"}
PAYLOAD = "x" * 8192  # each accepted push stores it twice (event store and outbox)


def page_count(db: Path) -> int:
    with read_only(db) as conn:
        return int(conn.execute("PRAGMA page_count").fetchone()[0])


def test_a_full_database_refuses_writes_with_503_keeps_reads_and_recovers(aman):
    server = aman(env={"AMAN_DEBUG_FORCE_ENABLE_DEBUG_ENDPOINTS": "true"})
    db = server.runtime_dir / "aman.db"
    with server.client() as client:

        def push(n: int, **extra: object) -> httpx.Response:
            body = {
                "source": "filler",
                "event_type": "fill.test",
                "payload": {"n": n, "pad": PAYLOAD},
            }
            return client.post("/events/push", json={**body, **extra})

        before = push(0)
        assert before.status_code == 200, before.text
        cap = (page_count(db) + 32) * 4096  # 128 KiB of room
        resp = client.post(
            "/config/set", json={"changes": {"storage.max_db_bytes": cap}}, headers=CONFIRM
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["applied"] == ["storage.max_db_bytes"]

        acked, refused = [before.json()["id"]], []
        for n in range(1, 200):
            resp = push(n)
            if resp.status_code == 503:
                refused.append(n)
                break
            assert resp.status_code == 200, resp.text
            acked.append(resp.json()["id"])
        assert refused, "the cap was never reached"
        assert resp.json() == FULL
        assert "Retry-After" not in resp.headers  # space comes back by an operator, not by time
        # A dedup key refused with its event is not remembered.
        keyed = push(1000, dedup_key="kept-free")
        assert (keyed.status_code, keyed.json()) == (503, FULL)
        dead = {"source": "filler", "event_type": "fill.dead", "payload": {"pad": PAYLOAD * 8}}
        enqueued = client.post("/debug/dlq/enqueue", json=dead)
        assert (enqueued.status_code, enqueued.json()) == (503, FULL)

        # Reads keep working while the database is full.
        assert client.get("/health/ready").status_code == 200
        for event_id in acked[:2] + acked[-2:]:
            assert client.get(f"/events/dump/{event_id}").status_code == 200
        assert client.get("/events/recent", params={"limit": 5}).status_code == 200
        assert client.get("/audit-log", params={"action": "event.push"}).status_code == 200
        assert client.get("/plugins").status_code == 200
        assert client.get("/dlq").status_code == 200
        assert metric(client.get("/metrics").text, "storage_full") == 1
        assert "storage is full (database or disk is full)" in server.stderr

        # Space returns: the cap is lifted live, and writes work again at once.
        resp = client.post(
            "/config/set", json={"changes": {"storage.max_db_bytes": 0}}, headers=CONFIRM
        )
        assert resp.status_code == 200, resp.text
        after = push(2000)
        assert after.status_code == 200, after.text
        acked.append(after.json()["id"])
        again = push(1001, dedup_key="kept-free")
        assert again.status_code == 200 and again.json()["status"] == "queued", again.text
        acked.append(again.json()["id"])
        assert metric(client.get("/metrics").text, "storage_full") == 0
        assert client.post("/debug/dlq/enqueue", json=dead).status_code == 200
        recovered = poll(
            lambda: client.get("/events/recent", params={"event_type": "storage:recovered"}).json()[
                "events"
            ],
            deadline=5,
            what="a storage:recovered event",
        )
        assert recovered[0]["source"] == "storage"
    assert server.stop() == 0

    assert integrity(db) == "ok"
    with read_only(db) as conn:
        stored = {
            row["id"]: json.loads(row["body"])
            for row in conn.execute("SELECT id, body FROM bus_events")
        }
        assert set(acked) <= set(stored)
        # Nothing of a refused push was kept: no event, no outbox row.
        numbers = {
            event["payload"]["n"] for event in stored.values() if event["event_type"] == "fill.test"
        }
        assert not numbers & {*refused, 1000}
        assert conn.execute("SELECT count(*) FROM bus_pending").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1
        changes = conn.execute("SELECT key, new_value FROM config_log ORDER BY seq").fetchall()
        assert [tuple(r) for r in changes] == [
            ("storage.max_db_bytes", repr(cap)),
            ("storage.max_db_bytes", "0"),
        ]
