"""Event sources: what produces events (http-api §6).

A plugin contributes sources with ``register_sources`` (or adds them while it runs with
``ctx.sources.add``). The kernel keeps the registry: it starts sources at phase 4, stops them
before the bus drains at shutdown, pauses them under backpressure (level L3 and above) and for
operators, and publishes what they emit with their id as the event source.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from attrs import frozen

from .errors import NotFound
from .models import ConfigRule, PublishResult, TrustLevel

if TYPE_CHECKING:
    from .context import PluginContext

__all__ = [
    "Emit",
    "EventSource",
    "ImChannel",
    "SourceInfo",
    "Sources",
    "source_id_taken",
    "source_ids_free",
]

Mode = Literal["pull", "push"]
State = Literal["registered", "running", "paused", "shutdown"]


class Emit(Protocol):
    """Publishes one event of a source: ``await emit("timer_tick", {...})``. The source id is the
    event source and the source's trust level is the event's. Keyword options are those of
    ``Bus.publish`` (priority, delivery, ttl_ms, dedup_key, agent_id, trace_id). Raises
    :class:`~sdk.Unavailable` while the source is paused or over its rate limit."""

    def __call__(
        self, event_type: str, payload: Any = None, **options: Any
    ) -> Awaitable[PublishResult]: ...


@runtime_checkable
class EventSource(Protocol):
    """A source a plugin implements.

    :ivar id: unique among all sources (``timer:heartbeat``, a cron job id, ``chat:slack:team``).
    :ivar kind: ``timer``, ``watch``, ``cron``, ``webhook``, ``plugin`` or ``im``.
    :ivar mode: ``pull`` (it polls on its own schedule) or ``push`` (something delivers to it).
    :ivar trust_level: the trust of the events it emits.
    """

    id: str
    kind: str
    mode: Mode
    trust_level: TrustLevel

    def settings(self) -> Mapping[str, Any]:
        """Its current configuration, as shown in the Source object's ``config``."""
        ...

    async def start(self, emit: Emit) -> None:
        """Begin producing; keep ``emit`` to publish. Called at phase 4, or at once when the
        source is added to a ready runtime, and on resume of a never-started source."""
        ...

    async def stop(self) -> None:
        """Stop producing and release resources (removal, plugin stop, runtime shutdown)."""
        ...

    async def pause(self) -> None:
        """Stop polling or listening for a while (operator or backpressure); keep state."""
        ...

    async def resume(self) -> None:
        """Produce again after :meth:`pause`."""
        ...

    async def reconfigure(self, changes: Mapping[str, Any]) -> None:
        """Validate and apply a partial configuration (given keys replace, others are kept).
        Raise :class:`~sdk.Invalid` for an unknown key or a bad value; then nothing changes."""
        ...


@frozen(kw_only=True)
class ImChannel:
    """An IM platform a plugin contributes with ``register_im_channels``.

    :param platform: ``telegram``, ``slack``, ...
    :param factory: ``factory(instance)`` builds the source ``chat:<platform>:<instance>`` from
        the plugin's configuration; it raises :class:`~sdk.NotFound` when the instance has no
        credentials and :class:`~sdk.Invalid` when they are unusable.
    """

    platform: str
    factory: Callable[[str], EventSource]


@frozen(kw_only=True)
class SourceInfo:
    """The Source object of http-api §6."""

    id: str
    kind: str
    plugin: str | None
    mode: Mode
    trust_level: TrustLevel
    state: State
    paused_by: list[str]
    config: Mapping[str, Any]
    events_emitted: int
    last_event_at_ms: int | None


class Sources(Protocol):
    """The kernel's source registry, as ``ctx.sources``. Sources a plugin adds belong to it and
    are removed when it stops."""

    async def add(self, source: EventSource) -> SourceInfo: ...

    async def remove(self, source_id: str, *, forget: bool = False) -> None:
        """Stop and unregister the source. Its operator pause is kept for when a source with this
        id comes back (a plugin enabled again), unless ``forget`` (the source is gone for good)."""
        ...

    def get(self, source_id: str) -> SourceInfo: ...

    def list(self) -> list[SourceInfo]: ...

    async def pause(self, source_id: str) -> SourceInfo: ...

    async def resume(self, source_id: str) -> SourceInfo: ...

    async def configure(self, source_id: str, changes: Mapping[str, Any]) -> SourceInfo: ...

    async def replace(self, source: EventSource, *, owner: str) -> SourceInfo:
        """Shut down the source with the same id (errors ignored) and add this one for ``owner``
        (an IM channel reload)."""
        ...


def source_id_taken(ctx: PluginContext, source_id: str) -> bool:
    """Whether another owner than ``ctx``'s plugin has a source with this id (a cron job, another
    plugin), logged as an error: for a plugin about to create the sources of its configuration,
    which then leaves that one out."""
    other = _foreign_source(ctx.sources, ctx.name, source_id)
    if other is not None:
        ctx.log.error("source %s not created: a %s source has that id", source_id, other.kind)
    return other is not None


def _foreign_source(sources: Sources, owner: str, source_id: str) -> SourceInfo | None:
    """The source with this id when another owner than the plugin ``owner`` has it (a cron
    job, another plugin's source), else None."""
    try:
        info = sources.get(source_id)
    except NotFound:
        return None
    return None if info.plugin == owner else info


def source_ids_free(sources: Sources, owner: str, kinds: Sequence[str]) -> ConfigRule:
    """A ``/config/set`` rule for a plugin whose sources come from ``[sources.<kind>.<name>]``
    tables: the id ``<kind>:<name>`` of each must not be another owner's source (a cron job,
    another plugin's), which would leave the table without its source."""

    def check(view: Any) -> str | None:
        for kind in kinds:
            for name in sorted(view.table(f"sources.{kind}")):
                source_id = f"{kind}:{name}"
                if (other := _foreign_source(sources, owner, source_id)) is not None:
                    return f"source {source_id} already exists (a {other.kind} source)"
        return None

    return ConfigRule(check=check, startup=False)
