"""The path and network allowlist (http-api §18.2, ``security.allowlist_enabled``): path-like
arguments stay inside the workspace or ``security.allowed_paths``, ``http`` needs
``security.network_enabled``, and a non-empty ``security.exec_allowlist`` names the only
programs ``exec`` may run (its ``command``, or with no ``args`` every program of the shell line
``command``, http-api §18.1)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from attrs import frozen

from sdk import Settings, ToolDenial, ToolRequest

from .paths import resolved
from .shell import commands

__all__ = ["PATH_ARGUMENTS", "Allowlist"]

#: The arguments that name files or directories, whatever the tool.
PATH_ARGUMENTS = ("path", "file_path", "from", "to", "cwd", "base", "db_path")


@frozen(kw_only=True)
class Allowlist:
    """The allowlist settings; ``allowed_paths`` are absolute."""

    allowed_paths: tuple[Path, ...] = ()
    network_enabled: bool = True
    exec_allowlist: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Allowlist:
        """The settings as they are now; relative ``allowed_paths`` are read against
        ``runtime.dir`` (like the other relative paths of the configuration)."""
        base = settings.resolve_path("runtime.dir")
        return cls(
            allowed_paths=tuple(
                base / Path(raw).expanduser() for raw in settings.get("security.allowed_paths")
            ),
            network_enabled=bool(settings.get("security.network_enabled")),
            exec_allowlist=tuple(settings.get("security.exec_allowlist")),
        )

    def check(self, request: ToolRequest) -> ToolDenial | None:
        """The first refusal of the call (paths, then network, then command), or None."""
        reason = self._paths(request) or self._network(request) or self._command(request)
        return ToolDenial(block_type="path_denied", reason=reason) if reason else None

    def _paths(self, request: ToolRequest) -> str | None:
        roots = _resolve_all([request.workspace, *self.allowed_paths])
        for name in PATH_ARGUMENTS:
            raw = request.args.get(name)
            if not isinstance(raw, str):
                continue
            target = resolved(request.workspace / raw)
            if target is None:
                return f"path '{raw}' ({name}) cannot be resolved"
            if not any(target.is_relative_to(root) for root in roots):
                return f"path '{raw}' ({name}) is outside the workspace and the allowed paths"
        return None

    def _network(self, request: ToolRequest) -> str | None:
        if request.tool == "http" and not self.network_enabled:
            return "network access is disabled (security.network_enabled is false)"
        return None

    def _command(self, request: ToolRequest) -> str | None:
        if request.tool != "exec" or not self.exec_allowlist:
            return None
        for program in _programs(request):
            if program not in self.exec_allowlist:
                return f"command '{program}' is not in security.exec_allowlist"
        return None


def _programs(request: ToolRequest) -> list[str]:
    """The programs an ``exec`` call runs: ``command`` itself when it has ``args``, else every
    program of the shell line ``command`` (wrappers such as ``sudo`` included)."""
    command = str(request.args.get("command", ""))
    if request.args.get("args") or not command.strip():
        return [PurePosixPath(command).name]
    return [name for name, _ in commands(command)]


def _resolve_all(paths: Iterable[Path]) -> list[Path]:
    """The directories with symlinks followed (those that cannot be resolved are left out)."""
    return [root for root in map(resolved, paths) if root is not None]
