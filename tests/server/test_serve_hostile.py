"""Hostile HTTP against one real ``aman serve`` (issue 7): every protected route refuses every
wrong credential without running its handler, path and method tricks never reach a handler
without the token nor a framework page, protocol errors are JSON, and slow or oversized
requests are cut off without holding up other clients (contract D4, D5, D16; http-api §1.1,
§1.2, §1.4, §1.5).

The routes are the server's own: ``GET /plugins`` lists each plugin's routes with their
``public`` flag, and the tables below are built from that list.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kernel.cli import HEAD_TIMEOUT_SEC
from kernel.router import BODY_GRACE_SEC

from .conftest import write_entry_point_plugin
from .rawhttp import (
    Answer,
    Header,
    answer,
    exchange,
    head_bytes,
    read_until_closed,
    send,
    trickle,
)

pytestmark = pytest.mark.server

#: Not ASCII: the token is compared on the UTF-8 bytes of the header (http-api §1.2, rule 5).
TOKEN = "hostile-tök-5e1c"
UTF8 = TOKEN.encode()
BEARER = b"Bearer " + UTF8
JSON = "application/json; charset=utf-8"
UNAUTHORIZED = {"error": "missing or invalid API token"}
NOT_FOUND = {"error": "not found"}
SLOW_BODY = {"error": "request body not received in time"}
#: The server's own answers to requests it cannot parse (decided here; kernel/cli.py).
PROTOCOL_ERRORS = {
    400: "malformed HTTP request",
    431: "request header fields too large",
    501: "unsupported transfer encoding",
}
#: The public routes of http-api §1.2; everything else the server lists is protected.
PUBLIC = {
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/health"),
    ("GET", "/health/llm"),
    ("GET", "/metrics"),
    ("GET", "/ui/pages"),
    ("GET", "/events/stream"),
}
#: A value for every path parameter: the route is matched, the resource does not exist.
DUMMY = "dummy-1"
#: The state a handler that ran could have changed, read with the token before and after.
STATE = (
    "/audit-log",
    "/chat/sessions",
    "/cron",
    "/notifications",
    "/workflow-instances",
    "/dlq",
    "/events/recent",
    "/config",
    "/tool-auth/pending",
)


def basic(user: str, secret: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{secret}".encode())


#: Credentials that must never pass (http-api §1.2): (name, headers, query parameters).
REFUSED: list[tuple[str, list[tuple[str, bytes]], dict[str, str]]] = [
    ("no credential", [], {}),
    ("empty Authorization", [("Authorization", b"")], {}),
    ("Bearer without a token", [("Authorization", b"Bearer")], {}),
    ("wrong Bearer", [("Authorization", b"Bearer wrong")], {}),
    ("Bearer, a prefix of the token", [("Authorization", BEARER[:-1])], {}),
    ("Bearer, two spaces", [("Authorization", b"Bearer  " + UTF8)], {}),
    ("lower-case scheme", [("Authorization", b"bearer " + UTF8)], {}),
    ("Basic", [("Authorization", basic("api", TOKEN))], {}),
    ("Token scheme", [("Authorization", b"Token " + UTF8)], {}),
    ("X-Api-Key", [("X-Api-Key", UTF8)], {}),
    ("Cookie", [("Cookie", b"token=" + UTF8 + b"; aman_token=" + UTF8)], {}),
    ("query parameter", [], {"token": TOKEN, "access_token": TOKEN}),
    ("wrong x-aman-token", [("x-aman-token", b"wrong")], {}),
    ("token in Latin-1", [("x-aman-token", TOKEN.encode("latin-1"))], {}),
    (
        "right x-aman-token beside a wrong Bearer (D5)",
        [("Authorization", b"Bearer wrong"), ("X-Aman-Token", UTF8)],
        {},
    ),
    (
        "Authorization twice, the right one last",
        [("Authorization", b"Bearer wrong"), ("Authorization", BEARER)],
        {},
    ),
    ("x-aman-token twice", [("x-aman-token", b"wrong"), ("x-aman-token", UTF8)], {}),
]
#: More of the same kind, tried on one route only.
REFUSED_ONCE: list[tuple[str, list[tuple[str, bytes]], dict[str, str]]] = [
    ("Bearer, token upper-cased", [("Authorization", b"Bearer " + TOKEN.upper().encode())], {}),
    ("Bearer, token and more", [("Authorization", BEARER + b"x")], {}),
    ("Bearer, token quoted", [("Authorization", b'Bearer "' + UTF8 + b'"')], {}),
    ("Bearer, a tab", [("Authorization", b"Bearer\t" + UTF8)], {}),
    ("upper-case scheme", [("Authorization", b"BEARER " + UTF8)], {}),
    ("token without a scheme", [("Authorization", UTF8)], {}),
    ("Proxy-Authorization", [("Proxy-Authorization", BEARER)], {}),
    ("X-Auth-Token", [("X-Auth-Token", UTF8)], {}),
    ("empty x-aman-token", [("x-aman-token", b"")], {}),
    (
        "Authorization twice, the right one first",
        [("Authorization", BEARER), ("Authorization", b"Bearer wrong")],
        {},
    ),
    ("the right x-aman-token twice", [("x-aman-token", UTF8), ("x-aman-token", UTF8)], {}),
]

#: Credentials that pass, sent byte for byte (whitespace an HTTP client would not send).
ACCEPTED: list[tuple[str, list[Header]]] = [
    ("Bearer", [("Authorization", b" " + BEARER)]),
    ("Bearer with surrounding whitespace", [("Authorization", b" \t " + BEARER + b"  \t")]),
    ("x-aman-token", [("x-aman-token", b" " + UTF8)]),
    ("X-Aman-Token", [("X-Aman-Token", b" " + UTF8)]),
    ("X-AMAN-TOKEN with surrounding whitespace", [("X-AMAN-TOKEN", b"   " + UTF8 + b" ")]),
    (
        "right Bearer, wrong x-aman-token",
        [("Authorization", b" " + BEARER), ("x-aman-token", "no")],
    ),
    (
        "Basic, then x-aman-token",
        [("Authorization", b" Basic eA=="), ("x-aman-token", b" " + UTF8)],
    ),
    (
        "lower-case bearer, then x-aman-token",
        [("Authorization", b" bearer x"), ("x-aman-token", b" " + UTF8)],
    ),
    (
        "empty Bearer, then x-aman-token",
        [("Authorization", b" Bearer "), ("x-aman-token", b" " + UTF8)],
    ),
]


#: A third-party plugin (routes under ``/api/v1/hostile/``, protected, http-api §24) whose
#: handlers count their calls: ``GET /api/v1/hostile/calls`` says how many ran.
PLUGIN = """
from sdk import Route, hookimpl

