"""The soul file watcher (http-api §12, ``soul.watch``): reports changes to the soul files.

``watchfiles`` (imported when the watch starts, as the timers and skills plugins do) listens on
the directories that hold the soul files, not recursively, and hands over changes in small
batches; ``on_change`` gets the soul files each batch touched. Directories that do not exist yet
(``<runtime.dir>/agents/<id>/``) are looked for every second; the watch restarts when one appears,
when a watched one disappears or when the set of files changes, and then reports every file once,
so a file written while nothing watched it is not missed (``on_change`` compares contents, so an
unchanged file costs one read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from sdk import cancel

__all__ = ["Watcher"]

log = logging.getLogger("aman.plugin.soul")
STEP_MS = 50  # watchfiles: quiet time that closes a batch of raw changes
GROUP_MS = 200  # watchfiles: longest batch (an editor's truncate-then-write lands in one)
RESCAN_MS = 1000  # how often missing and vanished directories are checked; the retry delay


class Watcher:
    """Watches the files ``files()`` names (read again on every restart)."""

    def __init__(
        self,
        files: Callable[[], set[Path]],
        on_change: Callable[[set[Path]], Awaitable[None]],
    ) -> None:
        self._files = files
        self._on_change = on_change
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: Change batches handled so far (the last one's ``on_change`` has returned).
        self.batches = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="aman-soul-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if self._stop is not None:
            self._stop.set()  # the watcher thread returns within STEP_MS
        await cancel(task)

    def restart(self) -> None:
        """Watch again at once (the set of files changed)."""
        if self._stop is not None:
            self._stop.set()

    async def _watch(self) -> None:
        first = True
        while True:
            files = self._files()
            present = _present(files)
            if not present:
                first = False
                await asyncio.sleep(RESCAN_MS / 1000)
                continue
            try:
                # after a restart, what happened while nothing watched
                await self._listen(files, present, set() if first else set(files))
            except Exception as exc:  # noqa: BLE001 - keep watching
                log.warning("watching %s failed: %s", ", ".join(map(str, present)), exc)
                await asyncio.sleep(RESCAN_MS / 1000)
            first = False

    async def _listen(self, files: set[Path], present: list[Path], pending: set[Path]) -> None:
        """Watch ``present`` until the watch must restart; ``pending`` is reported first."""
        from watchfiles import awatch  # imported when a watch starts: keeps start-up short

        self._stop = asyncio.Event()
        watcher = awatch(
            *present,
            watch_filter=lambda _change, path: Path(path) in files,
            debounce=GROUP_MS,
            step=STEP_MS,
            stop_event=self._stop,
            rust_timeout=RESCAN_MS,
            yield_on_timeout=True,
            recursive=False,
        )
        async with contextlib.aclosing(watcher) as changes:
            async for batch in changes:
                pending |= {Path(path) for _change, path in batch}
                if pending:
                    await self._on_change(pending)
                    pending = set()
                    self.batches += 1
                if self._files() != files or _present(files) != present:
                    return


def _present(files: set[Path]) -> list[Path]:
    """The directories of ``files`` that exist, sorted."""
    return sorted({f.parent for f in files if f.parent.is_dir()})
