"""Fixtures of the skills tests: real skill files in a temporary directory, a served kernel with
a recorder of the events the skills plugin publishes."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from builtin_plugins.skills import SKILLS, Skills
from sdk.testing import Recorder

PUBLISHED = ("skill_reloaded", "message:dispatch", "message:completed")



def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


class Env:
    """A served kernel, its client, the skills directory and helpers."""

    def __init__(self, client: Any, kernel: Any, root: Path, recorder: Recorder) -> None:
        self.client, self.kernel, self.root, self.recorder = client, kernel, root, recorder

    @property
    def skills(self) -> Skills:
        return self.kernel.stash[SKILLS]

    def write(self, rel: str, text: str) -> Path:
        return write(self.root, rel, text)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        resp = await self.client.get(path, **kwargs)
        return resp.status_code, await resp.get_json()

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        resp = await self.client.post(path, **kwargs)
        return resp.status_code, await resp.get_json()

    async def audits(self, action: str) -> list[tuple[str, str, str, str]]:
        page = await self.kernel.audit.query(action=action)
        return [(r.operator, r.target, r.outcome, r.detail) for r in reversed(page.items)]


@pytest.fixture(name="start")
def _start(make_kernel, serve_kernel, tmp_path):
    """``env = await start({"a.yaml": "..."}, *plugins, **settings)``: files first, then serve."""

    async def start(files: dict[str, str] | None = None, *plugins: Any, **settings: Any) -> Env:
        root = tmp_path / "skills"
        root.mkdir(exist_ok=True)
        for rel, text in (files or {}).items():
            write(root, rel, text)
        recorder = Recorder(*PUBLISHED)
        options = {"skills.dir": str(root), "skills.hot_reload.enabled": False}
        options.update({k.replace("__", "."): v for k, v in settings.items()})
        kernel = make_kernel(recorder, *plugins, settings=options)
        client = await serve_kernel(kernel)
        return Env(client, kernel, root, recorder)

    return start
