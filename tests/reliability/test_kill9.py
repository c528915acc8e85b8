"""``kill -9`` at random moments under a steady load of at-least-once ``/events/push`` (D9,
http-api §5.1, §9, §1.8), round after round on one runtime directory.

Builds on ``tests/server/test_serve_durability.py`` (one kill, everything acknowledged is
delivered after the restart) with many kills at random moments, some during start-up (replay),
and checks the whole state afterwards: every acknowledged event is stored and delivered, the
only duplicates are events in flight at a kill (the same id, delivered before the kill but
not yet recorded as done in the database the kill left, and again after the restart), the
database passes ``PRAGMA integrity_check`` after every kill, the DLQ holds exactly one entry
per dead-lettered event and the audit log one record per acknowledged push.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict

import httpx
import pytest

from .conftest import Server, integrity, poll, read_only, records, write_config

pytestmark = pytest.mark.server

ROUNDS = 20
STARTUP_KILLS = (4, 9, 14)  # rounds killed while starting, before ready
SEED = int(os.environ.get("AMAN_KILL_SEED", random.randrange(2**32)))

# Records "<pid> <event id> <n>" for every delivery, one write per line.
RECORDER = """
import os, pathlib
from sdk import EventHandler, hookimpl

OUT = pathlib.Path(os.environ["KILL_OUT"])

@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="record", handler=record, event_types=("load.ok", "load.fail"))]

async def record(event):
    with OUT.open("a") as out:
        out.write(f"{os.getpid()} {event.id} {event.payload['n']}\\n")
"""

# Fails every load.fail event (dead-lettered after its attempts) and takes the others, so it
# never fails three in a row and is never quarantined.
FAILER = """
from sdk import EventHandler, hookimpl

@hookimpl
def register_event_handlers(ctx):
    return [EventHandler(name="fail", handler=check, event_types=("load.ok", "load.fail"))]

async def check(event):
    if event.event_type == "load.fail":
        raise ValueError("refused on purpose")
