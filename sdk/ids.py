"""Identifiers and time (http-api §1.10): UUIDv7 for events, messages and records, xid for
workflow instances and chat sessions, and epoch milliseconds. In the SDK so that the kernel and every plugin use the same ones."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time

__all__ = ["now_ms", "uuid7", "xid"]

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


_MACHINE = hashlib.sha256(socket.gethostname().encode()).digest()[:3]
_xid_counter = [int.from_bytes(os.urandom(3), "big")]


def xid(now: float | None = None) -> str:
    """A new xid: 12 bytes (4 of Unix seconds, 3 of machine id, 2 of process id, 3 of a counter
    starting at a random value, big-endian) as 20 characters of base32hex (``0-9a-v``), so ids
    sort by creation time (to the second) as strings. ``now`` (Unix seconds) is for tests."""
    with _lock:
        _xid_counter[0] = (_xid_counter[0] + 1) & 0xFFFFFF
        count = _xid_counter[0]
    seconds = int(time.time() if now is None else now) & 0xFFFFFFFF
    raw = (
        seconds.to_bytes(4, "big")
        + _MACHINE
        + (os.getpid() & 0xFFFF).to_bytes(2, "big")
        + count.to_bytes(3, "big")
    )
    return base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()
