"""Request bodies over real sockets: size limit for Content-Length and chunked uploads, JSON
syntax and media type (contract D16; http-api §1.5)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Iterator

import pytest

pytestmark = pytest.mark.server

LIMIT = 4096
TOO_LARGE = {"error": f"request body too large (limit {LIMIT} bytes)"}
HEADERS = {"x-aman-confirm": "yes", "content-type": "application/json"}


@pytest.fixture(scope="module")
def server(module_aman, tmp_path_factory: pytest.TempPathFactory):
    """One server for the module (the tests only add audit records and set one live key),
    started from a ``./aman.toml`` with a small body limit."""
    cwd = tmp_path_factory.mktemp("bodies")
    (cwd / "aman.toml").write_text(f"[http]\nmax_body_bytes = {LIMIT}\n")
    return module_aman(cwd=cwd, runtime_dir=cwd / "runtime")


def audit_count(client) -> int:
    return len(
        client.get("/audit-log", params={"action": "config.set", "limit": 1000}).json()["items"]
    )


def body_of_size(size: int) -> bytes:
    """A valid ``/config/set`` body of exactly ``size`` bytes (padding in an ignored field)."""
    head = b'{"changes": {"event_bus.max_queue_size": 2048}, "pad": "'
    tail = b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        part = min(size, total - sent)
        sent += part
        yield b"x" * part


def raw_exchange(
    port: int, head: bytes, parts: Iterable[bytes] = (), timeout: float = 5.0
) -> bytes:
    """Send ``head`` and ``parts`` on a fresh socket (never finishing the body) and read the
    response until the server closes or the headers and the announced body have arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for part in parts:
            try:
                sock.sendall(part)
            except OSError:  # the server answered and closed: stop sending
                break
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                headers, _, body = data.partition(b"\r\n\r\n")
                for line in headers.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and len(body) >= int(value):
                        return data
        return data


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    headers, _, body = raw.partition(b"\r\n\r\n")
    lines = headers.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    return status, fields, body


def test_content_length_over_the_limit_is_413(server) -> None:
    with server.client() as c:
        r = c.post("/config/set", headers=HEADERS, content=body_of_size(LIMIT + 1))
        assert r.status_code == 413
        assert r.json() == TOO_LARGE
        assert r.headers["content-type"] == "application/json; charset=utf-8"
        assert r.headers["cache-control"] == "no-store"
        assert r.request.headers["content-length"] == str(LIMIT + 1)

        # Exactly the limit is accepted.
        r = c.post("/config/set", headers=HEADERS, content=body_of_size(LIMIT))
        assert r.status_code == 200, r.text
        assert r.json()["applied"] == ["event_bus.max_queue_size"]

        # The server goes on serving (large uploads: test_server_stops_reading_at_the_limit).
        assert c.get("/health/ready").status_code == 200


def test_chunked_upload_over_the_limit_is_413(server) -> None:
    with server.client() as c:
        r = c.post("/config/set", headers=HEADERS, content=chunks(LIMIT + 1))
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.request.headers
        assert r.status_code == 413
        assert r.json() == TOO_LARGE

        # A chunked body within the limit is read whole.
        body = body_of_size(LIMIT)
        r = c.post("/config/set", headers=HEADERS, content=iter([body[:1000], body[1000:]]))
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 200, r.text

        assert c.get("/health/ready").status_code == 200
        assert c.get("/runtime/status").json()["status"] == "ready"


def test_server_stops_reading_at_the_limit(server) -> None:
    """The 413 comes while the upload is still going: the server does not wait for the end of a
    body it will refuse (http-api §1.5: "the server stops reading at the limit").

    The client sends only a little past the limit and then waits for the answer. (A client that
    keeps pushing megabytes may see a connection reset instead of the 413: the server closes the
    connection with request data still unread, and Hypercorn does no lingering close.)"""
    request = (
        f"POST /config/set HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "x-aman-confirm: yes\r\nContent-Type: application/json\r\n"
    ).encode()

    # Announces 100 MB, sends 8 KiB: answered at once.
    raw = raw_exchange(server.port, request + b"Content-Length: 100000000\r\n\r\n", chunks(8192))
    status, headers, body = parse(raw)
    assert status == 413
    assert json.loads(body) == TOO_LARGE
    assert headers["content-type"] == "application/json; charset=utf-8"

    # A chunked upload that never sends its final chunk: answered once the limit is passed.
    def never_ending() -> Iterator[bytes]:
        for part in chunks(LIMIT + 2048, 512):
            yield b"%x\r\n%s\r\n" % (len(part), part)

    raw = raw_exchange(server.port, request + b"Transfer-Encoding: chunked\r\n\r\n", never_ending())
    status, headers, body = parse(raw)
    assert status == 413
    assert json.loads(body) == TOO_LARGE

    with server.client() as c:
        assert c.get("/health/ready").status_code == 200
        audit = c.get("/audit-log", params={"action": "config.set", "limit": 2}).json()["items"]
        assert [(i["outcome"], i["detail"]) for i in audit] == [("error", TOO_LARGE["error"])] * 2


