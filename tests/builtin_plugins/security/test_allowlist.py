"""The path and network allowlist (http-api §18.2), with real files and symlinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builtin_plugins.security.allowlist import PATH_ARGUMENTS, Allowlist
from sdk import ToolDenial, ToolRequest


@pytest.fixture(name="tree")
def _tree(tmp_path: Path) -> Path:
    """``ws/`` (the workspace, with ``sub/``), ``outside/secret.txt`` and ``extra/``."""
    (tmp_path / "ws" / "sub").mkdir(parents=True)
    (tmp_path / "ws" / "sub" / "a.txt").write_text("a")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("s")
    (tmp_path / "extra").mkdir()
    return tmp_path


def request(
    tree: Path, tool: str = "read", workspace: Path | None = None, **args: Any
) -> ToolRequest:
    return ToolRequest(tool=tool, args=args, workspace=workspace or tree / "ws")


def outside(raw: str, name: str = "path") -> ToolDenial:
    return ToolDenial(
        block_type="path_denied",
        reason=f"path '{raw}' ({name}) is outside the workspace and the allowed paths",
    )


@pytest.mark.parametrize(
    "raw", ["sub/a.txt", "new/file.txt", ".", "sub/../sub/a.txt", "{ws}/sub/a.txt"]
)
def test_paths_inside_the_workspace_pass(tree, raw):
    raw = raw.format(ws=tree / "ws")
    assert Allowlist().check(request(tree, path=raw)) is None


@pytest.mark.parametrize(
    "raw", ["../outside/secret.txt", "sub/../../outside", "/etc/hosts", "{root}/ws-evil/x", ".."]
)
def test_paths_outside_the_workspace_are_denied(tree, raw):
    raw = raw.format(root=tree)
    assert Allowlist().check(request(tree, path=raw)) == outside(raw)


def test_a_symlink_out_of_the_workspace_is_denied(tree):
    (tree / "ws" / "link").symlink_to(tree / "outside")
    (tree / "ws" / "file-link").symlink_to(tree / "outside" / "secret.txt")
    for raw in ("link/secret.txt", "link", "file-link"):
        assert Allowlist().check(request(tree, path=raw)) == outside(raw)


def test_a_symlink_inside_the_workspace_passes(tree):
    (tree / "ws" / "alias").symlink_to(tree / "ws" / "sub")
    assert Allowlist().check(request(tree, path="alias/a.txt")) is None


def test_a_symlinked_workspace_is_compared_resolved(tree):
    (tree / "ws-link").symlink_to(tree / "ws")
    assert Allowlist().check(request(tree, workspace=tree / "ws-link", path="sub/a.txt")) is None
    assert (
        Allowlist().check(request(tree, workspace=tree / "ws-link", path=str(tree / "ws" / "sub")))
        is None
    )


def test_allowed_paths_extend_the_workspace(tree):
    (tree / "extra-link").symlink_to(tree / "extra")
    allow = Allowlist(allowed_paths=(tree / "outside", tree / "extra-link"))
    assert allow.check(request(tree, path=str(tree / "outside" / "secret.txt"))) is None
    assert allow.check(request(tree, path="../extra/new.txt")) is None
    raw = str(tree / "elsewhere")
    assert allow.check(request(tree, path=raw)) == outside(raw)


def test_the_path_arguments_are_those_of_the_spec():
    assert PATH_ARGUMENTS == ("path", "file_path", "from", "to", "cwd", "base", "db_path")


@pytest.mark.parametrize("name", PATH_ARGUMENTS)
def test_every_path_argument_is_checked(tree, name):
    assert Allowlist().check(request(tree, tool="any_tool", **{name: "/etc"})) == outside(
        "/etc", name
    )
    assert Allowlist().check(request(tree, tool="any_tool", **{name: "sub"})) is None


def test_other_arguments_and_values_are_not_paths(tree):
    allow = Allowlist()
    assert allow.check(request(tree, tool="write", content="/etc/passwd", target="/etc")) is None
    assert allow.check(request(tree, path=None, cwd=["/etc"])) is None


def test_an_unresolvable_path_is_denied(tree):
    (tree / "ws" / "loop").symlink_to(tree / "ws" / "loop")
    denial = Allowlist().check(request(tree, path="loop/x"))
    assert denial == ToolDenial(
        block_type="path_denied", reason="path 'loop/x' (path) cannot be resolved"
    )


def test_network_switch_applies_to_http_only(tree):
    off = Allowlist(network_enabled=False)
    assert off.check(request(tree, tool="http", url="https://example.org")) == ToolDenial(
        block_type="path_denied",
        reason="network access is disabled (security.network_enabled is false)",
    )
    assert off.check(request(tree, tool="read", path="sub/a.txt")) is None
    assert Allowlist().check(request(tree, tool="http", url="https://example.org")) is None


def exec_denied(program: str) -> ToolDenial:
    return ToolDenial(
        block_type="path_denied", reason=f"command '{program}' is not in security.exec_allowlist"
    )


@pytest.mark.parametrize(
    ("command", "args", "denied"),
    [
        ("ls", ["-la"], None),
        ("/usr/bin/git", ["status"], None),
        ("rm", ["x"], "rm"),
        ("bash", ["-c", "ls"], "bash"),
        ("", [], ""),
        # no args: `command` is a shell line, and every program of it must be allowed
        ("ls -la", [], None),
        ("ls | git log > out.txt 2>&1", [], None),
        ("echo $(ls)", [], None),
        ("ls; rm -rf x", [], "rm"),
        ("ls && curl http://x", [], "curl"),
        ("echo `curl http://x`", [], "curl"),
        ("sudo ls", [], "sudo"),
        ("sh -c 'ls'", [], "sh"),
        ("/bin/ls /tmp", [], None),
    ],
)
def test_exec_allowlist_names_the_programs_exec_may_run(tree, command, args, denied):
    allow = Allowlist(exec_allowlist=("ls", "git", "echo"))
    expected = None if denied is None else exec_denied(denied)
    assert allow.check(request(tree, tool="exec", command=command, args=args)) == expected


def test_an_empty_exec_allowlist_allows_any_program(tree):
    assert Allowlist().check(request(tree, tool="exec", command="rm", args=["x"])) is None
    assert Allowlist().check(request(tree, tool="exec", command="curl x | sh")) is None


def test_exec_cwd_is_a_path(tree):
    allow = Allowlist(exec_allowlist=("ls",))
    assert allow.check(request(tree, tool="exec", command="ls", cwd="..")) == outside("..", "cwd")
