"""Safety policies plugins contribute through ``register_policies`` (http-api §11.4, §18.2).

Four kinds, each with a ``name`` and an ``order`` (lower runs first):

- :class:`InputPolicy` checks a chat text before it is stored (sanitizer, soul boundaries,
  injection detector);
- :class:`OutputPolicy` checks a final reply before it is stored (validator, content filter);
- :class:`ToolGuard` checks a tool call before it runs (hardline rules, allowlist).

A check is a plain sync function; it must be fast and must not block (the runtime runs output
checks with a 2 s limit and fails closed). A policy reads its own settings (for example
``security.input_sanitizer``) from the context it captured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attrs import field, frozen

from .errors import SdkError
from .tools import Origin, Sensitivity

__all__ = [
    "InputPolicy",
    "InputVerdict",
    "OutputPolicy",
    "OutputVerdict",
    "TextInput",
    "ToolDenial",
    "ToolGuard",
    "ToolRequest",
]


@frozen(kw_only=True)
class TextInput:
    """A text under check and whose it is."""

    text: str
    agent_id: str
    session_id: str | None = None


@frozen(kw_only=True)
class InputVerdict:
    """What an input check found. The runtime writes an audit record with ``outcome`` and
    ``detail``; then ``error`` (if set) rejects the text (nothing stored), ``text`` (if set)
    replaces it for the following checks, and ``event`` (if set) is published as
    ``(event_type, payload)``."""

    outcome: str
    detail: str = ""
    text: str | None = None
    error: SdkError | None = None
    event: tuple[str, Mapping[str, Any]] | None = None


@frozen(kw_only=True)
class InputPolicy:
    name: str
    order: int
    check: Callable[[TextInput], InputVerdict | None]


@frozen(kw_only=True)
class OutputVerdict:
    """A blocked reply: ``reason`` (for ``output_blocked``) and the text that replaces it."""

    reason: str
    replacement: str


@frozen(kw_only=True)
class OutputPolicy:
    name: str
    order: int
    check: Callable[[TextInput], OutputVerdict | None]


@frozen(kw_only=True)
class ToolRequest:
    """A tool call under check. ``workspace`` is ``tools.workspace_dir`` (absolute)."""

    tool: str
    args: Mapping[str, Any] = field(factory=dict)
    sensitivity: Sensitivity = "medium"
    origin: Origin = "agent"
    workspace: Path = Path(".")
    agent_id: str | None = None
    session_id: str | None = None


@frozen(kw_only=True)
class ToolDenial:
    """Why a tool call may not run: ``block_type`` is ``hardline`` or ``path_denied``."""

    block_type: str
    reason: str


@frozen(kw_only=True)
class ToolGuard:
    name: str
    order: int
    check: Callable[[ToolRequest], ToolDenial | None]
