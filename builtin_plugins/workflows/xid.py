"""xid identifiers (http-api §1.10): 12 bytes written as 20 characters of base32hex (``0-9a-v``).

The bytes are 4 of Unix seconds, 3 of machine id, 2 of process id and 3 of a counter that starts
at a random value, all big-endian, so ids sort by creation time (to the second) as strings.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time

__all__ = ["xid"]

_MACHINE = hashlib.sha256(socket.gethostname().encode()).digest()[:3]
_lock = threading.Lock()
_counter = [int.from_bytes(os.urandom(3), "big")]


def xid(now: float | None = None) -> str:
    """A new xid; ``now`` (Unix seconds) is for tests."""
    with _lock:
        _counter[0] = (_counter[0] + 1) & 0xFFFFFF
        count = _counter[0]
    seconds = int(time.time() if now is None else now) & 0xFFFFFFFF
    raw = (
        seconds.to_bytes(4, "big")
        + _MACHINE
        + (os.getpid() & 0xFFFF).to_bytes(2, "big")
        + count.to_bytes(3, "big")
    )
    return base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()
