"""Watch sources ``[sources.watch.<name>]`` (formats §1.4; http-api §6)."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sdk.testing import Recorder
from sdk.testing import wait_for as _wait_for

FILE_EVENTS = ("file_created", "file_changed", "file_deleted")


class FileEvents(Recorder):
    """Keeps the file events of watch sources; ``about()`` tells what happened to one file."""

    def about(self, path: Path, source: str = "watch:inbox") -> list[tuple[str, str]]:
        return [
            (e.event_type, e.payload["kind"])
            for e in self.seen
            if e.source == source and e.payload["path"] == str(path)
        ]


async def wait_for(predicate, timeout: float = 10.0) -> None:
    """File events arrive through the OS watcher: allow more time than the default."""
    await _wait_for(predicate, timeout=timeout, interval=0.02)


async def until_watching(
    recorder: FileEvents, directory: Path, source: str = "watch:inbox"
) -> None:
    """Touch a new probe file until the watcher reports it: it is listening from then on."""
    probe = directory / f"probe-{len(recorder.seen)}.txt"
    deadline = asyncio.get_running_loop().time() + 10
    while not [e for e in recorder.seen if e.source == source and e.payload["path"] == str(probe)]:
        assert asyncio.get_running_loop().time() < deadline, "the watcher never started"
        probe.write_text(str(asyncio.get_running_loop().time()))
        await asyncio.sleep(0.1)
    probe.unlink()
    await wait_for(lambda: ("file_deleted", "deleted") in recorder.about(probe, source))


@pytest.fixture(name="start")
async def _start(make_kernel, serve_kernel, tmp_path):
    async def start(table: str, **settings: Any):
        path = tmp_path / "aman.toml"
        path.write_text(table)
        recorder = FileEvents(*FILE_EVENTS)
        kernel = make_kernel(recorder, config_path=path, settings=settings)
        client = await serve_kernel(kernel)
        return client, kernel, recorder, path

    return start


async def test_reports_created_changed_and_deleted_files_matching_the_patterns(start, tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    client, kernel, recorder, _ = await start(
        f'[sources.watch.inbox]\npaths = ["{inbox}"]\npatterns = ["*.txt"]\ndebounce_ms = 100\n'
    )
    info = kernel.sources.get("watch:inbox")
    assert (info.kind, info.mode, info.trust_level, info.plugin, info.state) == (
        "watch",
        "push",
        "trusted",
        "timers",
        "running",
    )
    assert info.config == {
        "paths": [str(inbox)],
        "recursive": True,
        "patterns": ["*.txt"],
        "debounce_ms": 100,
        "max_stable_wait_ms": 5000,
    }
    await until_watching(recorder, inbox)

    note = inbox / "note.txt"
    note.write_text("one")
    (inbox / "skip.log").write_text("not matched")
    nested = inbox / "sub" / "deep.txt"
    nested.write_text("nested")
    await wait_for(lambda: recorder.about(note) == [("file_created", "created")])
    await wait_for(lambda: recorder.about(nested) == [("file_created", "created")])
    note.write_text("two")
    await wait_for(lambda: recorder.about(note)[-1:] == [("file_changed", "changed")])
    note.unlink()
    await wait_for(lambda: recorder.about(note)[-1:] == [("file_deleted", "deleted")])
    assert recorder.about(note) == [
        ("file_created", "created"),
        ("file_changed", "changed"),
        ("file_deleted", "deleted"),
    ]
    assert recorder.about(inbox / "skip.log") == []
    assert not [e for e in recorder.seen if e.payload["path"] == str(inbox / "sub")]
    event = next(e for e in recorder.seen if e.payload["path"] == str(note))
    assert (event.delivery, event.priority, event.trust_level) == (
        "at_most_once",
        "normal",
        "trusted",
    )
    assert event.payload == {"path": str(note), "kind": "created"}


async def test_quick_writes_are_debounced_and_a_growing_file_is_reported_anyway(start, tmp_path):
    inbox = tmp_path / "runtime" / "inbox"  # relative paths are under runtime.dir
    inbox.mkdir(parents=True)
    client, kernel, recorder, _ = await start(
        '[sources.watch.inbox]\npaths = ["inbox"]\ndebounce_ms = 300\nmax_stable_wait_ms = 600\n'
    )
    await until_watching(recorder, inbox)
    burst = inbox / "burst.txt"
    for i in range(5):  # well within the quiet time: one report
        burst.write_text(str(i))
        await asyncio.sleep(0.02)
    await wait_for(lambda: recorder.about(burst) == [("file_created", "created")])

    growing = inbox / "growing.bin"
    began = asyncio.get_running_loop().time()
    with growing.open("w") as fh:
        while not recorder.about(growing):
            assert asyncio.get_running_loop().time() - began < 10
            fh.write("x" * 100)
            fh.flush()
            await asyncio.sleep(0.05)  # never quiet for 300 ms
    assert recorder.about(growing) == [("file_created", "created")]
    assert asyncio.get_running_loop().time() - began >= 0.5
    assert recorder.about(burst) == [("file_created", "created")]


async def test_not_recursive_watches_the_top_directory_only(start, tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    client, kernel, recorder, _ = await start(
        f'[sources.watch.inbox]\npaths = ["{inbox}"]\nrecursive = false\ndebounce_ms = 50\n'
    )
    await until_watching(recorder, inbox)
    (inbox / "sub" / "deep.txt").write_text("x")
    top = inbox / "top.txt"
    top.write_text("x")
    await wait_for(lambda: recorder.about(top) == [("file_created", "created")])
    await asyncio.sleep(0.3)
    assert recorder.about(inbox / "sub" / "deep.txt") == []


async def test_a_missing_path_is_watched_once_it_appears(start, tmp_path):
    inbox = tmp_path / "later"
    client, kernel, recorder, _ = await start(
        f'[sources.watch.inbox]\npaths = ["{inbox}"]\ndebounce_ms = 50\n'
    )
    assert kernel.sources.get("watch:inbox").state == "running"
    inbox.mkdir()
    await until_watching(recorder, inbox)


async def test_pause_stops_listening_and_reconfigure_writes_back(start, tmp_path):
    inbox, other = tmp_path / "inbox", tmp_path / "other"
    inbox.mkdir()
    other.mkdir()
    client, kernel, recorder, path = await start(
        f'[sources.watch.inbox]\npaths = ["{inbox}"]\ndebounce_ms = 50\n'
    )
    await until_watching(recorder, inbox)
    await kernel.sources.pause("watch:inbox")
    quiet = inbox / "quiet.txt"
    quiet.write_text("x")
    await asyncio.sleep(0.4)
    assert recorder.about(quiet) == []
    await kernel.sources.resume("watch:inbox")
    await until_watching(recorder, inbox)

    resp = await client.put(
        "/event-source/watch:inbox/config", json={"paths": [str(other)], "patterns": ["*.csv"]}
    )
    assert resp.status_code == 200, await resp.get_json()
    table = tomllib.loads(path.read_text())["sources"]["watch"]["inbox"]
    assert (table["paths"], table["patterns"]) == ([str(other)], ["*.csv"])
    data = other / "data.csv"
    deadline = asyncio.get_running_loop().time() + 10
    while not recorder.about(data):
        assert asyncio.get_running_loop().time() < deadline
        data.write_text(str(deadline))
        await asyncio.sleep(0.1)
    (inbox / "old.csv").write_text("x")
    await asyncio.sleep(0.3)
    assert recorder.about(inbox / "old.csv") == []

    for body, message in [
        ({"paths": "x"}, "field 'paths' must be an array of strings"),
        ({"paths": []}, "field 'paths' must have 1 to 100 elements"),
        ({"recursive": "yes"}, "field 'recursive' must be a boolean"),
        ({"debounce_ms": 60001}, "field 'debounce_ms' must be between 0 and 60000"),
        ({"interval_ms": 100}, "unknown config key for source watch:inbox: interval_ms"),
    ]:
        resp = await client.put("/event-source/watch:inbox/config", json=body)
        assert (resp.status_code, (await resp.get_json())["error"]) == (400, message)
