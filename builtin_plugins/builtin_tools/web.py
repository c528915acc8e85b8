"""The ``http`` tool: one HTTP request with httpx (http-api §18.1).

``timeout_ms`` limits the whole exchange. Redirects are followed; the body is read up to
:data:`BODY_MAX` bytes and decoded with the response's charset (UTF-8 when none, invalid bytes
replaced); ``json`` is the parsed body, or ``null`` when it is empty, not JSON or was cut.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from typing import Any

import httpx

from sdk import ToolContext, ToolError

__all__ = ["BODY_MAX", "request"]

#: The response body is cut to this many bytes (the rest is not downloaded).
BODY_MAX = 1024 * 1024


async def request(args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
    """``http``: send the request and answer ``{"ok", "status", "headers", "body", "json"}``."""
    body = args.get("body")
    seconds = args["timeout_ms"] / 1000
    try:
        async with (
            asyncio.timeout(seconds),  # the whole exchange; httpx's timeout is per operation
            httpx.AsyncClient(
                timeout=seconds, follow_redirects=True, verify=await asyncio.to_thread(_tls)
            ) as client,
            client.stream(
                args["method"],
                args["url"],
                headers=args["headers"],
                content=None if body is None else body.encode("utf-8"),
            ) as response,
        ):
            data, cut = await _read(response)
    except (TimeoutError, httpx.TimeoutException):
        raise ToolError(f"http request timed out after {args['timeout_ms']} ms") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ToolError(f"http request failed: {type(exc).__name__}: {exc}") from None
    text = data.decode(response.encoding or "utf-8", errors="replace")
    return {
        "ok": 200 <= response.status_code < 300,
        "status": response.status_code,
        "headers": dict(response.headers.items()),
        "body": text,
        "json": None if cut else _json(text),
    }


async def _read(response: httpx.Response) -> tuple[bytes, bool]:
    """The first :data:`BODY_MAX` bytes of the body, and whether there was more."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > BODY_MAX:
            return bytes(data[:BODY_MAX]), True
    return bytes(data), False


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS context, built once (loading the CA bundle takes ~0.1 s)."""
    return httpx.create_ssl_context()


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        return None
