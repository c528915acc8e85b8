"""The public models of the SDK: what plugins return from hooks and receive from the kernel.

Every model is an attrs class with keyword-only fields, so fields can be added without breaking
plugins. Value objects are frozen; the few mutable ones (``AuditNote``, ``Stash``) say so.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any, Generic, Literal, TypeVar, cast

from attrs import define, field, frozen

__all__ = [
    "INT_MAX",
    "AuditNote",
    "ConfigKey",
    "ConfigRule",
    "Contribution",
    "Delivery",
    "Event",
    "EventHandler",
    "EventMetadata",
    "Health",
    "Migration",
    "Priority",
    "ProviderConfig",
    "ProviderType",
    "PublishResult",
    "Request",
    "Response",
    "Route",
    "Stash",
    "StashKey",
    "TrustLevel",
    "UiPage",
    "in_range",
]

T = TypeVar("T")

Priority = Literal["high", "normal", "low"]
Delivery = Literal["at_most_once", "at_least_once", "exactly_once"]
TrustLevel = Literal["trusted", "untrusted", "sandboxed"]
Availability = Literal["ready", "always"]


#: The largest ``int`` of the API (http-api §0: a JSON integer that fits in a signed 64-bit value,
#: as SQLite's do). The kernel refuses a larger one, unless the field's ``clamp`` lowers it.
INT_MAX = 2**63 - 1


class OutOfRange(ValueError):
    """Raised by :func:`in_range`; the kernel turns it into ``field 'x' must be between a and b``."""

    def __init__(self, name: str, low: int | float, high: int | float) -> None:
        super().__init__(f"field '{name}' must be between {low} and {high}")
        self.name, self.low, self.high = name, low, high


def in_range(low: int | float, high: int | float) -> Callable[[Any, Any, Any], None]:
    """An attrs validator for numbers (``None`` passes, so optional fields can use it)."""

    def check(_inst: Any, attribute: Any, value: Any) -> None:
        if value is not None and not low <= value <= high:
            raise OutOfRange(attribute.name, low, high)

    return check


# --- HTTP ---------------------------------------------------------------------------------


@frozen(kw_only=True)
class Route:
    """One HTTP route a plugin contributes through ``register_routes``.

    The handler is called with arguments chosen by name from its signature: ``ctx`` (the plugin
    context), ``body`` (the JSON body structured into ``body``'s class), ``query`` (the query string
    structured into ``query``'s class), ``request`` (a :class:`Request`), ``operator`` (the
    ``x-aman-operator`` name), ``audit`` (an :class:`AuditNote` to fill in), and every ``{param}``
    of the path. It returns a JSON-able value or attrs instance (sent as 200 JSON) or a
    :class:`Response`.

    :param method: ``GET``, ``POST``, ``PUT``, ``PATCH`` or ``DELETE`` (``HEAD`` follows ``GET``).
    :param path: ``/things/{id}``; a final ``{*rest}`` takes the remainder of the path.
    :param public: served without the API token (built-in plugins only; installed plugins declare
        ``public_routes`` in their manifest).
    :param confirm: needs ``x-aman-confirm: yes`` (checked before the body and the resource).
    :param availability: ``ready`` (503 unless the runtime is ready) or ``always``.
    :param audit: the audit action (``plugin.enable``); every call then writes one audit record.
    :param target: the audit target, a template over the path parameters (``plugin:{name}``).
    :param debug_gate: refused with 403 unless ``debug.force_enable_debug_endpoints`` is true.
    :param max_body_bytes: the body limit, instead of ``http.max_body_bytes``; a callable is
        asked on every request (a limit that follows a live configuration key).
    """

    method: str
    path: str
    handler: Callable[..., Awaitable[Any] | Any]
    name: str = ""
    body: type | None = None
    query: type | None = None
    public: bool = False
    confirm: bool = False
    availability: Availability = "ready"
    audit: str | None = None
    target: str | None = None
    debug_gate: bool = False
    max_body_bytes: int | Callable[[], int] | None = None


@frozen(kw_only=True)
class Request:
    """What a handler that asks for ``request`` receives: the raw request, already authenticated."""

    method: str
    path: str
    params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    json: Any
    operator: str


@frozen(kw_only=True)
class Response:
    """An explicit response, for handlers that do not answer with JSON (pages, metrics, files).

    ``body`` is the whole body (bytes, or str sent as UTF-8), or an async iterable of bytes or str
    chunks that the kernel streams as they come, with no response time limit (Server-Sent Events,
    ``/events/stream``). The kernel closes a streamed body when the stream ends, when the client
    goes away, or without iterating it when the body is not sent (``HEAD``): an iterable that holds
    resources releases them in its ``aclose()``.
    """

    status: int = 200
    body: bytes | str | AsyncIterable[bytes | str] = b""
    content_type: str = "application/octet-stream"
    headers: Mapping[str, str] = field(factory=dict)


@define(kw_only=True)
class AuditNote:
    """The audit record of the current request, for a handler to complete (mutable).

    The kernel writes the record when the request ends, with the outcome it observed. A handler
    sets ``detail`` (never secrets or raw chat text), may set ``target`` when it only learns it
    while working (``plugin:<name>`` from an uploaded manifest), and may set ``outcome`` where the
    API names a special one (``not_found``, ``aborted``).
    """

    target: str
    detail: str = ""
    outcome: str | None = None


@frozen(kw_only=True)
class UiPage:
    """A page a plugin contributes to ``GET /ui/pages`` through ``register_ui_pages``.

    :param id: ``^[a-z0-9][a-z0-9-]{0,63}$``, unique within the plugin.
    :param label: at most 64 characters; empty means the id with its first letter upper-cased.
    :param path: the page's entry file, relative to the plugin's root and inside its ``ui/``
        folder (``ui/index.html``); it is served at ``/api/v1/<plugin>/<path>``.
    """

    id: str
    label: str = ""
    path: str = "ui/index.html"


# --- Events -------------------------------------------------------------------------------


@frozen(kw_only=True)
class EventMetadata:
    """Routing and lifetime facts of an event (http-api §1.9)."""

    trace_id: str
    parent_event_id: str | None = None
    agent_id: str | None = None
    retry_count: int = 0
    max_retries: int = 0
    ttl_ms: int | None = None
    lifespan_ms: int | None = None
    created_at: int = 0


@frozen(kw_only=True)
class Event:
    """An event on the bus; its JSON form is the Event JSON of http-api §1.9."""

    id: str
    source: str
    event_type: str
    timestamp: int
    priority: Priority = "normal"
    delivery: Delivery = "at_most_once"
    dedup_key: str | None = None
    trust_level: TrustLevel = "trusted"
    payload: Any = None
    metadata: EventMetadata


@frozen(kw_only=True)
class PublishResult:
    """What a publish answers: the event id (the original's for a duplicate) and its status."""

    id: str
    trace_id: str
    status: Literal["queued", "duplicate", "dropped"]


@frozen(kw_only=True)
class EventHandler:
    """A bus subscription a plugin contributes through ``register_event_handlers``.

    Empty filter tuples match everything; ``payload`` matches events whose payload is an object
    containing every given key with an equal value.
    """

    name: str
    handler: Callable[[Event], Awaitable[None] | None]
    event_types: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    priorities: tuple[Priority, ...] = ()
    payload: Mapping[str, Any] | None = None


# --- Configuration, storage, health ---------------------------------------------------------


@frozen(kw_only=True)
class ConfigKey:
    """A configuration key a plugin owns (``register_config``).

    :param name: dotted name, ``event_bus.max_queue_size``; a ``*`` segment matches any one name
        (``agents.*.provider``).
    :param type: ``bool``, ``int``, ``float``, ``str``, ``list[int]``, ``list[str]`` or ``dict``
        (a free-form table).
    :param restart: a change is saved but takes effect at the next start.
    :param minimum, maximum: inclusive range for numbers (for lists: of each element).
    :param length: inclusive range for the number of elements of a list.
    :param choices: the allowed values of a string key.
    :param env: an environment variable that overrides the file.
    """

    name: str
    type: Any
    default: Any
    restart: bool = False
    minimum: int | float | None = None
    maximum: int | float | None = None
    length: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()
    env: str | None = None
    doc: str = ""


@frozen(kw_only=True)
class ConfigRule:
    """A rule over several configuration keys (formats §1.3), returned by ``register_config``
    beside the plugin's keys.

    :param check: given a view of the candidate configuration (``view.get(key)``,
        ``view.table(prefix)``), the reason it is invalid, or None.
    :param startup: also checked at start-up (a broken rule exits with code 2); otherwise only by
        ``/config/set`` (for rules that need the plugins running).
    """

    check: Callable[[Any], str | None]
    startup: bool = True


@frozen(kw_only=True)
class Contribution:
    """One item a running plugin returned from a ``register_*`` hook (``ctx.plugins.contributions``)."""

    plugin: str
    item: Any


@frozen(kw_only=True)
class ProviderConfig:
    """The settings of one configured LLM provider (``[llm.providers.<name>]``, formats §1.4)."""

    name: str
    type: str
    model: str
    base_url: str = ""
    api_key: str = ""
    temperature: float = 0.7
    timeout_sec: int = 60
    stream_timeout_sec: int = 600
    max_retries: int = 5
    headers: Mapping[str, str] = field(factory=dict)


@frozen(kw_only=True)
class ProviderType:
    """An LLM provider implementation a plugin contributes through ``register_llm_providers``.

    :param type: the name used in ``llm.providers.<name>.type`` (``echo``, ``openai``).
    :param factory: builds a provider from its settings; the provider has at least
        ``async probe()``, which raises when the backend cannot serve requests.
    :param default_model: the model when the provider's table names none.
    """

    type: str
    factory: Callable[[ProviderConfig], Any]
    default_model: str = ""


@frozen(kw_only=True)
class Migration:
    """One versioned schema step of a plugin's tables, applied once, in version order."""

    version: int
    sql: str


@frozen(kw_only=True)
class Health:
    """A plugin's answer to ``health_check``."""

    status: Literal["healthy", "degraded", "error"] = "healthy"
    detail: str = ""


# --- The stash ------------------------------------------------------------------------------


class StashKey(Generic[T]):
    """A typed key for the kernel's :class:`Stash` (pytest's stash): ``KEY = StashKey[Thing]()``."""

    __slots__ = ()


class Stash:
    """Per-kernel storage for plugin state, typed by its keys (mutable)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[StashKey[Any], Any] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._items[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._items[key])

    def get(self, key: StashKey[T], default: T | None = None) -> T | None:
        return cast("T | None", self._items.get(key, default))

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __delitem__(self, key: StashKey[Any]) -> None:
        del self._items[key]
