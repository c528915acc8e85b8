"""The kernel's ids and clock are the SDK's (``sdk.ids``), shared with plugins."""

from sdk.ids import now_ms, uuid7

__all__ = ["now_ms", "uuid7"]
