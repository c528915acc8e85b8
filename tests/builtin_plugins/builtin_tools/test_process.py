"""The ``exec`` tool on real child processes (http-api §18.1)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from builtin_plugins.builtin_tools.process import OUTPUT_MAX
from sdk import ToolError
from sdk.testing import wait_for


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_shell_command_output_and_exit_code(run):
    out = await run("exec", command="echo out; echo err >&2; exit 3")
    assert out == {
        "ok": False,
        "status": 3,
        "stdout": "out\n",
        "stderr": "err\n",
        "timed_out": False,
    }
    piped = await run("exec", command="printf 'b\\na\\n' | sort")
    assert (piped["ok"], piped["status"], piped["stdout"]) == (True, 0, "a\nb\n")


async def test_args_run_the_program_directly_without_a_shell(run):
    out = await run("exec", command="printf", args=["%s|", "$HOME", "a b", ";ls"])
    assert out["stdout"] == "$HOME|a b|;ls|" and out["ok"] is True
    with pytest.raises(ToolError, match=r"^command not found: no-such-program-x$"):
        await run("exec", command="no-such-program-x", args=["1"])


async def test_cwd_defaults_to_the_workspace_and_resolves_relative(run, workspace):
    (workspace / "sub").mkdir()
    assert (await run("exec", command="pwd"))["stdout"] == f"{workspace}\n"
    assert (await run("exec", command="pwd", cwd="sub"))["stdout"] == f"{workspace / 'sub'}\n"
    with pytest.raises(ToolError, match=r"^directory not found: "):
        await run("exec", command="pwd", cwd="nope")


async def test_timeout_kills_the_whole_process_group(run):
    out = await run("exec", command="sleep 30 & echo $!; wait", timeout_ms=300)
    assert (out["ok"], out["timed_out"], out["status"]) == (False, True, -signal.SIGKILL)
    grandchild = int(out["stdout"])
    await wait_for(lambda: not alive(grandchild))


async def test_what_the_command_leaves_in_its_group_is_killed_when_it_exits(run):
    out = await run("exec", command="sleep 30 & echo $!")
    assert (out["ok"], out["timed_out"], out["status"]) == (True, False, 0)
    await wait_for(lambda: not alive(int(out["stdout"])))


async def test_stdout_and_stderr_are_cut_to_64_kib(run):
    out = await run(
        "exec", command="head -c 200000 /dev/zero | tr '\\0' a; head -c 70000 /dev/zero >&2"
    )
    assert out["ok"] is True
    assert out["stdout"] == "a" * OUTPUT_MAX and len(out["stderr"]) == OUTPUT_MAX == 65536


async def test_cancellation_kills_the_group_and_empties_processes(run, tc, workspace):
    marker = workspace / "bg.pid"
    task = asyncio.create_task(run("exec", command="sleep 30 & echo $! > bg.pid; wait"))
    await wait_for(lambda: tc.processes and marker.exists() and marker.read_text().endswith("\n"))
    [proc] = tc.processes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tc.processes == set()
    assert proc.returncode == -signal.SIGKILL
    await wait_for(lambda: not alive(int(marker.read_text())))


async def test_detach_answers_at_once_with_a_pid_in_a_new_session(run, tc):
    out = await run("exec", command="sleep 30", detach=True)
    pid = out["pid"]
    try:
        assert out == {"ok": True, "pid": pid, "detached": True}
        assert alive(pid) and os.getsid(pid) == pid
        assert tc.processes == set()
    finally:
        os.killpg(pid, signal.SIGKILL)
    await wait_for(lambda: not alive(pid))
