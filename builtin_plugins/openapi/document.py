"""The OpenAPI 3.1 document of the live route table (``GET /openapi.json``).

It is built from ``ctx.plugins.routes()`` at every request, so it describes exactly what is
served: the built-ins' routes and those of the third-party plugins loaded right now, under
``/api/v1/<plugin>`` (http-api §24). Each operation says what the route declares and what the
kernel checks in the order of http-api §1.4: authentication (§1.2), the confirmation header
(§1.3), the debug gate, availability (§1.7), the body and the query string (§1.5), the error body
of §1.6. Results are described only where the handler's return annotation says what they are.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_args

import attrs
from attrs import frozen

from sdk import PluginInfo, Response, ServedRoute

from .schemas import Dump, parameter_schema, schema_of, type_hints

__all__ = ["OPENAPI", "document", "template"]

OPENAPI = "3.1.0"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)\}")
_SECURITY = [{"bearerAuth": []}, {"amanToken": []}]
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_CACHE_REF = {"$ref": "#/components/headers/Cache-Control"}

#: The answers http-api §1.1 names as not JSON, by method and served path.
MEDIA: dict[tuple[str, str], str] = {
    ("GET", "/metrics"): "text/plain; version=0.0.4; charset=utf-8",
    ("GET", "/events/stream"): "text/event-stream",
}
#: The upload of ``POST /plugin/install`` (http-api §1.1, §7): an archive, raw or in a form.
_ARCHIVE = {"type": "string", "contentMediaType": "application/gzip"}
UPLOADS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/plugin/install"): {
        "application/gzip": {"schema": _ARCHIVE},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "plugin": _ARCHIVE,
                    "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                },
                "required": ["plugin"],
            }
        },
    }
}

_DESCRIPTION = """\
The HTTP API of this aman runtime, generated from the routes it serves right now (built-in and \
installed plugins alike).

- Protected operations need the API token, as `Authorization: Bearer <token>` or \
`x-aman-token: <token>`; while no token is configured every request passes (http-api §1.2).
- `HEAD` is answered wherever `GET` is; another method on a known path is `405` with `Allow`.
- `x-aman-operator` names the operator in audit records and events (http-api §1.3).
- Every error is JSON `{"error": "<message>"}` (http-api §1.6); every response carries \
`Cache-Control`.
"""


@frozen(kw_only=True)
class _Facts:
    """What decides the kernel's own error responses for one route."""

    token: bool  # the token is checked: a protected route, or a public one reading the request
    params: bool
    confirm: bool
    debug_gate: bool
    query: bool
    reads_body: bool
    typed_body: bool  # a body of a declared media type: JSON into a class, or an upload
    unavailable: bool


#: The kernel's error responses: (status, when, description), in the order of http-api §1.4.
_ERRORS: tuple[tuple[str, Callable[[_Facts], bool], str], ...] = (
    ("400", lambda f: f.query or f.reads_body, "invalid body or query parameters (http-api §1.5)"),
    ("401", lambda f: f.token, "missing or invalid API token"),
    (
        "403",
        lambda f: f.debug_gate,
        "debug endpoints are disabled (set debug.force_enable_debug_endpoints = true)",
    ),
    ("404", lambda f: f.params, "not found: the path names no resource"),
    ("409", lambda f: f.confirm, "confirmation required"),
    ("413", lambda f: f.reads_body, "request body too large (limit <N> bytes)"),
    ("415", lambda f: f.typed_body, "unsupported content type (http-api §1.5)"),
    ("500", lambda f: True, "internal error (ref <uuid>), or a plugin route failed (http-api §24)"),
    (
        "503",
        lambda f: f.unavailable,
        "runtime not ready (phase <n>), runtime is draining or stopped, or the plugin is disabled",
    ),
)
#: What any handler may answer by raising an SDK error (http-api §24: invalid, forbidden, not
#: found, conflict, unrecoverable, unavailable); the endpoint's section says when.
_HANDLER_ERRORS = ("400", "403", "404", "409", "422", "503")
_HANDLER_REFUSAL = "refused by the handler (see the endpoint's errors, http-api §1.6)"
_ERROR_HEADERS: dict[str, dict[str, Any]] = {
    "401": {
        "WWW-Authenticate": {
            "required": True,
            "schema": {"type": "string", "const": 'Bearer realm="aman"'},
        }
    },
    "503": {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}


def template(path: str) -> str:
    """The OpenAPI path template of a served path: ``{*rest}`` becomes ``{rest}``."""
    return _PARAM.sub(lambda m: "{" + m[2] + "}", path)


def document(
    routes: Iterable[ServedRoute], plugins: Iterable[PluginInfo], *, version: str, dump: Dump
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``; ``plugins`` give the tags and which routes belong
    to built-ins (``dump`` is the converter's ``unstructure``, for defaults)."""
    info = {p.name: p for p in plugins}
    paths: dict[str, dict[str, Any]] = {}
    ids: set[str] = set()
    for served in routes:
        operation = _operation(served, info.get(served.plugin), dump)
        operation["operationId"] = _unique(_slug(served.method, served.path), ids)
        paths.setdefault(template(served.path), {})[served.method.lower()] = operation
    used = {op["tags"][0] for item in paths.values() for op in item.values()}
    return {
        "openapi": OPENAPI,
        "info": {"title": "aman", "version": version, "description": _DESCRIPTION},
        "tags": [
            {"name": n, "description": info[n].description} for n in sorted(used & info.keys())
        ],
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            },
            "headers": {"Cache-Control": {"required": True, "schema": {"type": "string"}}},
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "amanToken": {"type": "apiKey", "in": "header", "name": "x-aman-token"},
            },
        },
    }


