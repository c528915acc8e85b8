"""security: the safety policies of the runtime as data-driven checks (http-api §11.4, §18.2).

- input: the sanitizer (order 100) and the injection detector (order 300) on chat texts; the soul
  boundary check (order 200) comes from the ``soul`` plugin;
- output: the validator (order 100) and the content filter (order 200) on final replies;
- tools: the hardline rules (order 100, always on) and the allowlist (order 200).

The rule tables live in :mod:`.input`, :mod:`.output`, :mod:`.hardline` and :mod:`.allowlist`.
Each switchable policy reads its setting when it checks, so ``/config/set`` applies at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sdk import (
    ConfigKey,
    InputPolicy,
    OutputPolicy,
    PluginContext,
    ToolDenial,
    ToolGuard,
    ToolRequest,
    hookimpl,
)

from . import hardline
from .allowlist import Allowlist
from .input import detect, sanitize
from .output import CONTENT_FILTER, VALIDATOR

__all__ = ["register_config", "register_policies"]

T = TypeVar("T")
R = TypeVar("R")


@hookimpl
def register_config(ctx: PluginContext) -> list[ConfigKey]:
    """The ``[security]`` keys this plugin owns (formats §1.2); the approval keys and
    ``security.risky_capabilities_enabled`` belong to the ``tools`` plugin."""
    return [
        ConfigKey(
            name="security.allowlist_enabled",
            type=bool,
            default=False,
            doc="Confine tool paths to the workspace and allowed_paths.",
        ),
        ConfigKey(
            name="security.allowed_paths",
            type=list[str],
            default=[],
            doc="Extra directories tools may touch when the allowlist is on "
            "(relative to runtime.dir).",
        ),
        ConfigKey(
            name="security.network_enabled",
            type=bool,
            default=True,
            doc="With the allowlist on, allows the http tool.",
        ),
        ConfigKey(
            name="security.exec_allowlist",
            type=list[str],
            default=[],
            doc="With the allowlist on and not empty, the only commands exec may run.",
        ),
        ConfigKey(
            name="security.input_sanitizer",
            type=bool,
            default=True,
            doc="Chat input sanitizer (http-api §11.4).",
        ),
        ConfigKey(
            name="security.output_validation",
            type=bool,
            default=True,
            doc="Output validator and content filter.",
        ),
    ]


@hookimpl
def register_policies(ctx: PluginContext) -> list[InputPolicy | OutputPolicy | ToolGuard]:
    def allowlist(request: ToolRequest) -> ToolDenial | None:
        return Allowlist.from_settings(ctx.settings).check(request)

    return [
        InputPolicy(
            name="input_sanitizer",
            order=100,
            check=_when(ctx, "security.input_sanitizer", sanitize),
        ),
        InputPolicy(name="injection_detector", order=300, check=detect),
        OutputPolicy(
            name="output_validator",
            order=100,
            check=_when(ctx, "security.output_validation", VALIDATOR.check),
        ),
        OutputPolicy(
            name="content_filter",
            order=200,
            check=_when(ctx, "security.output_validation", CONTENT_FILTER.check),
        ),
        ToolGuard(name="hardline", order=100, check=hardline.check),
        ToolGuard(
            name="allowlist",
            order=200,
            check=_when(ctx, "security.allowlist_enabled", allowlist),
        ),
    ]


def _when(ctx: PluginContext, key: str, check: Callable[[T], R | None]) -> Callable[[T], R | None]:
    """``check`` while the boolean setting ``key`` is true (read on every call)."""

    def switched(item: T) -> R | None:
        return check(item) if ctx.settings.get(key) else None

    return switched
