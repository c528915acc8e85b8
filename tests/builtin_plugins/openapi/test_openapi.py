"""``GET /openapi.json``: the OpenAPI 3.1 document of the live route table (issue 7, part 1)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
from attrs import Factory, field, frozen
from openapi_spec_validator import validate

from builtin_plugins.openapi import openapi as builtin_openapi
from kernel.authoring import pack
from sdk import Response, Route, hookimpl, in_range

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECURED = [{"bearerAuth": []}, {"amanToken": []}]
PARAM = re.compile(r"\{\*?([A-Za-z_][A-Za-z0-9_]*)\}")


@frozen
class Inner:
    label: str


@frozen
class ShapeIn:
    name: str
    count: int = field(default=3, validator=in_range(1, 10))
    ratio: float = 0.5
    flag: bool = False
    mode: Literal["fast", "slow"] = "fast"
    note: str | None = None
    tags: list[str] = Factory(list)
    extra: dict[str, int] = Factory(dict)
    inner: Inner | None = None


@frozen
class ShapeQuery:
    limit: int = field(default=20, metadata={"clamp": (1, 100)})
    verbose: bool = False
    q: str | None = None


@frozen
class ShapeOut:
    id: str
    sizes: tuple[int, ...]
    owner: str | None


class Shapes:
    """A third-party plugin whose routes use each kind of declaration."""

    name = "shapes"

    @hookimpl
    def register_routes(self) -> list[Route]:
        return [
            Route(method="POST", path="/shapes", handler=create, body=ShapeIn, audit="shape.add"),
            Route(method="GET", path="/shapes/{shape_id}", handler=get, query=ShapeQuery),
            Route(method="PUT", path="/raw/{*rest}", handler=raw),
            Route(method="GET", path="/page", handler=page),
        ]


async def create(body: ShapeIn) -> ShapeOut:
    """Add a shape.

    More words."""
    return ShapeOut(id=body.name, sizes=(body.count,), owner=None)


async def get(shape_id: str, query: ShapeQuery) -> dict[str, bool]:
    return {"found": query.verbose}


async def raw(request, rest):
    return {"rest": rest}


async def page() -> Response:
    return Response(body="<p>hi</p>", content_type="text/html")


@pytest.fixture(name="served")
async def _served(make_kernel, serve_kernel):
    kernel = make_kernel(Shapes(), settings={"http.token": TOKEN})
    return kernel, await serve_kernel(kernel)


async def openapi(client) -> dict[str, Any]:
    resp = await client.get("/openapi.json", headers=AUTH)
    assert resp.status_code == 200
    return await resp.get_json()


def operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return doc["paths"][path][method.lower()]


def json_schema(part: dict[str, Any]) -> dict[str, Any]:
    return part["content"]["application/json"]["schema"]


# --- the route table ------------------------------------------------------------------------


async def test_every_served_route_appears_once_as_declared(served):
    kernel, client = served
    doc = await openapi(client)
    validate(doc)  # OpenAPI 3.1, JSON Schema 2020-12
    endpoints = kernel.router.endpoints()
    operations = [(m, p) for p, item in doc["paths"].items() for m in item]
    assert len(operations) == len(endpoints)
    for ep in endpoints:
        op = operation(doc, ep.route.method, PARAM.sub(r"{\1}", ep.path))
        assert op["security"] == ([] if ep.public else SECURED), ep.path
        params = {(p["in"], p["name"]) for p in op["parameters"]}
        expected = {("path", name) for name in PARAM.findall(ep.path)}
        if ep.route.confirm:
            expected.add(("header", "x-aman-confirm"))
        if ep.route.query is not None:
            expected |= {("query", a.name) for a in attrs.fields(ep.route.query)}
        assert params == expected, ep.path
        assert {"400", "403", "404", "409", "422", "500", "503"} <= op["responses"].keys()
        assert ("401" in op["responses"]) is (not ep.public or "request" in ep.wants), ep.path
        assert op["tags"] == [ep.plugin.name]
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(set(ids)) == len(ids)
    assert {t["name"] for t in doc["tags"]} == {ep.plugin.name for ep in endpoints}


async def test_confirm_debug_gate_and_availability_show(served):
    _, client = served
    doc = await openapi(client)
    shutdown = operation(doc, "POST", "/agent/shutdown")
    assert {
        "name": "x-aman-confirm",
        "in": "header",
        "required": True,
        "description": "`yes`, trimmed, any case (http-api §1.3)",
        "schema": {"type": "string", "enum": ["yes"]},
    } in shutdown["parameters"]
    assert shutdown["responses"]["409"]["description"] == "confirmation required"
    assert shutdown["x-aman-availability"] == "always"
    assert shutdown["x-aman-audit"] == "agent.shutdown"
    inject = operation(doc, "POST", "/inject-event")["responses"]
    assert inject["403"]["description"].startswith("debug endpoints are disabled")
    assert inject["503"]["description"].startswith("runtime not ready")
    live = operation(doc, "GET", "/health/live")
    assert live["security"] == [] and "401" not in live["responses"]
    assert live["responses"]["503"]["description"].startswith("refused by the handler")
    assert doc["components"]["securitySchemes"] == {
        "bearerAuth": {"type": "http", "scheme": "bearer"},
        "amanToken": {"type": "apiKey", "in": "header", "name": "x-aman-token"},
    }


async def test_protected_by_the_token_and_served_from_phase_0(make_kernel, serve_kernel, tmp_path):
    client = await serve_kernel(make_kernel(settings={"http.token": TOKEN}))
    resp = await client.get("/openapi.json")
    assert (resp.status_code, await resp.get_json()) == (
        401,
        {"error": "missing or invalid API token"},
    )
    assert (await client.get("/openapi.json", headers={"x-aman-token": TOKEN})).status_code == 200
    idle = make_kernel(runtime_dir=tmp_path / "idle")  # created, never started: phase 0
    assert idle.lifecycle.phase == 0
    doc = await builtin_openapi(idle.plugins.records["openapi"].ctx)
    assert operation(doc, "GET", "/openapi.json")["x-aman-availability"] == "always"


# --- bodies, queries, results ---------------------------------------------------------------


async def test_request_bodies_follow_the_attrs_classes(served):
    _, client = served
    doc = await openapi(client)
    body = operation(doc, "POST", "/api/v1/shapes/shapes")["requestBody"]
    assert body["required"] is True
    assert json_schema(body) == {
        "type": "object",
        "title": "ShapeIn",
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
            "ratio": {"type": "number", "default": 0.5},
            "flag": {"type": "boolean", "default": False},
            "mode": {"enum": ["fast", "slow"], "type": "string", "default": "fast"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "tags": {"type": "array", "items": {"type": "string"}, "default": []},
            "extra": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "default": {},
            },
            "inner": {
                "anyOf": [
                    {
                        "type": "object",
                        "title": "Inner",
                        "properties": {"label": {"type": "string"}},
                        "required": ["label"],
                    },
                    {"type": "null"},
                ],
                "default": None,
            },
        },
        "required": ["name"],
    }
    responses = operation(doc, "POST", "/api/v1/shapes/shapes")["responses"]
    assert {"400", "413", "415"} <= responses.keys()
    assert operation(doc, "PUT", "/api/v1/shapes/raw/{rest}")["requestBody"] == {
        "required": False,
        "content": {"application/json": {"schema": {}}},
    }
    config = operation(doc, "PUT", "/event-source/{source_id}/config")  # body=dict
    assert json_schema(config["requestBody"]) == {"type": "object"}
    assert "requestBody" not in operation(doc, "GET", "/plugins")


async def test_query_and_path_parameters(served):
    _, client = served
    doc = await openapi(client)
    get = operation(doc, "GET", "/api/v1/shapes/shapes/{shape_id}")
    assert get["parameters"] == [
        {
            "name": "shape_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "values outside 1..100 are moved into that range",
            "schema": {"type": "integer", "minimum": 0, "default": 20},
        },
        {
            "name": "verbose",
            "in": "query",
            "required": False,
            "schema": {"type": "boolean", "default": False},
        },
        {"name": "q", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    [rest] = operation(doc, "PUT", "/api/v1/shapes/raw/{rest}")["parameters"]
    assert rest["name"] == "rest" and rest["in"] == "path"


async def test_results_are_described_only_from_annotations(served):
    _, client = served
    doc = await openapi(client)
    created = operation(doc, "POST", "/api/v1/shapes/shapes")
    assert created["summary"] == "Add a shape."
    assert json_schema(created["responses"]["200"]) == {
        "type": "object",
        "title": "ShapeOut",
        "properties": {
            "id": {"type": "string"},
            "sizes": {"type": "array", "items": {"type": "integer"}},
            "owner": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["id", "sizes", "owner"],
    }
    assert "default" not in created["responses"]
    got = operation(doc, "GET", "/api/v1/shapes/shapes/{shape_id}")["responses"]["200"]
    assert json_schema(got) == {"type": "object", "additionalProperties": {"type": "boolean"}}
    for path, method in [("/api/v1/shapes/raw/{rest}", "PUT"), ("/api/v1/shapes/page", "GET")]:
        responses = operation(doc, method, path)["responses"]  # unannotated, or a Response
        assert responses["200"]["content"] == {"*/*": {"schema": {}}}
        assert responses["default"] == {"description": "the plugin's own response (http-api §24)"}
    enable = operation(doc, "POST", "/plugin/{name}/enable")["responses"]["200"]
    assert json_schema(enable)["required"] == ["ok", "name", "state", "changed"]


async def test_media_types_of_http_api_1_1(served):
    _, client = served
    doc = await openapi(client)
    metrics = operation(doc, "GET", "/metrics")["responses"]["200"]["content"]
    assert metrics == {"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}}
    stream = operation(doc, "GET", "/events/stream")["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    upload = operation(doc, "POST", "/plugin/install")["requestBody"]["content"]
    assert set(upload) == {"application/gzip", "multipart/form-data"}
    error = operation(doc, "GET", "/plugins")["responses"]["401"]
    assert error["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
    }
    assert error["headers"]["WWW-Authenticate"]["required"] is True


# --- installed plugins ----------------------------------------------------------------------


async def test_plugins_routes_follow_enable_and_disable(served):
    kernel, client = served
    ctx = kernel.plugins.records["openapi"].ctx
    shapes = [r for r in ctx.plugins.routes() if r.plugin == "shapes"]
    assert [(r.method, r.path, r.public) for r in shapes] == [
        ("POST", "/api/v1/shapes/shapes", False),
        ("GET", "/api/v1/shapes/shapes/{shape_id}", False),
        ("PUT", "/api/v1/shapes/raw/{*rest}", False),
        ("GET", "/api/v1/shapes/page", False),
    ]
    assert shapes[0].route.body is ShapeIn
    headers = {**AUTH, "x-aman-confirm": "yes"}
    assert (await client.post("/plugin/shapes/disable", headers=headers)).status_code == 200
    assert not [r for r in ctx.plugins.routes() if r.plugin == "shapes"]
    assert not [p for p in (await openapi(client))["paths"] if p.startswith("/api/v1/shapes/")]
    assert (await client.post("/plugin/shapes/enable", headers=AUTH)).status_code == 200
    assert "/api/v1/shapes/shapes" in (await openapi(client))["paths"]


async def test_an_installed_plugin_appears_and_disappears(served, tmp_path):
    _, client = served
    archive, _ = pack(ROOT / "examples" / "notes", tmp_path / "notes.tar.gz")
    gz = {**AUTH, "content-type": "application/gzip"}
    resp = await client.post("/plugin/install", data=archive.read_bytes(), headers=gz)
    assert resp.status_code == 200, await resp.get_json()
    paths = (await openapi(client))["paths"]
    assert set(paths["/api/v1/notes/items"]) == {"get", "post"}
    assert set(paths["/api/v1/notes/items/{id}"]) == {"get", "delete"}
    assert paths["/api/v1/notes/ui/{path}"]["get"]["security"] == []  # page files are public
    resp = await client.post("/plugin/notes/uninstall", headers=AUTH)
    assert resp.status_code == 200
    paths = (await openapi(client))["paths"]
    assert not [p for p in paths if p.startswith("/api/v1/notes/")]
