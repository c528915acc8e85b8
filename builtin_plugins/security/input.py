"""Chat input checks (http-api §11.4): the input sanitizer (step 1) and the injection detector
(step 3). Step 2, the soul boundaries, belongs to the ``soul`` plugin."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attrs import frozen

from sdk import InputVerdict, Invalid, TextInput

from .patterns import Pattern, matching, regex, substring

__all__ = ["INJECTION_PATTERNS", "REDACTED", "REPLACED_MESSAGE", "SANITIZER", "detect", "sanitize"]

REPLACED_MESSAGE = "[message blocked by content policy]"
REDACTED = "[redacted]"


def _block(text: str, matched: Sequence[Pattern]) -> InputVerdict:
    names = [rule.name for rule in matched]
    return InputVerdict(
        outcome="blocked",
        detail=f"matched:{','.join(names)}",
        error=Invalid(f"Message blocked: matched {', '.join(names)}"),
    )


def _replace_message(text: str, matched: Sequence[Pattern]) -> InputVerdict:
    return InputVerdict(
        outcome="sanitized_replace",
        detail=f"matched:{','.join(rule.name for rule in matched)}",
        text=REPLACED_MESSAGE,
    )


def _replace_token(text: str, matched: Sequence[Pattern]) -> InputVerdict:
    for rule in matched:
        text = rule.regex.sub(REDACTED, text, count=1)
    names = ",".join(rule.name for rule in matched)
    return InputVerdict(
        outcome="sanitized_token", detail=f"matched:{names},sanitized_len:{len(text)}", text=text
    )


@frozen
class Tier:
    """One tier of the sanitizer: its rules and what a match does to the text."""

    rules: tuple[Pattern, ...]
    effect: Callable[[str, Sequence[Pattern]], InputVerdict]


#: The sanitizer's tiers, highest first (§11.4 step 1); the first tier with a match wins.
SANITIZER: tuple[Tier, ...] = (
    Tier(
        (
            substring("shell_injection_rm", "rm -rf"),
            substring("shell_injection_drop", "drop table"),
            substring("sql_injection", "'; drop"),
        ),
        _block,
    ),
    Tier(
        (
            substring("system_prompt_extraction", "system prompt"),
            substring("instruction_disclosure", "what are your instructions"),
        ),
        _replace_message,
    ),
    Tier(
        (
            substring("ignore_previous", "ignore previous"),
            substring("ignore_all", "ignore all"),
            substring("forget_instructions", "forget instructions"),
        ),
        _replace_token,
    ),
)

#: The injection detector's patterns (§11.4 step 3), case-insensitive.
INJECTION_PATTERNS: tuple[Pattern, ...] = (
    regex("ignore_all_previous", r"ignore\s+all\s+previous\s+instructions"),
    regex("reveal_system_prompt", r"reveal\s+(your\s+)?system\s+prompt"),
    regex("execute_shell_command", r"execute\s+shell\s+command"),
    regex("script_tag", r"<script\b"),
)


def sanitize(item: TextInput) -> InputVerdict | None:
    """The input sanitizer: block, replace the message or redact phrases (highest tier wins)."""
    for tier in SANITIZER:
        matched = matching(tier.rules, item.text)
        if matched:
            return tier.effect(item.text, matched)
    return None


def detect(item: TextInput) -> InputVerdict | None:
    """The injection detector: the first pattern found (in table order) is reported; the text
    passes unchanged."""
    matched = matching(INJECTION_PATTERNS, item.text)
    if not matched:
        return None
    name = matched[0].name
    return InputVerdict(
        outcome="injection_detected",
        detail=f"pattern:{name}",
        event=("injection_detected", {"session_id": item.session_id, "pattern": name}),
    )
