"""The anchor of ``bench/plugin_install.py``: a minimal Quart app on Hypercorn, served exactly
like ``bench/bare_quart.py`` (and so like ``aman serve``), that receives an archive and extracts
it with :mod:`tarfile` alone.

Routes:

- ``POST /upload``: checks the bearer token with ``hmac.compare_digest`` (401 JSON otherwise),
  reads the raw body, extracts it with ``tarfile.open(fileobj=..., mode="r:gz")
  .extractall(tmp, filter="data")`` into a fresh temporary directory, removes that directory and
  answers ``{"members": n, "bytes": len(body)}``; 400 JSON for an archive tarfile refuses.
- ``GET /health/ready``: public, ``{"status": "ready", "phase": 5}``.

Usage: ``python bench/bare_upload.py --bind 127.0.0.1:9192 --token T``
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import io
import logging
import shutil
import sys
import tarfile
import tempfile
from typing import Any

from bare_quart import _serve
from quart import Quart, request


def create_app(token: str) -> Quart:
    app = Quart("bare-upload")
    expected = token.encode()

    @app.post("/upload")
    async def upload() -> Any:
        authorization = (request.headers.get("Authorization") or "").strip()
        presented = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
        if not hmac.compare_digest(presented.encode(), expected):
            return {"error": "missing or invalid API token"}, 401, {"Cache-Control": "no-store"}
        body = await request.get_data(cache=False)
        tmp = tempfile.mkdtemp(prefix="bare-upload-")
        try:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")
                members = len(tar.getmembers())
        except (tarfile.TarError, OSError, EOFError) as exc:
            return {"error": str(exc)}, 400, {"Cache-Control": "no-store"}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"members": members, "bytes": len(body)}, 200, {"Cache-Control": "no-store"}

    @app.get("/health/ready")
    async def ready() -> Any:
        return {"status": "ready", "phase": 5}, 200, {"Cache-Control": "no-store"}

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bind", default="127.0.0.1:9192")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr, level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(create_app(args.token), args.bind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