CALLS = []


@hookimpl
def register_routes(ctx):
    return [
        Route(method=method, path=path, handler=handler)
        for method, path in [
            ("GET", "/items/{item_id}"),
            ("POST", "/items"),
            ("PUT", "/items/{item_id}"),
            ("PATCH", "/items/{item_id}"),
            ("DELETE", "/items/{item_id}"),
            ("GET", "/files/{*rest}"),
        ]
    ] + [Route(method="GET", path="/calls", handler=calls)]


async def handler(request):
    CALLS.append(request.path)
    return {"ok": True}


async def calls():
    return {"calls": len(CALLS)}
"""


@pytest.fixture(scope="module")
def server(module_aman: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    plugins = tmp_path_factory.mktemp("hostile-plugin")
    write_entry_point_plugin(plugins, "hostile_plugin", "hostile", PLUGIN)
    return module_aman(token=TOKEN, pythonpath=plugins)


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[httpx.Client]:
    """An authenticated client (the token is not ASCII, so the header is given as bytes)."""
    with httpx.Client(base_url=server.base_url, timeout=10, headers={"Authorization": BEARER}) as c:
        yield c


@pytest.fixture(scope="module")
def routes(client: httpx.Client) -> list[tuple[str, str, bool]]:
    """(method, path template, public) of every route the server lists in ``GET /plugins``."""
    r = client.get("/plugins")
    assert r.status_code == 200, r.text
    return [
        (route["method"], route["path"], route["public"])
        for plugin in r.json()["items"]
        for route in plugin["routes"]
    ]


@pytest.fixture(scope="module")
def protected(routes: list[tuple[str, str, bool]]) -> list[tuple[str, str]]:
    return [(method, path) for method, path, public in routes if not public]


def concrete(template: str, value: str = DUMMY) -> str:
    return re.sub(r"\{\*?[A-Za-z_][A-Za-z0-9_]*\}", value, template)


def state(client: httpx.Client) -> dict[str, Any]:
    """What a handler that ran could have changed (the plugin's count of its handler calls
    included), read with the token."""
    paths = (*STATE, "/api/v1/hostile/calls")
    return {path: client.get(path, params={"limit": 1000}).json() for path in paths}


def requests_by_route(client: httpx.Client) -> Counter[tuple[str, str, str]]:
    """``http_requests_total`` by (method, route template, status), from ``/metrics``."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "http_requests_total":
                labels = sample.labels
                counts[(labels["method"], labels["route"], labels["status"])] = int(sample.value)
    return counts


