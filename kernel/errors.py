"""The one table from exceptions to HTTP statuses, and the JSON error body (contract D4)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from werkzeug.exceptions import HTTPException

import sdk

__all__ = ["STATUS", "error_body"]

log = logging.getLogger("aman.http")

STATUS: dict[type[Exception], int] = {
    sdk.Invalid: 400,
    sdk.ConfigError: 400,
    sdk.Unauthorized: 401,
    sdk.Forbidden: 403,
    sdk.NotFound: 404,
    sdk.Conflict: 409,
    sdk.TooLarge: 413,
    sdk.UnsupportedMediaType: 415,
    sdk.Unrecoverable: 422,
    sdk.Failure: 500,
    sdk.Unavailable: 503,
}

# werkzeug's own errors (raised by routing) in the API's words (http-api §1.4).
_HTTP_MESSAGES = {404: "not found", 405: "method not allowed"}


def error_body(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and extra headers for an exception.

    SDK errors map by their class (the first match along the MRO); werkzeug HTTP errors keep their
    status; anything else is a 500 whose reference id is logged with the traceback.
    """
    if isinstance(exc, sdk.SdkError):
        status = next(STATUS[c] for c in type(exc).__mro__ if c in STATUS)
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="aman"'
        if isinstance(exc, sdk.Unavailable) and exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return status, {"error": exc.message, **exc.extra}, headers
    if isinstance(exc, HTTPException) and exc.code is not None:
        headers = {}
        valid = getattr(exc, "valid_methods", None)
        if exc.code == 405 and valid:
            headers["Allow"] = ", ".join(sorted(valid))
        message = _HTTP_MESSAGES.get(exc.code, (exc.name or "error").lower())
        return exc.code, {"error": message}, headers
    ref = str(uuid.uuid4())
    log.error("internal error (ref %s)", ref, exc_info=exc)
    return 500, {"error": f"internal error (ref {ref})"}, {}