def test_malformed_json_and_wrong_media_type(server) -> None:
    with server.client() as c:
        r = c.post("/config/set", headers=HEADERS, content=b'{"changes": ')
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid JSON body: ")

        r = c.post(
            "/config/set",
            headers=HEADERS,
            content=b'{"changes": {"event_bus.max_queue_size": NaN}}',
        )
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid JSON body: ")

        r = c.post("/config/set", headers=HEADERS, content=b"\xff\xfe{}")
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid JSON body: ")

        r = c.post("/config/set", headers=HEADERS, content=b"[1, 2]")
        assert r.status_code == 400
        assert r.json() == {"error": "request body must be a JSON object"}

        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
        ):
            r = c.post(
                "/config/set",
                headers={"x-aman-confirm": "yes", "content-type": content_type},
                content=b'{"changes": {"event_bus.max_queue_size": 2048}}',
            )
            assert r.status_code == 415, content_type
            assert r.json() == {"error": "unsupported content type; expected application/json"}

        # Parameters of application/json are allowed.
        r = c.post(
            "/config/set",
            headers={"x-aman-confirm": "yes", "content-type": "application/json; charset=utf-8"},
            content=b'{"changes": {"event_bus.max_queue_size": 2048}}',
        )
        assert r.status_code == 200, r.text

        # An empty body is {} whatever the content type: here a missing 'changes'.
        r = c.post("/config/set", headers={"x-aman-confirm": "yes", "content-type": "text/plain"})
        assert r.status_code == 400
        assert r.json() == {"error": "field 'changes' must be a non-empty object"}

        # The order of checks: confirmation (409) before the body (415/413).
        r = c.post(
            "/config/set", headers={"content-type": "text/plain"}, content=b"x" * (LIMIT * 2)
        )
        assert r.status_code == 409
        assert r.json() == {"error": "confirmation required"}

        assert c.get("/config").json()["config"]["event_bus"]["max_queue_size"] == 2048


def test_rejected_config_set_changes_nothing(server) -> None:
    config_file = server.cwd / "aman.toml"
    with server.client() as c:
        before, file_before, audited = (
            c.get("/config").json(),
            config_file.read_bytes(),
            audit_count(c),
        )
        r = c.post(
            "/config/set",
            headers=HEADERS,
            json={"changes": {"event_bus.max_queue_size": 1024, "event_bus.no_such_key": 1}},
        )
        assert r.status_code == 400
        assert r.json() == {"error": "unknown config key: event_bus.no_such_key"}
        r = c.post(
            "/config/set", headers=HEADERS, json={"changes": {"event_bus.max_queue_size": "big"}}
        )
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid value for event_bus.max_queue_size: ")
        r = c.post(
            "/config/set", headers=HEADERS, json={"changes": {"event_bus.max_queue_size": 8}}
        )
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid value for event_bus.max_queue_size: ")
        r = c.post("/config/set", headers=HEADERS, json={"changed_fields": ["x"]})
        assert r.status_code == 400
        assert r.json() == {
            "error": "field 'changes' must be a non-empty object ('changed_fields' is not supported)"
        }
        r = c.post(
            "/config/set", headers=HEADERS, json={"changes": {"plugins.max_member_bytes": 2**30}}
        )
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid configuration: ")
        assert c.get("/config").json() == before
        assert config_file.read_bytes() == file_before
        items = c.get("/audit-log", params={"action": "config.set", "limit": 5}).json()["items"]
        assert [i["outcome"] for i in items] == ["error"] * 5
        assert audit_count(c) == audited + 5