def assert_401(r: httpx.Response | Answer, what: str) -> None:
    headers = r.headers
    assert r.status_code == 401, (what, r.status_code)
    assert r.json() == UNAUTHORIZED, what
    assert headers["www-authenticate"] == 'Bearer realm="aman"', what
    assert headers["content-type"] == JSON, what
    assert headers["cache-control"] == "no-store", what


def assert_protocol_error(answer: Answer, status: int, what: str) -> None:
    """The JSON answer to a request the server could not take, and the connection closed."""
    assert answer.status_code == status, (what, answer)
    assert answer.headers["content-type"] == JSON, (what, answer)
    assert answer.json() == {"error": PROTOCOL_ERRORS[status]}, (what, answer)
    assert answer.headers["connection"] == "close", what


# --- credentials -----------------------------------------------------------------------------


def test_the_served_routes_are_listed_with_the_public_flags_of_the_spec(routes) -> None:
    public = {(method, path) for method, path, is_public in routes if is_public}
    assert public == PUBLIC
    listed = {(method, path) for method, path, _ in routes}
    assert {
        ("GET", "/runtime/status"),
        ("POST", "/agent/shutdown"),
        ("POST", "/config/set"),
        ("PATCH", "/api/v1/hostile/items/{item_id}"),
        ("GET", "/api/v1/hostile/files/{*rest}"),
    } <= listed
    assert len(listed) == len(routes)  # one entry per (method, path)


def refuse(
    client: httpx.Client, method: str, path: str, variants: Sequence[tuple[str, Any, Any]]
) -> None:
    for name, headers, params in variants:
        r = client.request(
            method, path, headers=[("x-aman-confirm", b"yes"), *headers], params=params
        )
        assert_401(r, f"{method} {path} with {name}")


def test_no_wrong_credential_passes_any_protected_route(server, client, protected) -> None:
    """Every protected route × every refused credential: 401 with ``WWW-Authenticate``, the
    request counted under its route as a 401 and nothing else, no audit record, no change.
    (Requests without a body keep the connection; bodies refused unread: the slow-client test.)"""
    before, counted = state(client), requests_by_route(client)
    with httpx.Client(base_url=server.base_url, timeout=10) as anon:
        for method, template in protected:
            refuse(anon, method, concrete(template), REFUSED)
        refuse(anon, "GET", "/runtime/status", REFUSED_ONCE)
        refuse(anon, "POST", "/agent/shutdown", REFUSED_ONCE)

    after = requests_by_route(client)
    for method, template in protected:
        changed = {
            key[2]: after[key] - counted[key]
            for key in after
            if key[:2] == (method, template) and after[key] != counted[key]
        }
        once = len(REFUSED_ONCE) if template in ("/runtime/status", "/agent/shutdown") else 0
        assert changed == {"401": len(REFUSED) + once}, (method, template, changed)
    assert state(client) == before  # no audit record, no session, event, job or config change


