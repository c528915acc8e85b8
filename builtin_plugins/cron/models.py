"""The cron job models: the body of ``/cron/add``, the stored job and the CronJob object (§19)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from attrs import define, frozen

from sdk import Invalid

__all__ = ["FIELDS", "ID", "MISFIRE", "Job", "JobIn", "JobRecord", "clean_changes"]

Misfire = Literal["skip", "run_once"]
MISFIRE: tuple[str, ...] = ("skip", "run_once")
#: Cron job and source ids (http-api §1.10).
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,127}")
#: The fields ``/cron/{id}/update`` and the source's ``reconfigure`` accept.
FIELDS = ("expression", "timezone", "enabled", "agent_key", "prompt", "misfire")
PROMPT_MAX = 10_000


@frozen(kw_only=True)
class JobIn:
    """The body of ``POST /cron/add``; ``timezone`` None means ``cron.default_timezone``."""

    id: str
    expression: str
    timezone: str | None = None
    enabled: bool = True
    agent_key: str = ""
    prompt: str | None = None
    misfire: Misfire = "skip"


@define(kw_only=True)
class JobRecord:
    """A job as stored (mutable). ``fired_through_ms``: no scheduled time at or before it fires
    any more (it was published, or skipped because it fell due while the job was not running)."""

    id: str
    expression: str
    timezone: str
    enabled: bool
    agent_key: str
    prompt: str | None
    misfire: str
    session_id: str | None
    created_at_ms: int
    updated_at_ms: int
    last_run_at_ms: int | None = None
    fired_through_ms: int | None = None

    def settings(self) -> dict[str, Any]:
        """The reconfigurable fields, as the Source object's ``config`` shows them."""
        return {name: getattr(self, name) for name in FIELDS}


@frozen(kw_only=True)
class Job:
    """The CronJob object of http-api §19, plus ``misfire`` (docs/decisions.md)."""

    id: str
    expression: str
    timezone: str
    enabled: bool
    agent_key: str
    prompt: str | None
    misfire: str
    session_id: str | None
    state: str
    created_at_ms: int
    updated_at_ms: int
    next_run_at_ms: int | None
    last_run_at_ms: int | None


def clean_changes(changes: Mapping[str, Any], unknown: Callable[[str], str]) -> dict[str, Any]:
    """Check the shape of an update (keys and types, http-api §1.5 messages); ``unknown(key)`` words
    the error for a key that is not a job field."""
    for key in changes:
        if key not in FIELDS:
            raise Invalid(unknown(key))
    for key in ("expression", "timezone", "agent_key", "prompt"):
        if key in changes and not isinstance(changes[key], str):
            if key == "prompt" and changes[key] is None:
                continue  # null removes the prompt
            raise Invalid(f"field '{key}' must be a string")
    if "enabled" in changes and not isinstance(changes["enabled"], bool):
        raise Invalid("field 'enabled' must be a boolean")
    if "misfire" in changes:
        check_misfire(changes["misfire"])
    return {key: changes[key] for key in FIELDS if key in changes}


def check_misfire(value: Any) -> None:
    if not isinstance(value, str) or value not in MISFIRE:
        raise Invalid(
            f"invalid value for 'misfire': '{value}' (expected one of: {', '.join(MISFIRE)})"
        )


def check_prompt(value: str | None) -> None:
    if value is not None and not 1 <= len(value) <= PROMPT_MAX:
        raise Invalid(f"field 'prompt' must be between 1 and {PROMPT_MAX} characters")
