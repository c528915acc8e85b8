"""Identifiers and time (http-api §1.10): UUIDv7 for events, messages and records, and epoch
milliseconds. In the SDK so that the kernel and every plugin use the same ones."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["now_ms", "uuid7"]

_lock = threading.Lock()
_last = [0, 0]  # last millisecond, counter within it


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def uuid7() -> str:
    """A UUIDv7 string, monotonic within this process (RFC 9562, method 1: 12-bit counter)."""
    entropy = int.from_bytes(os.urandom(10), "big")
    with _lock:
        ms = now_ms()
        if ms <= _last[0]:
            ms = _last[0]
            _last[1] += 1
            if _last[1] > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                _last[1] = 0
        else:
            _last[1] = entropy & 0x3FF  # a random start leaves room to count up
        _last[0] = ms
        counter = _last[1]
    rand = (entropy >> 16) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
