"""What timer and watch sources share: their settings, the running/paused state, and
``reconfigure``, which writes the change back to ``aman.toml`` before applying it (http-api §6)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from .fields import merge

if TYPE_CHECKING:
    from sdk import Emit, PluginContext, TrustLevel

__all__ = ["ConfiguredSource"]


class ConfiguredSource:
    """A source defined by a ``[sources.<kind>.<name>]`` table. Subclasses set ``kind``, ``mode``
    and ``trust_level`` and implement :meth:`_begin` and :meth:`_end` (start and stop producing)."""

    kind = ""
    mode: Literal["pull", "push"]
    trust_level: TrustLevel

    def __init__(self, ctx: PluginContext, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self.id = f"{self.kind}:{name}"
        self._ctx = ctx
        self._settings = copy.deepcopy(dict(settings))
        self._emit: Emit | None = None
        self._paused = False

    @property
    def running(self) -> bool:
        """Started and not paused: it should be producing."""
        return self._emit is not None and not self._paused

    def settings(self) -> Mapping[str, Any]:
        return copy.deepcopy(self._settings)

    async def start(self, emit: Emit) -> None:
        self._emit, self._paused = emit, False
        await self._begin()

    async def stop(self) -> None:
        await self._end()
        self._emit = None

    async def pause(self) -> None:
        self._paused = True
        await self._end()

    async def resume(self) -> None:
        was_paused, self._paused = self._paused, False
        if was_paused and self._emit is not None:
            await self._begin()

    async def reconfigure(self, changes: Mapping[str, Any]) -> None:
        """Check ``changes``, write them to ``sources.<kind>.<name>.<key>`` atomically, apply them.

        The new settings are in place before the write, so that the ``on_config_changed`` the
        write triggers finds nothing to do; a failed write puts the old ones back."""
        new = merge(self.id, self.kind, self._settings, changes)
        if not changes:
            return
        old, self._settings = self._settings, new
        try:
            await self._ctx.settings.set(
                {f"sources.{self.kind}.{self.name}.{key}": value for key, value in changes.items()},
                operator=f"source:{self.id}",
            )
        except BaseException:
            self._settings = old
            raise
        await self._restart()

    async def apply(self, settings: Mapping[str, Any]) -> None:
        """Take new settings from the configuration file (a live ``/config/set``)."""
        self._settings = copy.deepcopy(dict(settings))
        await self._restart()

    async def _restart(self) -> None:
        if self.running:
            await self._end()
            await self._begin()

    async def _begin(self) -> None:
        raise NotImplementedError

    async def _end(self) -> None:
        raise NotImplementedError
