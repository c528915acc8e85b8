"""Small asyncio helpers for plugins that run background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel"]


async def cancel(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel the given tasks and wait until they have ended (``None`` and the calling task
    itself are skipped), typically in ``on_shutdown``::

        await cancel(ctx.stash[POLLER])
    """
    current = asyncio.current_task()
    running = [t for t in tasks if t is not None and t is not current]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
