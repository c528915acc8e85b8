"""The dispatcher: the order of checks of http-api §1.4 and the JSON error model of §1.5–§1.6."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import pytest
from attrs import field, frozen

from sdk import AuditNote, NotFound, Request, Response, Route, hookimpl, in_range


@frozen
class ThingIn:
    name: str
    count: int = field(default=1, validator=in_range(1, 10))
    kind: Literal["a", "b"] = "a"
    tags: list[str] = field(factory=list)


@frozen
class ThingQuery:
    limit: int = field(default=50, metadata={"clamp": (1, 1000)})
    active: bool | None = None
    after: int | None = None


class Things:
    """Built-in-shaped routes for the tests (registered as a built-in would be: at its own paths)."""

    name = "things"
    calls: list[str]

    def __init__(self) -> None:
        self.calls = []

    @hookimpl
    def register_routes(self) -> list[Route]:
        return [
            Route(method="GET", path="/things/{thing_id}", handler=self.get_thing),
            Route(method="POST", path="/things", handler=self.add, body=ThingIn, audit="thing.add", target="things"),
            Route(
                method="POST",
                path="/things/{thing_id}/drop",
                handler=self.drop,
                confirm=True,
                audit="thing.drop",
                target="thing:{thing_id}",
            ),
            Route(method="POST", path="/debug/things", handler=self.add_plain, debug_gate=True, audit="thing.debug", target="debug"),
            Route(method="GET", path="/things", handler=self.list_things, query=ThingQuery),
            Route(method="GET", path="/open", handler=self.add_plain, public=True, availability="always"),
            Route(method="GET", path="/boom", handler=self.boom),
            Route(method="GET", path="/raw/{*rest}", handler=self.raw),
        ]

    async def get_thing(self, thing_id: str) -> dict[str, str]:
        if thing_id == "missing":
            raise NotFound(f"thing not found: {thing_id}")
        return {"id": thing_id}

    async def add(self, body: ThingIn, operator: str, audit: AuditNote) -> ThingIn:
        self.calls.append(body.name)
        audit.detail = f"name={body.name}"
        return body

    async def drop(self, thing_id: str) -> dict[str, Any]:
        self.calls.append(f"drop {thing_id}")
        return {"ok": True}

    async def add_plain(self) -> dict[str, bool]:
        return {"ok": True}

    async def list_things(self, query: ThingQuery) -> dict[str, Any]:
        out = {"limit": query.limit, "active": query.active}
        return out if query.after is None else {**out, "after": query.after}

    async def boom(self) -> None:
        raise RuntimeError("secret internals")

    async def raw(self, request: Request, rest: str) -> Response:
        return Response(status=201, body=f"{request.method} {rest}", content_type="text/plain")


@pytest.fixture(name="things")
def _things() -> Things:
    return Things()


@pytest.fixture(name="client")
async def _client(make_kernel, serve_kernel, things):
    kernel = make_kernel(("things", things), settings={"http.token": "s3cret"})
    kernel.plugins.records["things"].source = "builtin"  # mount at its own paths, as a built-in
    kernel.rebuild_routes()
    client = await serve_kernel(kernel)
    client.kernel = kernel
    return client


AUTH = {"Authorization": "Bearer s3cret"}
JSON = {**AUTH, "content-type": "application/json"}


async def error_of(resp) -> tuple[int, str]:
    body = await resp.get_json()
    assert resp.content_type.startswith("application/json"), resp.content_type
    return resp.status_code, body["error"]


async def audit(client, action: str) -> list[dict[str, Any]]:
    page = await client.kernel.audit.query(action=action)
    return [{"outcome": r.outcome, "detail": r.detail, "target": r.target, "operator": r.operator} for r in page.items]


async def test_unknown_path_and_wrong_method_are_json_without_token(client):
    assert await error_of(await client.get("/nope")) == (404, "not found")
    assert await error_of(await client.get("/things/")) == (404, "not found")  # trailing slash
    assert await error_of(await client.get("//things/1")) == (404, "not found")
    resp = await client.delete("/things/1")
    assert await error_of(resp) == (405, "method not allowed")
    assert resp.headers["Allow"] == "GET, HEAD"
    assert (await client.options("/things/1")).status_code == 405


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "bearer s3cret"},  # the scheme is case-sensitive
        {"Authorization": "Basic s3cret"},
        {"Authorization": "Bearer wrong", "x-aman-token": "s3cret"},  # a wrong Bearer wins
        {"x-aman-token": "S3CRET"},
        {"x-aman-token": ""},
    ],
)
async def test_missing_or_wrong_token_is_401(client, headers):
    resp = await client.get("/things/1", headers=headers)
    assert await error_of(resp) == (401, "missing or invalid API token")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="aman"'


@pytest.mark.parametrize(
    "headers",
    [AUTH, {"Authorization": "  Bearer s3cret  "}, {"x-aman-token": "s3cret"}, {"Authorization": "Basic x", "x-aman-token": "s3cret"}],
)
async def test_token_accepted(client, headers):
    resp = await client.get("/things/1", headers=headers)
    assert resp.status_code == 200
    assert await resp.get_json() == {"id": "1"}
    assert resp.headers["Cache-Control"] == "no-store"


async def test_auth_failures_are_counted_not_audited(client):
    await client.post("/things", json={"name": "x"})
    assert await audit(client, "thing.add") == []
    assert client.kernel.metrics.registry.get_sample_value("http_auth_failures_total") == 1


async def test_public_route_needs_no_token(client):
    assert (await client.get("/open")).status_code == 200


async def test_path_parameters_are_percent_decoded_single_segments(client):
    # Quart's test client decodes the path before the app sees it, so an encoded "/" (%2F) is
    # covered against a real server in tests/server/.
    assert await (await client.get("/things/a%20b", headers=AUTH)).get_json() == {"id": "a b"}
    assert (await client.get("/things/a/b", headers=AUTH)).status_code == 404


async def test_head_follows_get_without_body(client):
    resp = await client.head("/things/1", headers=AUTH)
    assert resp.status_code == 200
    assert await resp.get_data() == b""


async def test_body_structured_into_the_input_class(client, things):
    resp = await client.post("/things", json={"name": "n", "count": 3, "extra": "ignored"}, headers=AUTH)
    assert resp.status_code == 200
    assert await resp.get_json() == {"name": "n", "count": 3, "kind": "a", "tags": []}
    assert things.calls == ["n"]
    assert await audit(client, "thing.add") == [{"outcome": "ok", "detail": "name=n", "target": "things", "operator": "api"}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "missing required field 'name'"),
        ({"name": 1}, "field 'name' must be a string"),
        ({"name": "n", "count": "2"}, "field 'count' must be an integer"),
        ({"name": "n", "count": True}, "field 'count' must be an integer"),
        ({"name": "n", "count": 1.0}, "field 'count' must be an integer"),
        ({"name": "n", "count": 11}, "field 'count' must be between 1 and 10"),
        ({"name": "n", "count": 2**63}, "field 'count' must fit in a signed 64-bit integer"),
        ({"name": "n", "count": -(2**63) - 1}, "field 'count' must fit in a signed 64-bit integer"),
        ({"name": "n", "kind": "c"}, "invalid value for 'kind': 'c' (expected one of: a, b)"),
        ({"name": "n", "tags": "t"}, "field 'tags' must be an array of strings"),
        ({"name": "n", "tags": [1]}, "field 'tags' must be an array of strings"),
        ([], "request body must be a JSON object"),
    ],
)
async def test_bad_fields_are_400_naming_the_field(client, things, body, message):
    resp = await client.post("/things", json=body, headers=AUTH)
    assert await error_of(resp) == (400, message)
    assert things.calls == []
    assert await audit(client, "thing.add") == [{"outcome": "error", "detail": message, "target": "things", "operator": "api"}]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{bad", "invalid JSON body"),
        (b'{"name": NaN}', "invalid JSON body"),
        (b"\xff\xfe", "invalid JSON body"),
        (b'{"name": "a\\ud800b"}', "invalid JSON body"),  # a lone surrogate: no character
        (b'{"name": "n", "tags": [{"\\udc00": 1}]}', "invalid JSON body"),
        (b'{"name": "n", "x": 1e999}', "invalid JSON body"),  # would come out as Infinity
        (b'{"name": "n", "x": ' + b"[" * 65 + b"]" * 65 + b"}", "invalid JSON body"),
        (b"[" * 5000 + b"]" * 5000, "invalid JSON body"),  # deeper than the parser recurses
    ],
)
async def test_malformed_json_is_400(client, data, message):
    resp = await client.post("/things", data=data, headers=JSON)
    status, error = await error_of(resp)
    assert (status, error.split(":")[0]) == (400, message)


async def test_nesting_up_to_the_limit_is_fine(client, things):
    body = b'{"name": "n", "x": ' + b"[" * 63 + b"]" * 63 + b', "y": 1.5e300}'
    assert (await client.post("/things", data=body, headers=JSON)).status_code == 200
    deep = await client.post("/things", data=body.replace(b"[", b"[[", 1).replace(b"]", b"]]", 1),
                             headers=JSON)
    assert await error_of(deep) == (400, "invalid JSON body: nested deeper than 64 levels")


async def test_a_surrogate_pair_is_one_character(client, things):
    resp = await client.post("/things", data=b'{"name": "\\ud83d\\ude00 \\\\ud800"}', headers=JSON)
    assert (await resp.get_json())["name"] == "\U0001f600 \\ud800"  # an escaped backslash is text


async def test_empty_body_counts_as_empty_object(client):
    resp = await client.post("/things", data=b"", headers=AUTH)
    assert await error_of(resp) == (400, "missing required field 'name'")


async def test_wrong_media_type_is_415(client):
    resp = await client.post("/things", data=b'{"name": "n"}', headers={**AUTH, "content-type": "text/plain"})
    assert await error_of(resp) == (415, "unsupported content type; expected application/json")
    ok = await client.post("/things", data=b'{"name": "n"}', headers={**AUTH, "content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


async def test_body_over_the_limit_is_413(client, things):
    limit = client.kernel.config.get("http.max_body_bytes")
    big = b'{"name": "' + b"x" * limit + b'"}'
    resp = await client.post("/things", data=big, headers=JSON)
    assert await error_of(resp) == (413, f"request body too large (limit {limit} bytes)")
    assert things.calls == []


async def test_confirmation_is_checked_before_body_and_resource(client, things):
    resp = await client.post("/things/unknown/drop", data=b"{not json", headers={**AUTH, "x-aman-operator": "alice"})
    assert await error_of(resp) == (409, "confirmation required")
    assert things.calls == []
    assert await audit(client, "thing.drop") == [
        {"outcome": "confirm_required", "detail": "", "target": "thing:unknown", "operator": "alice"}
    ]


@pytest.mark.parametrize(("value", "passes"), [("yes", True), ("YES", True), (" Yes ", True), ("true", False), ("1", False), ("no", False)])
async def test_confirmation_values(client, value, passes):
    resp = await client.post("/things/t1/drop", headers={**AUTH, "x-aman-confirm": value})
    assert resp.status_code == (200 if passes else 409)


async def test_debug_gate_is_403_and_audited_forbidden(client):
    resp = await client.post("/debug/things", headers=AUTH)
    status, message = await error_of(resp)
    assert status == 403
    assert "force_enable_debug_endpoints" in message
    assert await audit(client, "thing.debug") == [
        {"outcome": "forbidden", "detail": "force_enable_debug_endpoints=false", "target": "debug", "operator": "api"}
    ]
    await client.kernel.config.set({"debug.force_enable_debug_endpoints": True}, operator="t")
    assert (await client.post("/debug/things", headers=AUTH)).status_code == 200


async def test_operator_header_rules(client):
    long = "o" * 200
    for header, expected in [("  bob  ", "bob"), ("", "api"), ("bad\x01name", "api"), (long, "o" * 128)]:
        await client.post("/things", json={"name": "n"}, headers={**AUTH, "x-aman-operator": header})
        assert (await audit(client, "thing.add"))[0]["operator"] == expected


async def test_query_parameters(client):
    get = lambda q: client.get(f"/things?{q}", headers=AUTH)  # noqa: E731
    assert await (await get("limit=5000&active=YES&unknown=1")).get_json() == {"limit": 1000, "active": True}
    assert await (await get("limit=0")).get_json() == {"limit": 1, "active": None}
    assert await error_of(await get("limit=-1")) == (400, "invalid query parameter 'limit': expected a non-negative integer")
    assert await error_of(await get("active=maybe")) == (400, "invalid query parameter 'active': expected a boolean")
    assert (await (await get(f"after={2**63 - 1}")).get_json())["after"] == 2**63 - 1
    assert await error_of(await get(f"after={2**63}")) == (
        400, "invalid query parameter 'after': must fit in a signed 64-bit integer")
    assert (await (await get(f"limit={10**30}")).get_json())["limit"] == 1000  # a clamp lowers it


async def test_handler_not_found_error(client):
    assert await error_of(await client.get("/things/missing", headers=AUTH)) == (404, "thing not found: missing")


async def test_unexpected_error_is_500_with_a_reference_and_no_internals(client, caplog):
    resp = await client.get("/boom", headers=AUTH)
    status, message = await error_of(resp)
    assert status == 500
    assert message.startswith("internal error (ref ")
    assert "secret" not in message
    ref = message.removeprefix("internal error (ref ").rstrip(")")
    assert any(ref in r.getMessage() for r in caplog.records)


async def test_explicit_response_and_rest_parameter(client):
    resp = await client.get("/raw/a/b/c", headers=AUTH)
    assert resp.status_code == 201
    assert await resp.get_data() == b"GET a/b/c"


async def test_requests_are_counted_by_route_template(client):
    await client.get("/things/1", headers=AUTH)
    await client.get("/things/2", headers=AUTH)
    value = client.kernel.metrics.registry.get_sample_value(
        "http_requests_total", {"method": "GET", "route": "/things/{thing_id}", "status": "200"}
    )
    assert value == 2


# --- third-party plugin routes (http-api §24) -------------------------------------------------


class Team:
    name = "team"

    @hookimpl
    def register_routes(self) -> list[Route]:
        return [
            Route(method="GET", path="/tasks/{task_id}", handler=self.task),
            Route(method="POST", path="/echo", handler=self.echo),
            Route(method="GET", path="/crash", handler=self.crash),
            Route(method="GET", path="/slow", handler=self.slow),
            Route(method="GET", path="/sync", handler=self.sync_handler),
            Route(method="GET", path="/public", handler=self.task, public=True),
        ]

    async def task(self, task_id: str = "") -> dict[str, str]:
        return {"task": task_id}

    async def echo(self, request: Request) -> Response:
        return Response(status=202, body=request.body, content_type="application/x-echo", headers={"x-path": request.path})

    async def crash(self) -> None:
        raise KeyError("internal")

    async def slow(self) -> None:
        await asyncio.sleep(30)

    def sync_handler(self) -> dict[str, bool]:
        return {"sync": True}


@pytest.fixture(name="team_client")
async def _team_client(make_kernel, serve_kernel):
    kernel = make_kernel(Team(), settings={"http.token": "s3cret", "plugins.route_timeout_sec": 1})
    return await serve_kernel(kernel)


async def test_plugin_routes_are_prefixed_and_protected(team_client):
    assert await (await team_client.get("/api/v1/team/tasks/7", headers=AUTH)).get_json() == {"task": "7"}
    assert (await team_client.get("/api/v1/team/tasks/7")).status_code == 401
    assert (await team_client.get("/tasks/7", headers=AUTH)).status_code == 404
    # Route(public=True) counts only for built-ins; installed plugins declare public_routes.
    assert (await team_client.get("/api/v1/team/public")).status_code == 401


async def test_plugin_route_answers_its_own_way(team_client):
    resp = await team_client.post("/api/v1/team/echo", data=b"raw bytes", headers={**AUTH, "content-type": "application/octet-stream"})
    assert resp.status_code == 202
    assert await resp.get_data() == b"raw bytes"
    assert resp.headers["x-path"] == "/echo"
    assert (await team_client.get("/api/v1/team/sync", headers=AUTH)).status_code == 200


async def test_plugin_failures_are_json_500(team_client):
    assert await error_of(await team_client.get("/api/v1/team/crash", headers=AUTH)) == (500, "plugin team failed: KeyError")
    assert await error_of(await team_client.get("/api/v1/team/slow", headers=AUTH)) == (
        500,
        "plugin team did not answer within 1 s",
    )
    assert (await team_client.get("/api/v1/team/tasks/1", headers=AUTH)).status_code == 200