"""


class Load:
    """Threads pushing numbered events until stopped or the server goes away. ``acked`` maps
    n → id of the pushes answered 200; ``sent`` holds every n sent (answered or not)."""

    def __init__(self, base_url: str, counter: list[int], threads: int = 3) -> None:
        self._base_url = base_url
        self._counter = counter
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.acked: dict[int, str] = {}
        self.sent: set[int] = set()
        self.fails: set[int] = set()

    def _next(self) -> int:
        with self._lock:
            self._counter[0] += 1
            n = self._counter[0]
            self.sent.add(n)
            return n

    def _run(self) -> None:
        with httpx.Client(base_url=self._base_url, timeout=10) as client:
            while not self._stop.is_set():
                n = self._next()
                event_type = "load.fail" if n % 10 == 0 else "load.ok"
                body = {"source": "load", "event_type": event_type, "payload": {"n": n}}
                try:
                    resp = client.post("/events/push", json=body)
                except httpx.TransportError:
                    return  # killed: this push may or may not have been stored
                if resp.status_code == 200:
                    with self._lock:
                        self.acked[n] = resp.json()["id"]
                        if event_type == "load.fail":
                            self.fails.add(n)
                else:
                    assert resp.status_code == 503, resp.text  # draining, not ready

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def test_kill_minus_9_at_random_moments_under_load(aman, entry_point_plugin, plugin_dir, tmp_path):
    rng = random.Random(SEED)
    print(f"AMAN_KILL_SEED={SEED}")
    entry_point_plugin(plugin_dir, "kill_recorder", "recorder", RECORDER)
    entry_point_plugin(plugin_dir, "kill_failer", "failer", FAILER)
    out = tmp_path / "received.txt"
    config = write_config(
        tmp_path / "aman.toml",
        {
            "event_bus": {"retry_max_attempts": 2, "retry_backoff_ms": [20]},
            "plugins": {"quarantine_after_failures": 100},
        },
    )
    options = {"env": {"KILL_OUT": str(out)}, "pythonpath": plugin_dir}
    runtime = tmp_path / "runtime"
    db = runtime / "aman.db"
    counter = [0]
    acked: dict[int, str] = {}
    fails: set[int] = set()
    sent: set[int] = set()
    owed: dict[str, set[str]] = {}  # pid -> events the recorder had not done at its kill

    def kill(server: Server) -> None:
        server.kill()
        assert integrity(db) == "ok", f"seed {SEED}"
        with read_only(db) as conn:
            pending = {row[0] for row in conn.execute("SELECT id FROM bus_pending")}
            done = conn.execute(
                "SELECT event_id FROM bus_deliveries WHERE subscriber = 'plugin:recorder'"
                " AND state = 'done'"
            )
            owed[str(server.pid)] = pending - {row[0] for row in done}

    for round_no in range(ROUNDS):
        if round_no in STARTUP_KILLS:
            server = aman("--config", str(config), runtime_dir=runtime, wait=False, **options)
            time.sleep(rng.uniform(0.3, 1.8))  # the random moment itself, not a wait
            kill(server)
        else:
            server = aman("--config", str(config), runtime_dir=runtime, **options)
            with Load(server.base_url, counter) as load:
                time.sleep(rng.uniform(0.05, 0.6))  # the random moment itself, not a wait
                kill(server)
            acked.update(load.acked)
            fails |= load.fails
            sent |= load.sent

    final = aman("--config", str(config), runtime_dir=runtime, **options)

    def delivered() -> dict[str, list[tuple[str, int]]]:
        seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for pid, event_id, n in records(out):
            seen[event_id].append((pid, int(n)))
        return seen

    due = set(acked.values()).union(*owed.values())  # acknowledged, or stored when killed
    seen = poll(
        lambda: (got := delivered()) and due <= set(got) and got,
        deadline=30,
        what="every acknowledged or stored event delivered after the last restart",
    )
    with final.client() as client:
        dead = poll(
            lambda: (
                (got := dead_letters(client))
                and {entry["event"]["payload"]["n"] for entry in got} >= fails
                and got
            ),
            deadline=30,
            what="every acknowledged load.fail event dead-lettered",
        )
        plugins = {p["name"]: p for p in client.get("/plugins").json()["items"]}
    assert final.stop() == 0

    assert len(acked) >= 10 * (ROUNDS - len(STARTUP_KILLS)), f"too little load: {len(acked)}"
    # Deliveries: every one was of an event sent (acknowledged, or cut off by a kill) ...
    for event_id, deliveries in seen.items():
        (n,) = {d[1] for d in deliveries}
        assert n in sent and acked.get(n, event_id) == event_id
        # ... at most once per process, and again only when the process that delivered it
        # was killed before its completion was stored: an event in flight.
        pids = [d[0] for d in deliveries]
        assert len(pids) == len(set(pids)), f"{event_id} delivered twice by one process"
        for pid in pids[:-1]:
            assert event_id in owed.get(pid, ()), f"{event_id} delivered again after {pid}"
    duplicates = sum(len(d) - 1 for d in seen.values())
    print(f"{ROUNDS} rounds, {len(acked)} acknowledged, {duplicates} redelivered after a kill")

    # The DLQ: one entry per acknowledged load.fail event (polled above), keyed by its id, for
    # the failer only.
    entries = {entry["event"]["payload"]["n"]: entry["id"] for entry in dead}
    assert len(entries) == len(dead) and all(entries[n] == acked[n] for n in fails)
    for entry in dead:
        assert entry["event"]["event_type"] == "load.fail"
        assert entry["failed_subscribers"] == ["plugin:failer"]
        assert entry["reason"] == "DeliveryFailed: plugin:failer: ValueError: refused on purpose"
    assert not plugins["failer"]["unstable"]

    # The stopped server's file: intact, every acknowledged event stored, one audit record
    # per acknowledged push, the outbox empty.
    assert integrity(db) == "ok"
    with read_only(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM bus_events")}
        assert set(acked.values()) <= stored
        pushes = [
            row[0]
            for row in conn.execute(
                "SELECT detail FROM audit WHERE action = 'event.push' AND outcome = 'ok'"
            )
        ]
        assert set(acked.values()) <= set(pushes) and len(pushes) == len(set(pushes))
        assert conn.execute("SELECT count(*) FROM bus_pending").fetchone()[0] == 0


def dead_letters(client: httpx.Client) -> list[dict]:
    """Every DLQ entry of a running server, all pages."""
    items: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = client.get("/dlq", params=params).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