def test_accepted_credential_forms(server) -> None:
    """http-api §1.2: the ``Authorization`` value is trimmed and only ``Bearer `` (case-sensitive)
    counts; another scheme counts as absent, so ``x-aman-token`` is used; header names are
    case-insensitive; HTTP itself strips whitespace around every header value."""
    for name, headers in ACCEPTED:
        answer = exchange(server.port, "GET", "/runtime/status", headers)
        assert answer.status_code == 200, (name, answer)
        assert answer.json()["status"] == "ready", name


def test_token_in_the_query_counts_only_on_the_event_stream(server) -> None:
    """§23: ``?token=`` is honoured by ``GET /events/stream`` (a wrong one is a 401 there) and
    by nothing else (the table above sends it to every protected route)."""
    wrong = exchange(server.port, "GET", "/events/stream?token=wrong")
    assert_401(wrong, "stream with a wrong ?token=")
    with httpx.Client(base_url=server.base_url, timeout=10) as anon:
        for token in (TOKEN, None):
            params = {"token": token} if token else {}
            with anon.stream("GET", "/events/stream", params=params) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                first = next(r.iter_lines())
                # The snapshots are for clients that may see payloads (D13).
                full = first == "event: metrics:updated"
                assert full is (token is not None), first


# --- paths -----------------------------------------------------------------------------------


def path_tricks(port: int) -> list[tuple[str, str]]:
    """(request target, what it tries) around the protected ``GET /skills`` and a plugin's
    ``GET /api/v1/hostile/calls``."""
    return [
        ("/api/v1/HOSTILE/calls", "a plugin name in upper case"),
        ("/api/v1//hostile/calls", "an empty segment before a plugin"),
        ("/api/v1/hostile/calls/", "a trailing slash after a plugin route"),
        ("/api/v1/hostile/%63alls", "an encoded letter in a plugin route"),
        ("/api/v1/hostile/x/../calls", "a dot-dot segment in a plugin route"),
        ("/api/v1/hostile", "the plugin prefix alone"),
        ("//skills", "an empty segment"),
        ("/skills/", "a trailing slash"),
        ("/skills//", "two trailing slashes"),
        ("/./skills", "a dot segment"),
        ("/skills/.", "a final dot segment"),
        ("/x/../skills", "a dot-dot segment"),
        ("/%2e%2e/skills", "an encoded dot-dot segment"),
        ("/skills/%2e%2e/plugins", "an encoded dot-dot into another route"),
        ("/%2Fskills", "an encoded slash"),
        ("/skills%2F", "an encoded trailing slash"),
        ("/%73kills", "an encoded letter"),
        ("/SKILLS", "upper case"),
        ("/Skills", "mixed case"),
        ("/\\skills", "a backslash"),
        ("/skills\\", "a trailing backslash"),
        ("/skills%00", "an encoded NUL"),
        ("/skills%20", "an encoded space"),
        ("/skills;x=1", "a path parameter"),
        ("/skills#x", "a fragment"),
        ("skills", "no leading slash"),
        ("*", "the asterisk form"),
        (f"http://127.0.0.1:{port}/skills", "the absolute form"),
        ("/" + "a" * 15_000, "a 15 KB path"),
    ]


def test_path_tricks_never_reach_a_handler(server) -> None:
    """http-api §1.1: paths are case-sensitive and matched exactly, as sent; an unknown path is a
    JSON 404 before the token is checked, so the token changes nothing."""
    for target, what in path_tricks(server.port):
        for headers in ([], [("Authorization", BEARER)]):
            answer = exchange(server.port, "GET", target, headers)
            assert answer.status_code == 404, (what, answer.status_code)
            assert answer.json() == NOT_FOUND, what
            assert answer.headers["content-type"] == JSON, what


