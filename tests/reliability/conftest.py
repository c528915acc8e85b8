"""Fault-injection tests against real ``aman serve`` processes (issue 7): shared helpers.

The server fixtures ``aman`` and ``entry_point_plugin`` are those of ``tests/server/conftest.py``
(see there). Test plugins are modules written at run time and loaded as entry-point plugins;
they report what they receive through files, so every check looks at the process from outside:
HTTP answers, those files, stderr, ``/proc/<pid>/status`` and the SQLite file opened read-only.

Waiting is done by :func:`poll` against a deadline; nothing sleeps a fixed time to let the
server catch up.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

_spec = importlib.util.spec_from_file_location(
    "aman_server_fixtures", Path(__file__).resolve().parents[1] / "server" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_server)

aman = _server.aman
entry_point_plugin = _server.entry_point_plugin
Server = _server.Server

T = TypeVar("T")


def poll(probe: Callable[[], T | None], *, deadline: float, what: str, interval: float = 0.02) -> T:
    """Call ``probe`` until it returns something truthy, which is returned; fail the test with
    ``what`` once ``deadline`` seconds have passed."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline} s: {what}")
        time.sleep(interval)


def write_config(path: Path, tree: dict[str, Any]) -> Path:
    """An ``aman.toml`` holding ``tree``; pass ``"--config", str(path)`` to ``aman``."""
    path.write_text(tomli_w.dumps(tree))
    return path


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with ``labels`` in a Prometheus exposition, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


@contextlib.contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    """The database of a server, opened read-only (a WAL left by ``kill -9`` is read, never
    checkpointed into the file), closed at the end of the block."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def integrity(db: Path) -> str:
    with read_only(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def records(path: Path) -> list[list[str]]:
    """The whitespace-separated fields of each complete line a test plugin wrote."""
    if not path.exists():
        return []
    text = path.read_text()
    return [line.split() for line in text.splitlines(keepends=True) if line.endswith("\n")]


class Sampler:
    """Calls ``probe`` every ``interval`` seconds in a thread while in the ``with`` block and
    keeps what it returns (``None`` results are dropped)."""

    def __init__(self, probe: Callable[[], Any], interval: float = 0.05) -> None:
        self._probe = probe
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[Any] = []
        self.error: BaseException | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = self._probe()
            except Exception as exc:  # noqa: BLE001 - reported by the test at the end
                self.error = exc
                return
            if sample is not None:
                self.samples.append(sample)
            self._stop.wait(self._interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder for the test's plugin modules; pass it as ``pythonpath`` to ``aman``."""
    folder = tmp_path / "plugins-src"
    folder.mkdir()
    yield folder
