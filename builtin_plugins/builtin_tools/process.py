"""The ``exec`` tool: run a command as a child process (http-api §18.1).

With ``args`` empty, ``command`` is a shell command line run by ``/bin/sh -c`` (so the hardline
rules of §18.2 see the whole line); with ``args``, ``command`` is the program, executed directly
with those arguments (no shell). Every child starts in a new session, so it leads its own process
group: a timeout or a cancelled call kills the whole group, and whatever the command left running
in its group when it exits is killed too (``detach`` is the way to leave something running).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from sdk import ToolContext, ToolError

from .common import os_errors, resolve

__all__ = ["OUTPUT_MAX", "run"]

#: ``stdout`` and ``stderr`` are each cut to this many bytes (http-api §18.1).
OUTPUT_MAX = 64 * 1024
_CHUNK = 64 * 1024
_POLL_SEC = 0.01
#: How long the pipes may stay open once the process group is dead: a child that left the group
#: (``setsid``) and still holds them loses the rest of its output.
_PIPE_GRACE = 1.0


async def run(args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
    """``exec``: run the command and wait for it, or start it detached and answer at once."""
    argv = _argv(args["command"], args["args"])
    cwd = _cwd(tc, args.get("cwd"))
    if args["detach"]:
        return _detach(argv, cwd)
    with os_errors(argv[0], "command"):
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    tc.processes.add(proc)
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = bytearray(), bytearray()
    readers = asyncio.gather(_drain(proc.stdout, stdout), _drain(proc.stderr, stderr))
    try:
        timed_out = not await _exited(proc, args["timeout_ms"] / 1000)
    finally:
        _kill_group(proc.pid)  # the command on timeout or cancellation, else what it left behind
        await _exited(proc)
        tc.processes.discard(proc)
        await asyncio.wait([readers], timeout=_PIPE_GRACE)  # what is left in the pipes
        readers.cancel()
    status = proc.returncode
    return {
        "ok": status == 0 and not timed_out,
        "status": status,
        "stdout": stdout.decode("utf-8", errors="replace"),
        "stderr": stderr.decode("utf-8", errors="replace"),
        "timed_out": timed_out,
    }


def _argv(command: str, args: list[str]) -> list[str]:
    return [command, *args] if args else ["/bin/sh", "-c", command]


def _cwd(tc: ToolContext, cwd: str | None) -> Path:
    path = tc.workspace if cwd is None else resolve(tc, cwd)
    if not path.is_dir():
        raise ToolError(f"directory not found: {path}")
    return path


def _detach(argv: list[str], cwd: Path) -> dict[str, Any]:
    """Start the command in its own session with no pipes and answer without waiting; a daemon
    thread reaps it when it ends (it is not in ``tc.processes``: it outlives the call)."""
    with os_errors(argv[0], "command"):
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    threading.Thread(target=proc.wait, name=f"aman-exec-reap-{proc.pid}", daemon=True).start()
    return {"ok": True, "pid": proc.pid, "detached": True}


async def _exited(proc: asyncio.subprocess.Process, timeout: float = math.inf) -> bool:
    """Whether the process exited within ``timeout`` seconds.

    Polls ``returncode``: on Python 3.11 ``Process.wait()`` also waits until the pipes close, which
    a background child (``sleep 60 &``) can hold off for as long as it runs.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.returncode is None:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_SEC)
    return True


async def _drain(stream: asyncio.StreamReader, kept: bytearray) -> None:
    """Read ``stream`` to its end into ``kept``, up to :data:`OUTPUT_MAX` bytes (the rest is read
    and dropped, so the child never blocks on a full pipe)."""
    while chunk := await stream.read(_CHUNK):
        kept += chunk[: OUTPUT_MAX - len(kept)]


def _kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (gone already is fine)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