def test_a_target_that_still_names_a_route_still_needs_the_token(server) -> None:
    """Dots and encoded characters inside a path parameter stay in that one parameter (http-api
    §1.1, §24 ``{*rest}``): the route is the parameter's, so the token is needed, and with it
    the handler answers (its lookup finds nothing, or the plugin takes the rest as it is)."""
    for target in (
        "/skill/%2e%2e/content",
        "/skill/..%2F..%2Fplugins/content",
        "/skill/a%2Fb/versions",
        "/skill/%00/content",
        "/skills?x=%2e%2e%2F",
        "/api/v1/hostile/items/..",
        "/api/v1/hostile/files/../../../skills",
        "/api/v1/hostile/files/%2e%2e/%2e%2e/skills",
    ):
        assert_401(exchange(server.port, "GET", target), target)
        answer = exchange(server.port, "GET", target, [("Authorization", BEARER)])
        assert answer.status_code in (200, 404), (target, answer)
        assert answer.headers["content-type"] == JSON, target


def test_hostile_parameter_values_are_never_a_server_error(server, protected) -> None:
    """With the token, odd parameter values reach the GET handlers: none fails with a 500."""
    values = ("%2e%2e", "..%2F..%2Fetc%2Fpasswd", "%00", "%5C", "%FF%FE", "x" * 4000)
    for method, template in protected:
        if method != "GET" or "{" not in template:
            continue
        for value in values:
            target = concrete(template, value)
            answer = exchange(server.port, "GET", target, [("Authorization", BEARER)])
            assert answer.status_code < 500, (target[:80], answer)
            assert answer.headers["content-type"] == JSON, target[:80]
            answer.json()


