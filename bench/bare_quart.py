"""The anchor of ``bench/http_overhead.py``: a bare Quart app on Hypercorn, served the way
``aman serve`` serves the kernel (``kernel/cli.py``): ``hypercorn.asyncio.serve`` in
``asyncio.run``, no access log, errors to a stdlib logger on stderr at INFO, graceful stop on
SIGINT/SIGTERM.

Routes:

- ``GET /runtime/status``: checks the bearer token (``Authorization: Bearer <t>``, else
  ``x-aman-token``) with ``hmac.compare_digest`` and answers the same small JSON object as aman's
  ``/runtime/status``, with ``Cache-Control: no-store``; 401 JSON otherwise.
- ``GET /health/ready``: public, ``{"status": "ready", "phase": 5}`` (what the start-to-ready
  measurement polls).

Usage: ``python bench/bare_quart.py --bind 127.0.0.1:9191 --token T``
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import signal
import sys
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, request

STATUS = {"phase": 5, "ready": True, "live": True, "status": "ready"}


def create_app(token: str) -> Quart:
    app = Quart("bare")
    expected = token.encode()

    @app.get("/runtime/status")
    async def status() -> Any:
        authorization = (request.headers.get("Authorization") or "").strip()
        if authorization.startswith("Bearer "):
            presented = authorization[len("Bearer ") :]
        else:
            presented = request.headers.get("x-aman-token", "")
        if not hmac.compare_digest(presented.encode(), expected):
            return (
                {"error": "missing or invalid API token"},
                401,
                {"WWW-Authenticate": 'Bearer realm="aman"', "Cache-Control": "no-store"},
            )
        return STATUS, 200, {"Cache-Control": "no-store"}

    @app.get("/health/ready")
    async def ready() -> Any:
        return {"status": "ready", "phase": 5}, 200, {"Cache-Control": "no-store"}

    return app


async def _serve(app: Quart, bind: str) -> None:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 5
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bind", default="127.0.0.1:9191")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr, level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(create_app(args.token), args.bind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
