"""The one live dispatcher: routes from ``register_routes`` → a werkzeug ``Map`` swapped whole.

Whenever the plugin set changes the kernel rebuilds the table and replaces it with one
assignment, so a request sees either the old table or the new one. The dispatcher is the only
code that touches the request. It applies the checks of http-api §1.4 in order (route, auth,
confirmation, debug gate, availability, body), calls the handler with the arguments it asks for,
turns its result into JSON, and writes the audit record of the request.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import quart
from attrs import frozen
from werkzeug.exceptions import MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, MapAdapter, Rule

from sdk import (
    AuditNote,
    Conflict,
    Forbidden,
    Invalid,
    Request,
    Response,
    Route,
    SdkError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)

from .auth import confirmed, operator_from, token_ok
from .convert import converter, structure_body, structure_query
from .errors import error_body
from .static import ui_route

if TYPE_CHECKING:
    from .app import Kernel
    from .plugins import Plugin

__all__ = ["Endpoint", "Router"]

log = logging.getLogger("aman.http")
#: A request body must start arriving within this many seconds and then keep a minimum rate: the
#: deadline moves one second later per ``BODY_MIN_RATE`` bytes received. A client that trickles
#: its body, or announces one and never sends it, is answered 408 instead of holding a
#: connection and a handler forever (decided here; Hypercorn's own read timeout would also cut
#: idle event streams and long requests, so the limit lives where the body is read).
BODY_GRACE_SEC = 10.0
BODY_MIN_RATE = 16 * 1024  # bytes per second
_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)\}")
_INJECTABLE = frozenset({"ctx", "body", "query", "request", "operator", "audit"})
_JSON = "application/json; charset=utf-8"


@frozen
class Endpoint:
    route: Route
    plugin: Plugin
    path: str  # the full path template, for metrics and /plugins
    public: bool
    wants: frozenset[str]


class _MatchRule(Rule):
    """A rule that is only ever matched, never used to build a URL: werkzeug's URL-builder
    compilation, most of a rule's compile time, is skipped, so swapping in a new route table
    (install, enable, disable) stays cheap."""

    def _compile_builder(self, append_unknown: bool = True) -> Callable[..., tuple[str, str]]:
        def build(*args: object, **kwargs: object) -> tuple[str, str]:
            raise NotImplementedError("routes are matched, not built")

        return build


class _Refused(Exception):
    """A check failed before the handler ran; carries the audit outcome it implies."""

    def __init__(self, error: SdkError, outcome: str, detail: str = "") -> None:
        super().__init__(error.message)
        self.error, self.outcome, self.detail = error, outcome, detail


def _rule(path: str) -> str:
    return _PARAM.sub(lambda m: f"<path:{m[2]}>" if m[1] else f"<{m[2]}>", path)


@functools.lru_cache(maxsize=4096)
def _wants(handler: Callable[..., object]) -> frozenset[str]:
    """The argument names a handler asks for (computed once per handler, not per rebuild)."""
    return frozenset(inspect.signature(handler).parameters)


def _endpoint(plugin: Plugin, route: Route, public_routes: Iterable[str]) -> Endpoint:
    full = route.path if plugin.builtin else f"/api/v1/{plugin.name}{route.path}"
    public = route.public if plugin.builtin else _listed(route, public_routes)
    return Endpoint(
        route=route, plugin=plugin, path=full, public=public, wants=_wants(route.handler)
    )


def _endpoints(plugin: Plugin, public_routes: Iterable[str]) -> list[tuple[Route, Endpoint]]:
    """The plugin's routes, and for a third-party plugin with a ``ui/`` folder its page files
    (public, http-api §22) unless it serves ``GET /ui/...`` itself."""
    out = [(route, _endpoint(plugin, route, public_routes)) for route in plugin.routes]
    if plugin.builtin or any(
        r.method.upper() == "GET" and r.path.startswith("/ui/{*") for r in plugin.routes
    ):
        return out
    page_files = ui_route(plugin)
    if page_files is not None:
        wants = frozenset(inspect.signature(page_files.handler).parameters)
        full = f"/api/v1/{plugin.name}{page_files.path}"
        out.append(
            (
                page_files,
                Endpoint(route=page_files, plugin=plugin, path=full, public=True, wants=wants),
            )
        )
    return out


def _new_table() -> MapAdapter:
    """An empty route table, bound once (matched per request)."""
    return Map(strict_slashes=True, merge_slashes=False, redirect_defaults=False).bind("localhost")


def _same(a: Endpoint, b: Endpoint) -> bool:
    """Whether two endpoints serve the same route of the same plugin the same way."""
    return a.route is b.route and a.plugin is b.plugin and a.public == b.public


def _listed(route: Route, public_routes: Iterable[str]) -> bool:
    for entry in public_routes:
        method, _, path = entry.strip().rpartition(" ")
        if path == route.path and (not method or method.upper() == route.method.upper()):
            return True
    return False


class Router:
    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._table: tuple[MapAdapter, dict[str, Endpoint]] = (_new_table(), {})
        #: Paths without parameters and their methods: ``/agent/shutdown`` is a 405 for GET even
        #: though ``GET /agent/{agent_id}`` would match it.
        self._static: dict[str, set[str]] = {}
        self._planned: dict[tuple[str, str], Endpoint] = {}  # what the table serves, by key

    def rebuild(
        self, plugins: Iterable[Plugin], public_routes: Callable[[Plugin], Iterable[str]]
    ) -> None:
        """Bring the table in line with the plugins' routes. A duplicate (method, path) between
        plugins is an error naming both, and changes nothing. When routes were only added (an
        install, an enable) they are added to the live table; otherwise a new table is built
        and swapped in. Either way it happens between two requests (no await)."""
        planned: dict[tuple[str, str], Endpoint] = {}
        for plugin in plugins:
            if not (plugin.loaded or plugin.builtin):
                continue
            for route, ep in _endpoints(plugin, public_routes(plugin)):
                key = (route.method.upper(), ep.path)
                if key in planned:
                    raise ValueError(
                        f"route {key[0]} {key[1]} is registered by both"
                        f" {planned[key].plugin.name} and {plugin.name}"
                    )
                planned[key] = ep
        current = self._planned
        if all(key in planned and _same(ep, planned[key]) for key, ep in current.items()):
            added = {key: ep for key, ep in planned.items() if key not in current}
            adapter, endpoints = self._table
        else:  # something went away or changed: a new table
            added, endpoints = planned, {}
            adapter = _new_table()
        static = self._static if endpoints else {}
        for (method, path), ep in added.items():
            name = str(len(endpoints))
            endpoints[name] = ep
            adapter.map.add(_MatchRule(_rule(path), endpoint=name, methods=[method]))
            if not _PARAM.search(path):
                static.setdefault(path, set()).update(
                    {method, "HEAD"} if method == "GET" else {method}
                )
        self._table, self._static, self._planned = (adapter, endpoints), static, planned

    def endpoints(self) -> list[Endpoint]:
        return list(self._table[1].values())

    # --- dispatch --------------------------------------------------------------------------

    async def dispatch(self, req: quart.Request) -> quart.Response:
        started = time.perf_counter()
        table, endpoints = self._table
        raw_path = req.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or req.path
        headers = _headers(req)
        ep: Endpoint | None = None
        audit: AuditNote | None = None
        outcome, detail = "ok", ""
        try:
            # Only an origin-form target is routed, matched as sent (http-api §1.1 "matched
            # exactly"): no empty segments, no absolute-form (``http://host/x``), no ``*``, no
            # path without its leading ``/`` (werkzeug would add one).
            if not raw_path.startswith("/") or "//" in raw_path:
                raise NotFound()
            static = self._static.get(raw_path)
            try:
                name, raw_params = table.match(raw_path, req.method)
            except MethodNotAllowed:
                if static is None:
                    raise
                raise MethodNotAllowed(valid_methods=sorted(static)) from None
            if raw_params and static is not None:  # a static path is never a parameter's value
                raise MethodNotAllowed(valid_methods=sorted(static))
            ep = endpoints[name]
            params = {k: unquote(v) for k, v in raw_params.items()}
            if ep.route.audit:
                audit = AuditNote(target=(ep.route.target or "").format(**params))
            response = await self._serve(req, headers, ep, params, audit)
        except _Refused as refused:
            outcome, detail = refused.outcome, refused.detail
            response, _ = self._error(refused.error)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
            outcome = "error"
            response, detail = self._error(exc)
        if response.status == 401:
            self._kernel.metrics.auth_failures.inc()  # the kernel's and the handlers' alike
        elif audit is not None:
            await self._audit(headers, ep, audit, outcome, detail)
        if req.method == "HEAD" and not isinstance(response.body, bytes | str):
            await _close(response.body)  # a stream that is never sent releases what it holds
        return self._finish(req, ep, response, started)

    async def _serve(
        self,
        req: quart.Request,
        headers: dict[str, str],
        ep: Endpoint,
        params: dict[str, str],
        audit: AuditNote | None,
    ) -> Response:
        kernel, route = self._kernel, ep.route
        if not ep.public and not token_ok(headers, kernel.config.get("http.token")):
            raise Unauthorized("missing or invalid API token")
        if route.confirm and not confirmed(headers):
            raise _Refused(Conflict("confirmation required"), "confirm_required")
        if route.debug_gate and not kernel.config.get("debug.force_enable_debug_endpoints"):
            raise _Refused(
                Forbidden(
                    "debug endpoints are disabled (set debug.force_enable_debug_endpoints = true)"
                ),
                "forbidden",
                "force_enable_debug_endpoints=false",
            )
        if route.availability == "ready":
            kernel.lifecycle.require_ready()
        if (
            ep.plugin.builtin
            and ep.plugin.state != "running"
            and kernel.lifecycle.status == "ready"
        ):
            raise Unavailable(f"plugin {ep.plugin.name} is disabled", retry_after=None)
        if not ep.plugin.builtin and ep.plugin.state != "running":
            # mounted when loaded (so that route clashes are found before it starts), served
            # once started: not while an install or an enable still runs its on_startup
            raise NotFound()
        args: dict[str, Any] = {k: v for k, v in params.items() if k in ep.wants}
        operator = operator_from(headers)
        if "ctx" in ep.wants:
            args["ctx"] = ep.plugin.ctx
        if "operator" in ep.wants:
            args["operator"] = operator
        if "audit" in ep.wants:
            args["audit"] = audit if audit is not None else AuditNote(target="")
        if "query" in ep.wants and route.query is not None:
            args["query"] = structure_query(req.args, route.query)
        if route.body is not None or "request" in ep.wants:
            limit = (
                route.max_body_bytes() if callable(route.max_body_bytes) else route.max_body_bytes
            )
            limit = limit or kernel.config.get("http.max_body_bytes")
            raw = await _read_body(req, limit)
            parsed = _parse_json(
                raw, headers.get("content-type", ""), strict=route.body is not None
            )
            if route.body is not None:
                args["body"] = structure_body(parsed, route.body)
            if "request" in ep.wants:
                args["request"] = Request(
                    method=req.method,
                    path=req.path[len(ep.path) - len(route.path) :]
                    if not ep.plugin.builtin
                    else req.path,
                    params=params,
                    query=dict(req.args),
                    headers=headers,
                    body=raw,
                    json=parsed,
                    operator=operator,
                )
        return await self._call(ep, args)

    async def _call(self, ep: Endpoint, args: dict[str, Any]) -> Response:
        handler, plugin = ep.route.handler, ep.plugin
        timeout = None if plugin.builtin else self._kernel.config.get("plugins.route_timeout_sec")
        try:
            async with asyncio.timeout(timeout):
                if inspect.iscoroutinefunction(handler):
                    result = await handler(**args)
                else:
                    threads = self._kernel.plugins.hooks.threads  # the plugin's own workers
                    result = await threads.run(plugin.name, handler, **args)
                    if inspect.isawaitable(result):
                        result = await result
        except SdkError:
            raise
        except TimeoutError:
            raise _PluginFailure(
                f"plugin {plugin.name} did not answer within {timeout} s"
            ) from None
        except Exception as exc:
            if plugin.builtin:
                raise
            log.error("plugin %s route %s failed", plugin.name, ep.path, exc_info=exc)
            raise _PluginFailure(f"plugin {plugin.name} failed: {type(exc).__name__}") from None
        if isinstance(result, Response):
            return result
        body = json.dumps(converter.unstructure(result), ensure_ascii=False, separators=(",", ":"))
        return Response(status=200, body=body.encode(), content_type=_JSON)

    @staticmethod
    def _error(exc: BaseException) -> tuple[Response, str]:
        """The JSON error response for ``exc`` and the detail its audit record gets."""
        if isinstance(exc, _PluginFailure):
            status, body = 500, {"error": str(exc)}
            headers: dict[str, str] = {}
        elif isinstance(exc, _BodyTimeout):
            status, body, headers = 408, {"error": str(exc)}, {"Connection": "close"}
        else:
            if isinstance(exc, RequestEntityTooLarge):
                exc = TooLarge("request body too large")
            status, body, headers = error_body(exc)
        detail = body["error"] if status != 500 else f"internal error: {type(exc).__name__}"
        response = Response(
            status=status, body=json.dumps(body).encode(), content_type=_JSON, headers=headers
        )
        return response, detail

    async def _audit(
        self,
        headers: dict[str, str],
        ep: Endpoint | None,
        note: AuditNote,
        outcome: str,
        detail: str,
    ) -> None:
        assert ep is not None and ep.route.audit is not None
        try:
            await self._kernel.audit.record(
                operator=operator_from(headers),
                action=ep.route.audit,
                target=note.target,
                outcome=note.outcome or outcome,
                # a handler that named the outcome (``blocked``) also chose the detail
                detail=note.detail if outcome == "ok" or note.outcome else detail,
            )
        except Unavailable as exc:  # storage full: the answer stands, its record is lost
            log.error("audit record of %s %s lost: %s", ep.route.method, ep.path, exc)

    def _finish(
        self, req: quart.Request, ep: Endpoint | None, response: Response, started: float
    ) -> quart.Response:
        body = response.body.encode() if isinstance(response.body, str) else response.body
        head = req.method == "HEAD"
        out = quart.Response(
            b"" if head else body, status=response.status, content_type=response.content_type
        )
        if not isinstance(body, bytes):
            out.timeout = None  # a stream stays open as long as it yields (design §3)
        elif head:
            out.content_length = len(body)  # the headers GET would send (http-api §1.1)
        for key, value in response.headers.items():
            out.headers[key] = value
        out.headers.setdefault("Cache-Control", "no-store")
        label = ep.path if ep is not None else "<unmatched>"
        self._kernel.metrics.http_requests.labels(
            method=req.method, route=label, status=str(response.status)
        ).inc()
        log.debug(
            "%s %s %d %.1f ms",
            req.method,
            req.path,
            response.status,
            (time.perf_counter() - started) * 1000,
        )
        return out


async def _close(body: AsyncIterable[bytes | str]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


class _PluginFailure(Exception):
    """A plugin route raised something that is not an SDK error, or timed out (http-api §24)."""


class _BodyTimeout(Exception):
    """The request body did not arrive in time (408, see ``BODY_GRACE_SEC``)."""


def _headers(req: quart.Request) -> dict[str, str]:
    """The request's headers by lower-case name, values decoded as UTF-8 (http-api §1.2 compares
    the token on UTF-8 bytes; invalid bytes become U+FFFD). A field sent more than once is
    combined into one value joined by ``", "`` (RFC 9110 §5.3), so a second ``Authorization`` or
    ``x-aman-token`` can never replace the first: the combination is no valid token (D5)."""
    out: dict[str, str] = {}
    for name, value in req.headers.items():
        key = name.lower()
        text = value if value.isascii() else value.encode("latin-1").decode("utf-8", "replace")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


async def _read_body(req: quart.Request, limit: int) -> bytes:
    """Read the body, stopping at ``limit`` bytes, for Content-Length and chunked uploads alike,
    within the deadline of ``BODY_GRACE_SEC`` and ``BODY_MIN_RATE``."""
    too_large = TooLarge(f"request body too large (limit {limit} bytes)")
    if req.content_length is not None and req.content_length > limit:
        raise too_large
    data = bytearray()
    grace_end = asyncio.get_running_loop().time() + BODY_GRACE_SEC
    try:
        async with asyncio.timeout_at(grace_end) as deadline:
            async for chunk in req.body:
                data += chunk
                if len(data) > limit:
                    raise too_large
                deadline.reschedule(grace_end + len(data) / BODY_MIN_RATE)
    except RequestEntityTooLarge:
        raise too_large from None
    except TimeoutError:
        raise _BodyTimeout("request body not received in time") from None
    return bytes(data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; one too large for a float (``1e999``) is refused, since it
    would come back out as ``Infinity``, which is not JSON."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


#: The deepest nesting of arrays and objects a JSON body may have (decided here): deeper values
#: cannot be stored and answered safely (every layer is a recursion on the way).
MAX_JSON_DEPTH = 64


def _parse_json(raw: bytes, content_type: str, *, strict: bool) -> Any:
    """http-api §1.5: an empty body is ``{}``; a non-empty one must be JSON when ``strict``."""
    if not raw:
        return {}
    is_json = content_type.split(";", 1)[0].strip().lower() == "application/json"
    if not is_json:
        if strict:
            raise UnsupportedMediaType("unsupported content type; expected application/json")
        return None
    try:
        value = json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite
        )
    except RecursionError:
        raise Invalid(f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"invalid JSON body: {exc}") from None
    suspect = raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH or _SURROGATE_ESCAPE.search(raw)
    if suspect and (problem := _problem(value)):
        raise Invalid(f"invalid JSON body: {problem}")
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _problem(value: Any) -> str | None:
    """What makes a parsed JSON value unfit to store and answer: nesting deeper than
    :data:`MAX_JSON_DEPTH`, or a string (a key too) holding a surrogate that did not pair up
    (``"\\ud800"`` parses, but is no character). Iterative, as the value may be deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return "a string holds a lone surrogate (\\ud800-\\udfff)"
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None
