"""Token, operator and confirmation headers (http-api §1.2, §1.3; contract D5, D6)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

__all__ = ["confirmed", "operator_from", "token_ok"]


def token_ok(headers: Mapping[str, str], configured: str, query_token: str | None = None) -> bool:
    """Whether the request presents the configured token; always true when none is configured.

    The ``Authorization`` value is trimmed; only the case-sensitive ``Bearer `` scheme counts.
    ``x-aman-token`` is consulted only when no Bearer value was found, so a wrong Bearer value
    fails even beside a right ``x-aman-token``.
    """
    if not configured:
        return True
    authorization = (headers.get("authorization") or "").strip()
    if authorization.startswith("Bearer "):
        presented: str | None = authorization[len("Bearer ") :]
    else:
        presented = headers.get("x-aman-token", query_token)
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), configured.encode())


def operator_from(headers: Mapping[str, str]) -> str:
    """``x-aman-operator``, trimmed and cut to 128 characters; ``api`` when absent or invalid."""
    value = (headers.get("x-aman-operator") or "").strip()
    if not value or any(not (0x20 <= ord(c) <= 0x7E) for c in value):
        return "api"
    return value[:128].rstrip()


def confirmed(headers: Mapping[str, str]) -> bool:
    return (headers.get("x-aman-confirm") or "").strip().lower() == "yes"
