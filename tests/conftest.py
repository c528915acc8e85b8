"""Shared fixtures: the SDK's pytest plugin (``sdk.testing``) provides ``make_kernel``,
``kernel`` and ``client``; these add what only the runtime's own tests need."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from sdk.testing import serve


@pytest_asyncio.fixture(name="serve_kernel")
async def _serve_kernel() -> AsyncIterator[Callable[[Any], Any]]:
    """``client = await serve_kernel(kernel)``: serve several kernels in one test."""
    running: list[Any] = []

    async def start(kernel: Any) -> Any:
        gen = serve(kernel)
        running.append(gen)
        return await gen.__anext__()

    yield start
    for gen in reversed(running):
        await gen.aclose()
