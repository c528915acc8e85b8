"""The API token rules of http-api §1.2 (contract D5), for the kernel's router and for plugins
that check the token themselves (the public ``/events/stream``)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

__all__ = ["presented_token", "token_matches"]


def presented_token(headers: Mapping[str, str], query_token: str | None = None) -> str | None:
    """The token a request presents, or None. ``headers`` have lower-case names and a field sent
    more than once combined into one value (RFC 9110 §5.3), as the kernel's router passes them:
    two ``Authorization`` headers then make one value that is no valid token.

    The ``Authorization`` value is trimmed; only the case-sensitive ``Bearer `` scheme counts.
    ``x-aman-token`` (then ``query_token``) is consulted only when no Bearer value was found, so a
    wrong Bearer value fails even beside a right ``x-aman-token``.
    """
    authorization = (headers.get("authorization") or "").strip()
    if authorization.startswith("Bearer "):
        return authorization[len("Bearer ") :]
    return headers.get("x-aman-token", query_token)


def token_matches(presented: str, configured: str) -> bool:
    """Compared in constant time on UTF-8 bytes."""
    return hmac.compare_digest(presented.encode(), configured.encode())
