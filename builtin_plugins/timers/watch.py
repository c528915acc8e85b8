"""``watch:<name>``: a push source that reports files created, changed and deleted under its
``paths`` (formats §1.4), ``at_most_once`` with priority ``normal``.

``watchfiles`` (the Rust ``notify`` crate) listens and hands over raw changes in small batches;
this module keeps the per-file debounce of the spec on top, because ``watchfiles`` groups changes
for the whole tree: a file is reported once nothing happened to it for ``debounce_ms``, or once
it has kept changing for ``max_stable_wait_ms``. What is reported is decided by the file's state
then: it did not exist before its first change and exists now → ``created``; it existed and still
does → ``changed``; it existed and is gone → ``deleted``; created and deleted again → nothing.
Paths that do not exist yet are checked for every second, and the watch restarts when one
appears or a watched one disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attrs import define

from sdk import TrustLevel, Unavailable, cancel

from .base import ConfiguredSource

if TYPE_CHECKING:
    from watchfiles import Change

__all__ = ["WatchSource"]

log = logging.getLogger("aman.plugin.timers")

_ADDED, _DELETED = 1, 3  # watchfiles.Change.added / .deleted
STEP_MS = 50  # watchfiles: quiet time that closes a batch of raw changes
GROUP_MS = 100  # watchfiles: longest batch
RESCAN_MS = 1000  # how often missing and vanished paths are checked
RETRY_SEC = 1.0  # after the watcher failed


@define
class _Pending:
    first: float
    last: float
    existed: bool


class WatchSource(ConfiguredSource):
    kind = "watch"
    mode: Literal["pull", "push"] = "push"
    trust_level: TrustLevel = "trusted"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, _Pending] = {}
        self._dirs: set[str] = set()
        self._wake = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def _begin(self) -> None:
        await self._end()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch(), name=f"aman-{self.id}"),
            loop.create_task(self._report(), name=f"aman-{self.id}-report"),
        ]

    async def _end(self) -> None:
        if self._stop is not None:
            self._stop.set()  # the watcher thread returns within STEP_MS
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await cancel(task)

    async def _restart(self) -> None:
        self._pending.clear()  # changes seen under the old settings are not reported
        await super()._restart()

    # --- listening --------------------------------------------------------------------------

    def _roots(self) -> list[Path]:
        base = self._ctx.settings.resolve_path("runtime.dir")
        return [(base / Path(p).expanduser()).resolve() for p in self._settings["paths"]]

    def _wanted(self, _change: Change, path: str) -> bool:
        name = os.path.basename(path)
        return any(fnmatchcase(name, pattern) for pattern in self._settings["patterns"])

    async def _watch(self) -> None:
        while True:
            roots = self._roots()
            present = [p for p in roots if p.exists()]
            missing = [p for p in roots if not p.exists()]
            if not present:
                await asyncio.sleep(RESCAN_MS / 1000)
                continue
            self._stop = asyncio.Event()
            from watchfiles import awatch  # imported when a watch starts: keeps start-up short

            try:
                watcher = awatch(
                    *present,
                    watch_filter=self._wanted,
                    debounce=GROUP_MS,
                    step=STEP_MS,
                    stop_event=self._stop,
                    rust_timeout=RESCAN_MS,
                    yield_on_timeout=True,
                    recursive=self._settings["recursive"],
                )
                async with contextlib.aclosing(watcher) as changes:
                    async for batch in changes:
                        self._note(batch)
                        vanished = any(not p.exists() for p in present)
                        if vanished or any(p.exists() for p in missing):
                            break
            except Exception as exc:  # noqa: BLE001 - keep watching
                log.warning(
                    "%s: watching %s failed: %s", self.id, ", ".join(map(str, present)), exc
                )
                await asyncio.sleep(RETRY_SEC)

    def _note(self, batch: set[tuple[Change, str]]) -> None:
        now = asyncio.get_running_loop().time()
        for change, path in batch:
            if os.path.isdir(path):
                self._dirs.add(path)
                continue
            if change == _DELETED and path in self._dirs:
                self._dirs.discard(path)
                continue
            pending = self._pending.get(path)
            if pending is None:
                self._pending[path] = _Pending(first=now, last=now, existed=change != _ADDED)
            else:
                pending.last = now
        if batch:
            self._wake.set()

    # --- reporting --------------------------------------------------------------------------

    def _due(self, pending: _Pending) -> float:
        debounce: int = self._settings["debounce_ms"]
        longest: int = self._settings["max_stable_wait_ms"]
        return min(pending.last + debounce / 1000, pending.first + longest / 1000)

    async def _report(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            for path in [p for p, pending in self._pending.items() if self._due(pending) <= now]:
                pending = self._pending.pop(path, None)
                if pending is not None:
                    await self._emit_change(path, pending)
            deadline = min((self._due(p) for p in self._pending.values()), default=None)
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _emit_change(self, path: str, pending: _Pending) -> None:
        exists = os.path.lexists(path)
        if exists and os.path.isdir(path):
            return
        if exists:
            kind = "changed" if pending.existed else "created"
        elif pending.existed:
            kind = "deleted"
        else:
            return  # created and deleted again before it settled
        emit = self._emit
        if emit is None:
            return
        try:
            await emit(
                f"file_{kind}",
                {"path": path, "kind": kind},
                delivery="at_most_once",
                priority="normal",
            )
        except Unavailable as exc:
            log.debug("%s: %s %s not published: %s", self.id, kind, path, exc)
        except Exception:  # keep reporting
            log.exception("%s: reporting %s %s failed", self.id, kind, path)
