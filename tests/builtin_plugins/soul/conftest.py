"""Fixtures of the soul tests: real soul files in the runtime directory, a served kernel with a
recorder of ``soul_changed``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from builtin_plugins.soul import STATE, Souls
from sdk.testing import Recorder

EXAMPLE = """\
# Aman

## Identity
A calm, careful assistant.

## Core
Be honest. Say when you do not know.

## Expertise
- Python
- distributed systems

## Vibe
Warm, concise.

## Preferences
- short answers
- metric units

## Boundaries
- do not leak secrets
- never delete user files
"""


def soul(name: str, *boundaries: str) -> str:
    """A small soul file's text."""
    items = "".join(f"- {b}\n" for b in boundaries)
    return f"# {name}\n\n## Preferences\n- brevity\n\n## Boundaries\n{items}"


class Env:
    """A served kernel, its client, its runtime directory and helpers."""

    def __init__(self, client: Any, kernel: Any, runtime: Path, recorder: Recorder) -> None:
        self.client, self.kernel, self.runtime, self.recorder = client, kernel, runtime, recorder

    @property
    def souls(self) -> Souls:
        return self.kernel.stash[STATE]

    def events(self) -> list[tuple[str, Any, str | None]]:
        """``soul_changed`` so far: (source, payload, metadata agent id)."""
        return [(e.source, e.payload, e.metadata.agent_id) for e in self.recorder.seen]

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        resp = await self.client.get(path, **kwargs)
        return resp.status_code, await resp.get_json()

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        resp = await self.client.post(path, **kwargs)
        return resp.status_code, await resp.get_json()

    async def audits(self, action: str) -> list[tuple[str, str, str, str]]:
        page = await self.kernel.audit.query(action=action)
        return [(r.operator, r.target, r.outcome, r.detail) for r in reversed(page.items)]

    async def until_watching(self, path: Path) -> None:
        """Rewrite ``path`` unchanged until the watcher reports it (the OS watch starts shortly
        after start-up): it is listening from then on. An unchanged file publishes nothing."""
        watcher = self.souls.watcher
        assert watcher is not None
        text = path.read_text()
        deadline = asyncio.get_running_loop().time() + 10
        while watcher.batches == 0:
            assert asyncio.get_running_loop().time() < deadline, "the watcher never started"
            path.write_text(text)
            await asyncio.sleep(0.1)


@pytest.fixture(name="start")
def _start(make_kernel, serve_kernel, tmp_path):
    """``env = await start({"SOUL.md": text}, *plugins, settings={...})``: files in the runtime
    directory first, then serve (the watcher is off unless ``soul.watch`` is set)."""

    async def start(
        files: dict[str, str] | None = None, *plugins: Any, settings: dict[str, Any] | None = None
    ) -> Env:
        runtime = tmp_path / "runtime"
        for rel, text in (files or {}).items():
            path = runtime / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        recorder = Recorder("soul_changed")
        kernel = make_kernel(recorder, *plugins, settings={"soul.watch": False, **(settings or {})})
        client = await serve_kernel(kernel)
        return Env(client, kernel, runtime, recorder)

    return start