def _slug(method: str, path: str) -> str:
    return f"{method.lower()}_" + (re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root")


def _unique(candidate: str, taken: set[str]) -> str:
    name, n = candidate, 1
    while name in taken:
        n += 1
        name = f"{candidate}_{n}"
    taken.add(name)
    return name


def _operation(served: ServedRoute, plugin: PluginInfo | None, dump: Dump) -> dict[str, Any]:
    route, handler = served.route, served.route.handler
    wants = _arguments(handler)
    builtin = plugin is not None and plugin.builtin
    doc = inspect.getdoc(handler) or ""
    operation: dict[str, Any] = {
        "tags": [served.plugin],
        "summary": doc.split("\n", 1)[0] or route.name or getattr(handler, "__name__", ""),
        "security": [] if served.public else _SECURITY,
        "parameters": _parameters(served, dump),
        "x-aman-availability": route.availability,
    }
    if route.audit:
        operation["x-aman-audit"] = route.audit
    body = _request_body(served, wants, dump)
    if body is not None:
        operation["requestBody"] = body
    facts = _Facts(
        token=not served.public or "request" in wants,
        params=bool(_PARAM.search(served.path)),
        confirm=route.confirm,
        debug_gate=route.debug_gate,
        query=route.query is not None,
        reads_body=route.body is not None or "request" in wants,
        typed_body=route.body is not None or (served.method, served.path) in UPLOADS,
        unavailable=route.availability == "ready"
        or (plugin is not None and plugin.builtin and not plugin.essential),
    )
    operation["responses"] = _responses(served, facts, builtin, dump)
    return operation


@functools.lru_cache(maxsize=4096)
def _arguments(handler: Callable[..., Any]) -> frozenset[str]:
    """The argument names the kernel gives the handler (``request`` means it reads the body)."""
    try:
        return frozenset(inspect.signature(handler).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _parameters(served: ServedRoute, dump: Dump) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for match in _PARAM.finditer(served.path):
        param: dict[str, Any] = {"name": match[2], "in": "path", "required": True}
        if match[1]:
            param["description"] = "the rest of the path; may contain '/'"
        out.append({**param, "schema": {"type": "string", "minLength": 1}})
    if served.route.confirm:
        out.append(
            {
                "name": "x-aman-confirm",
                "in": "header",
                "required": True,
                "description": "`yes`, trimmed, any case (http-api §1.3)",
                "schema": {"type": "string", "enum": ["yes"]},
            }
        )
    query = served.route.query
    if query is not None:
        hints = type_hints(query)
        for field in attrs.fields(query):
            schema = parameter_schema(field, hints.get(field.name, str), dump)
            param = {"name": field.name, "in": "query", "required": field.default is attrs.NOTHING}
            if "description" in schema:  # the clamp range, said where readers look
                param["description"] = schema.pop("description")
            out.append({**param, "schema": schema})
    return out


def _request_body(served: ServedRoute, wants: frozenset[str], dump: Dump) -> dict[str, Any] | None:
    body = served.route.body
    upload = UPLOADS.get((served.method, served.path))
    if upload is not None:
        return {"required": True, "content": upload}
    if body is not None and attrs.has(body):
        schema = schema_of(body, "in", dump)
        return {"required": bool(schema.get("required")), "content": _json(schema)}
    if body is not None:  # ``body=dict``: any JSON object, checked by the handler
        return {"required": False, "content": _json({"type": "object"})}
    if "request" in wants and served.method in BODY_METHODS:  # the raw body, parsed if JSON
        return {"required": False, "content": _json({})}
    return None


def _responses(served: ServedRoute, facts: _Facts, builtin: bool, dump: Dump) -> dict[str, Any]:
    hint = type_hints(served.route.handler).get("return")
    media = MEDIA.get((served.method, served.path))
    described = hint is not None and hint is not Any and Response not in (hint, *get_args(hint))
    if media is not None:
        content = {media: {"schema": {"type": "string"}}}
    elif described:
        content = _json(schema_of(hint, "out", dump))
    elif builtin and hint is not Response:  # the API's own successes are JSON (D17)
        content = _json({})
    else:
        content = {"*/*": {"schema": {}}}
    out: dict[str, Any] = {
        "200": {"description": "OK", "headers": {"Cache-Control": _CACHE_REF}, "content": content}
    }
    errors = dict.fromkeys(_HANDLER_ERRORS, _HANDLER_REFUSAL)
    errors |= {status: text for status, applies, text in _ERRORS if applies(facts)}
    for status in sorted(errors):
        out[status] = {
            "description": errors[status],
            "headers": {"Cache-Control": _CACHE_REF, **_ERROR_HEADERS.get(status, {})},
            "content": _json(_ERROR_REF),
        }
    if not builtin and not described:  # a plugin's route may answer as it likes (D17)
        out["default"] = {"description": "the plugin's own response (http-api §24)"}
    return out


def _json(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": dict(schema)}}
