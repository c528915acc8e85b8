"""Token, operator and confirmation headers (http-api §1.2, §1.3; contract D5, D6)."""

from __future__ import annotations

from collections.abc import Mapping

from sdk.auth import presented_token, token_matches

__all__ = ["confirmed", "operator_from", "token_ok"]


def token_ok(headers: Mapping[str, str], configured: str, query_token: str | None = None) -> bool:
    """Whether the request presents the configured token; always true when none is configured.

    The rules of which header counts are :func:`sdk.auth.presented_token`'s.
    """
    if not configured:
        return True
    presented = presented_token(headers, query_token)
    return presented is not None and token_matches(presented, configured)


def operator_from(headers: Mapping[str, str]) -> str:
    """``x-aman-operator``, trimmed and cut to 128 characters; ``api`` when absent or invalid."""
    value = (headers.get("x-aman-operator") or "").strip()
    if not value or any(not (0x20 <= ord(c) <= 0x7E) for c in value):
        return "api"
    return value[:128].rstrip()


def confirmed(headers: Mapping[str, str]) -> bool:
    return (headers.get("x-aman-confirm") or "").strip().lower() == "yes"