def test_request_heads_the_server_cannot_take_are_json(server) -> None:
    """Errors Hypercorn answers before the app sees a request are JSON too (D4)."""
    port = server.port
    cases = [
        (b"GET /skills\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "a raw NUL in the target"),
        (b"GET /ski lls HTTP/1.1\r\nHost: x\r\n\r\n", 400, "a space in the target"),
        (b"GET /skills HTTP/1.1\r\n\r\n", 400, "no Host"),
        (b"GET /skills HTTP/1.1\r\nHost: x\r\nAuthorization : x\r\n\r\n", 400, "space before :"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "a TLS hello"),
        (head_bytes("GET", "/" + "a" * 100_000, port), 431, "a 100 KB path"),
        (head_bytes("GET", "/skills", port, [("X-Big", "a" * 100_000)]), 431, "a 100 KB header"),
    ]
    for raw, status, what in cases:
        assert_protocol_error(send(port, raw), status, what)
    assert exchange(port, "GET", "/health/live").status_code == 200


def test_upgrades_are_not_acted_on(server) -> None:
    """HTTP/1.1 only (§1.1): a WebSocket or h2c upgrade is served as the plain request it is,
    token check included, and the HTTP/2 preface is just an unknown request."""
    port = server.port
    websocket = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    h2c = [("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings"), ("HTTP2-Settings", "")]
    for upgrade in (websocket, h2c):
        assert_401(exchange(port, "GET", "/skills", upgrade), str(upgrade))
        answer = exchange(port, "GET", "/skills", [*upgrade, ("Authorization", BEARER)])
        assert answer.status_code == 200, (upgrade, answer)
        assert answer.json() == {"items": []}
        assert exchange(port, "GET", "/nope", upgrade).json() == NOT_FOUND
    answer = send(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert answer.status_code == 404
    assert answer.json() == NOT_FOUND


# --- methods ---------------------------------------------------------------------------------


def test_head_answers_like_get_without_a_body(server, client, protected) -> None:
    """http-api §1.1: HEAD wherever GET is, same status and headers (the token included)."""
    with httpx.Client(base_url=server.base_url, timeout=10) as anon:
        for method, template in protected:
            if method != "GET":
                continue
            path = concrete(template)
            for c in (anon, client):
                get, head = c.get(path), c.head(path)
                assert head.status_code == get.status_code, path
                assert head.content == b"", path
                for name in ("content-type", "cache-control", "www-authenticate"):
                    assert head.headers.get(name) == get.headers.get(name), (path, name)
                if get.status_code == 401:
                    assert head.headers["content-length"] == get.headers["content-length"]
    get, head = client.get("/runtime/status"), client.head("/runtime/status")
    assert head.headers["content-length"] == get.headers["content-length"] != "0"


@pytest.mark.parametrize("method", ["OPTIONS", "PROPFIND", "TRACE", "PATCH", "FOO"])
def test_other_methods_are_405_with_allow(server, routes, method) -> None:
    """§1.1, §1.4: a method not listed for a known path → 405 JSON with ``Allow``, before the
    token is checked. No CORS: OPTIONS is a method like the others (decided in §1.1)."""
    methods: dict[str, set[str]] = {}
    for route_method, template, _ in routes:
        methods.setdefault(concrete(template), set()).add(route_method)
    with httpx.Client(base_url=server.base_url, timeout=10) as anon:
        for path, listed in methods.items():
            if method in listed:
                continue
            r = anon.request(method, path)
            assert r.status_code == 405, (method, path, r.status_code)
            assert r.json() == {"error": "method not allowed"}
            assert r.headers["content-type"] == JSON
            allow = {m.strip() for m in r.headers["allow"].split(",")}
            assert method not in allow, path
            assert ("HEAD" in allow) is ("GET" in allow), (path, allow)
            assert listed <= allow, (path, listed, allow)
            assert "access-control-allow-origin" not in r.headers


# --- bodies ----------------------------------------------------------------------------------


def push_head(
    port: int, framing: Sequence[Header], *, auth: bool = True, close: bool = True
) -> bytes:
    """The head of a ``POST /events/push`` with the given body framing."""
    headers: list[Header] = [("Content-Type", "application/json"), *framing]
    if auth:
        headers.append(("Authorization", BEARER))
    return head_bytes("POST", "/events/push", port, headers, close=close)


def push_errors(client: httpx.Client) -> list[str]:
    items = client.get("/audit-log", params={"action": "event.push", "limit": 1000}).json()
    return [i["detail"] for i in items["items"]]


def test_malformed_framing_is_a_json_400_and_runs_nothing(server, client) -> None:
    """A chunked body that breaks the encoding, or a Content-Length that is not one number: 400
    JSON, the connection closed, the handler never run (no audit record)."""
    port, audited = server.port, push_errors(client)
    chunked = [("Transfer-Encoding", "chunked")]
    cases = [
        (push_head(port, chunked) + b"zz\r\n{}\r\n0\r\n\r\n", 400, "a chunk size that is no hex"),
        (push_head(port, chunked) + b"2\r\n{}XX0\r\n\r\n", 400, "a chunk without its CRLF"),
        (push_head(port, chunked) + b"2\r\n{}\r\n-1\r\n\r\n", 400, "a negative chunk size"),
        (push_head(port, chunked, auth=False) + b"zz\r\n", 400, "no token and a bad chunk"),
        (push_head(port, [("Content-Length", "2"), ("Content-Length", "3")]), 400, "two lengths"),
        (push_head(port, [("Content-Length", "two")]), 400, "a length that is no number"),
        (push_head(port, [("Content-Length", "-1")]), 400, "a negative length"),
        (push_head(port, [("Transfer-Encoding", "gzip")]) + b"{}", 501, "an unknown coding"),
        (
            push_head(port, [("Content-Length", "5"), *chunked]) + b"0\r\n\r\n",
            400,
            "two framings at once",
        ),
    ]
    for raw, status, what in cases:
        assert_protocol_error(send(port, raw), status, what)
    assert push_errors(client) == audited
    assert client.get("/runtime/status").json()["status"] == "ready"


def test_an_answer_before_the_body_closes_the_connection_and_says_so(server) -> None:
    """A 401 (or 413) answered before the body has arrived leaves the connection unusable: the
    answer says ``Connection: close``, so a keep-alive client opens a new connection instead of
    writing its next request into a closing one (which failed as "Server disconnected")."""
    framing = [("Content-Length", "30")]
    raw = push_head(server.port, framing, auth=False, close=False)
    answer = send(server.port, raw)
    assert_401(answer, "a body not sent yet")
    assert answer.headers["connection"] == "close"
    with httpx.Client(base_url=server.base_url, timeout=10) as anon:
        for _ in range(100):
            assert_401(anon.post("/events/push", json={"source": "x"}), "a refused body")


def test_a_declared_length_over_the_limit_is_413_before_any_byte(server, client) -> None:
    """§1.5: the announced length alone decides; nothing of the body is waited for. (Bodies that
    grow past the limit while sent: test_serve_bodies.py.)"""
    limit = client.get("/config").json()["config"]["http"]["max_body_bytes"]
    framing = [("Content-Length", str(limit + 1))]
    started = time.monotonic()
    answer = send(server.port, push_head(server.port, framing))
    assert time.monotonic() - started < 1.0
    assert answer.status_code == 413
    assert answer.json() == {"error": f"request body too large (limit {limit} bytes)"}
    # The token is checked first (§1.4): no token, no 413.
    assert_401(send(server.port, push_head(server.port, framing, auth=False)), "")


async def slow_client(port: int, first: bytes, rest: bytes) -> tuple[float, bytes]:
    """Send ``first`` at once and ``rest`` one byte per 100 ms; the seconds until the server
    closed the connection and what it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(first)
    sender = asyncio.create_task(trickle(writer, rest, 0.1))
    try:
        received = await read_until_closed(reader)
    finally:
        sender.cancel()
        writer.close()
    return time.monotonic() - started, received


async def probe(base_url: str, stop: asyncio.Event) -> list[float]:
    """``/health/live`` and an authenticated ``/runtime/status`` every 100 ms: the latencies."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as c:
        while not stop.is_set():
            for path, headers in (
                ("/health/live", {}),
                ("/runtime/status", {"Authorization": BEARER}),
            ):
                started = time.monotonic()
                r = await c.get(path, headers=headers)
                latencies.append(time.monotonic() - started)
                assert r.status_code == 200, (path, r.text)
            await asyncio.sleep(0.1)
    return latencies


async def test_slow_clients_are_cut_off_without_holding_up_others(server, client) -> None:
    """20 clients trickle their heads and 20 their bodies (Content-Length, chunked, or a length
    announced and never sent): the heads are cut after ``HEAD_TIMEOUT_SEC`` without an answer,
    the bodies answered 408 JSON after ``BODY_GRACE_SEC``; meanwhile other clients' requests are
    answered at once. A client without the token gets its 401 before any body is waited for."""
    port, audited = server.port, len(push_errors(client))
    chunked = b"".join(b"1\r\n%c\r\n" % c for c in b'{"source": "slow", "type": "x"}')
    bodies = [
        *[([("Content-Length", "200")], b"{" + b" " * 199)] * 12,
        *[([("Transfer-Encoding", "chunked")], chunked)] * 6,
        *[([("Content-Length", "1000000")], b"")] * 2,  # announced, under the limit, never sent
    ]
    stop = asyncio.Event()
    prober = asyncio.create_task(probe(server.base_url, stop))
    started = time.monotonic()
    unauthenticated = await asyncio.wait_for(
        asyncio.to_thread(send, port, push_head(port, [("Content-Length", "100")], auth=False)),
        timeout=2,
    )
    line, header = b"GET /runtime/status HTTP/1.1\r\n", b"X-Slow: " + b"a" * 1000
    heads = [slow_client(port, line, header) for _ in range(20)]
    slow = [slow_client(port, push_head(port, framing), body) for framing, body in bodies]
    results = await asyncio.gather(*heads, *slow)
    stop.set()
    latencies = await prober

    assert_401(unauthenticated, "a body without the token")
    for elapsed, received in results[:20]:
        assert received == b"", received[:200]
        assert HEAD_TIMEOUT_SEC - 0.5 < elapsed < HEAD_TIMEOUT_SEC + 3, elapsed
    for elapsed, received in results[20:]:
        reply = answer(received)
        assert reply.status_code == 408, received[:300]
        assert reply.json() == SLOW_BODY
        assert reply.headers["connection"] == "close"
        assert BODY_GRACE_SEC - 0.5 < elapsed < BODY_GRACE_SEC + 3, elapsed
    assert time.monotonic() - started < BODY_GRACE_SEC + 5
    assert len(latencies) >= 40, len(latencies)  # the probes ran all along
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    # Each timed-out request is audited once, as any failed request (§1.8).
    assert push_errors(client)[: len(bodies)] == [SLOW_BODY["error"]] * len(bodies)
    assert len(push_errors(client)) == audited + len(bodies)
