"""Errors a plugin raises; the kernel maps each class to one HTTP status (``kernel/errors.py``).

SDK errors carry a ``code`` (for logs and tests) and a human ``message``; they know nothing about
HTTP. Extra keyword arguments become documented extra fields of the JSON error body
(for example ``missing`` on a 422 from ``/plugin/install``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "Conflict",
    "Failure",
    "Forbidden",
    "Invalid",
    "NotFound",
    "SdkError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "Unrecoverable",
    "UnsupportedMediaType",
]


class SdkError(Exception):
    """Base of every error a plugin or the kernel raises on purpose."""

    code = "error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class Invalid(SdkError):
    """The input is malformed or out of range (400)."""

    code = "invalid"


class Unauthorized(SdkError):
    """Missing or wrong API token (401)."""

    code = "unauthorized"


class Forbidden(SdkError):
    """Refused by policy: a gate, a boundary, a disabled capability (403)."""

    code = "forbidden"


class NotFound(SdkError):
    """The route or the resource does not exist (404)."""

    code = "not_found"


class Conflict(SdkError):
    """Confirmation required, version conflict, invalid transition, already exists (409)."""

    code = "conflict"


class TooLarge(SdkError):
    """The request body is over its limit (413)."""

    code = "too_large"


class UnsupportedMediaType(SdkError):
    """The request body has the wrong media type (415)."""

    code = "unsupported_media_type"


class Unrecoverable(SdkError):
    """Well-formed, but can never succeed as it is (422)."""

    code = "unrecoverable"


class Failure(SdkError):
    """The operation failed on the server's side for a reason worth telling the client (500),
    such as a file that cannot be written. Unexpected exceptions are 500s too, but with a
    reference id instead of their message."""

    code = "failure"


class Unavailable(SdkError):
    """Not ready, draining, stopped, refused under backpressure, or disabled (503).

    :param retry_after: seconds for the ``Retry-After`` header, or ``None`` for no header.
    """

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int | None = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after = retry_after


class ConfigError(SdkError):
    """The configuration is invalid (start-up exits with code 2; ``/config/set`` answers 400)."""

    code = "config"
