"""A pytest plugin for plugin authors (registered as the ``pytest11`` entry point ``aman``).

Fixtures:

- ``aman_plugins``: the plugins under test; override it in your ``conftest.py``.
- ``aman_settings``: configuration for the test kernel, by dotted key; override it too.
- ``make_kernel``: a factory ``make_kernel(*plugins, settings={...}, env={...})`` for a kernel with
  the built-ins plus ``plugins``, its runtime directory under ``tmp_path``.
- ``kernel``: ``make_kernel(*aman_plugins, settings=aman_settings)``.
- ``client``: a started, ready app of ``kernel`` and its Quart test client, stopped after the
  test (``resp = await client.get("/api/v1/hello/ping")``).
- ``openai_server``: a local OpenAI-compatible server with scripted replies, for LLM providers
  (``sdk.testing_openai``; its ``base_url`` goes into ``llm.providers.<name>.base_url``).

Helpers: ``load_plugin(root)`` imports the plugin of a source tree laid out as an archive
(``plugin.toml`` in ``root``) and returns ``(name, module)`` for ``aman_plugins``, named as its
manifest says; ``wait_for(predicate)`` polls until an effect shows.

Example::

    @pytest.fixture
    def aman_plugins():
        return [load_plugin(Path(__file__).parents[1])]  # the folder holding plugin.toml

    async def test_ping(client):
        resp = await client.get("/api/v1/hello/ping")
        assert resp.status_code == 200

This module is the one place of the SDK that reaches the runtime, and only inside the fixtures:
importing ``sdk`` never loads the kernel.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from . import EventHandler, hookimpl
from .models import Event
from .testing_openai import OpenAIServer

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - without pytest-asyncio only the sync fixtures exist
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = [
    "Recorder",
    "aman_plugins",
    "aman_settings",
    "load_plugin",
    "make_kernel",
    "serve",
    "wait_for",
]


def load_plugin(root: str | Path) -> tuple[str, Any]:
    """Import the plugin whose ``plugin.toml`` is in ``root``; return ``(name, module)``.

    The module is imported by the name its manifest gives, with ``root`` on ``sys.path`` only
    while it is imported (its own submodules are imported relatively, as in an archive). Use the
    pair in ``aman_plugins``: the plugin then has its manifest's name, so its routes are under
    ``/api/v1/<name>`` and its ``ui/`` folder is served, as after ``aman plugin install``.
    """
    root = Path(root).resolve()
    manifest = tomllib.loads((root / "plugin.toml").read_text(encoding="utf-8"))
    name, module_name = str(manifest["name"]), str(manifest["module"])
    loaded = sys.modules.get(module_name)
    if loaded is not None and root in Path(getattr(loaded, "__file__", "/") or "/").parents:
        return name, loaded
    top = module_name.split(".")[0]
    for key in [k for k in sys.modules if k == top or k.startswith(f"{top}.")]:
        del sys.modules[key]  # the same module name from another folder (another version)
    importlib.invalidate_caches()
    sys.path.insert(0, str(root))
    try:
        return name, importlib.import_module(module_name)
    finally:
        sys.path.remove(str(root))


async def wait_for(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds. For
    effects that happen after a call returns (a subscriber got an event, a source ticked)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


class Recorder:
    """A subscriber plugin for tests: keeps the events it receives in ``seen``.

    :param event_types: the event types to subscribe to (every type when none).
    :param sources: the sources to subscribe to (every source when none).
    :param name: the plugin name (several recorders in one kernel need different names).

    ``gate`` (set) holds the handler while cleared, to fill a subscriber's queue; ``entered`` is
    set once the handler was called::

        recorder = Recorder("order.created")
        kernel = make_kernel(my_plugin, recorder)
        ...
        await wait_for(lambda: len(recorder.seen) == 1)
    """

    def __init__(
        self, *event_types: str, sources: tuple[str, ...] = (), name: str = "recorder"
    ) -> None:
        self.name = name
        self.event_types = event_types
        self.sources = sources
        self.seen: list[Event] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    @hookimpl
    def register_event_handlers(self) -> list[EventHandler]:
        return [
            EventHandler(
                name="record",
                handler=self.handle,
                event_types=self.event_types,
                sources=self.sources,
            )
        ]

    async def handle(self, event: Event) -> None:
        self.entered.set()
        await self.gate.wait()
        self.seen.append(event)

    def of_type(self, event_type: str) -> list[Event]:
        return [e for e in self.seen if e.event_type == event_type]

    def from_source(self, source: str) -> list[Event]:
        return [e for e in self.seen if e.source == source]


@pytest.fixture
def aman_plugins() -> list[object]:
    """The plugins under test (none by default)."""
    return []


@pytest.fixture
def aman_settings() -> dict[str, Any]:
    """Settings of the test kernel, by dotted key (``{"http.token": "secret"}``)."""
    return {}


@pytest.fixture
def make_kernel(tmp_path: Path) -> Callable[..., Any]:
    """Build kernels whose runtime directory lives under ``tmp_path``; the environment is
    ignored, so the host's ``AMAN_*`` variables never leak into a test."""
    app_module = importlib.import_module("kernel.app")

    def make(
        *plugins: object,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        config_path: Path | None = None,
        runtime_dir: Path | None = None,
        disabled: tuple[str, ...] = (),
    ) -> Any:
        config = importlib.import_module("kernel.config").Config(
            config_path,
            cli={"runtime.dir": str(runtime_dir or tmp_path / "runtime"), **(settings or {})},
            env=env or {},
            cwd=tmp_path,
        )
        return app_module.create_kernel(plugins, config=config, disabled=disabled)

    return make


@pytest.fixture
def kernel(
    make_kernel: Callable[..., Any], aman_plugins: list[object], aman_settings: dict[str, Any]
) -> Any:
    return make_kernel(*aman_plugins, settings=aman_settings)


async def serve(kernel: Any) -> AsyncIterator[Any]:
    """Serve ``kernel`` in-process until the runtime is ready; yield its test client."""
    app = importlib.import_module("kernel.app").create_app(kernel)
    async with app.test_app():
        if kernel.boot_task is not None:
            await kernel.boot_task
        yield app.test_client()


if pytest_asyncio is not None:

    @pytest_asyncio.fixture(name="client")
    async def _client(kernel: Any) -> AsyncIterator[Any]:
        async for test_client in serve(kernel):
            yield test_client

    @pytest_asyncio.fixture(name="openai_server")
    async def _openai_server() -> AsyncIterator[OpenAIServer]:
        async with OpenAIServer() as server:
            yield server
