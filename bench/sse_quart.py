"""The anchor of ``bench/sse_lag.py``: a minimal Quart Server-Sent Events app, served exactly like
``bench/bare_quart.py`` (``hypercorn.asyncio.serve`` in ``asyncio.run``, no access log, graceful
stop on SIGINT/SIGTERM).

Routes (the token, when given, is checked like ``bare_quart.py`` checks it: ``Authorization:
Bearer``, else ``x-aman-token``, ``hmac.compare_digest``; 401 JSON otherwise):

- ``GET /events/stream``: one bounded ``asyncio.Queue`` (256 frames, like aman's
  ``sse.client_buffer``; a full queue drops its oldest frame) per client; the response body is an
  async generator that yields ``: connected`` at once and then every frame taken from the queue,
  one frame per write. ``text/event-stream``, ``Cache-Control: no-store``.
- ``POST /publish``: the JSON body of aman's ``/events/push`` (``source``, ``event_type``,
  ``payload``); builds the event (uuid4 id, source, type, millisecond timestamp, payload), formats
  one ``event: event:processed`` frame with an ``id:`` line and the event as one line of JSON, and
  ``put_nowait`` s it into every client's queue; answers ``{"id", "status": "queued"}``. Nothing
  is stored.
- ``GET /health/ready``: public, ``{"status": "ready", "phase": 5}``.

Usage: ``python bench/sse_quart.py --bind 127.0.0.1:9192 --token T``
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from bare_quart import _serve
from quart import Quart, Response, request

BUFFER = 256


def create_app(token: str) -> Quart:
    app = Quart("sse-anchor")
    app.config["RESPONSE_TIMEOUT"] = None  # streams stay open
    expected = token.encode()
    clients: set[asyncio.Queue[bytes]] = set()

    def authorized() -> bool:
        if not token:
            return True
        authorization = (request.headers.get("Authorization") or "").strip()
        if authorization.startswith("Bearer "):
            presented = authorization[len("Bearer ") :]
        else:
            presented = request.headers.get("x-aman-token", "")
        return hmac.compare_digest(presented.encode(), expected)

    def unauthorized() -> Any:
        return {"error": "missing or invalid API token"}, 401, {"Cache-Control": "no-store"}

    @app.get("/events/stream")
    async def stream() -> Any:
        if not authorized():
            return unauthorized()
        queue: asyncio.Queue[bytes] = asyncio.Queue(BUFFER)
        clients.add(queue)

        async def frames() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                while True:
                    yield await queue.get()
            finally:
                clients.discard(queue)

        return Response(
            frames(),
            content_type="text/event-stream; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )

    @app.post("/publish")
    async def publish() -> Any:
        if not authorized():
            return unauthorized()
        body = await request.get_json()
        event_id = str(uuid.uuid4())
        event = {
            "id": event_id,
            "source": body["source"],
            "event_type": body["event_type"],
            "timestamp": time.time_ns() // 1_000_000,
            "payload": body.get("payload"),
        }
        data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        frame = f"event: event:processed\nid: {event_id}\ndata: {data}\n\n".encode()
        for queue in clients:
            if queue.full():
                queue.get_nowait()  # drop the oldest frame
            queue.put_nowait(frame)
        return {"id": event_id, "status": "queued"}, 200, {"Cache-Control": "no-store"}

    @app.get("/health/ready")
    async def ready() -> Any:
        return {"status": "ready", "phase": 5}, 200, {"Cache-Control": "no-store"}

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bind", default="127.0.0.1:9192")
    parser.add_argument("--token", default="")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr, level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(create_app(args.token), args.bind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
