"""Named text patterns: the rows of the chat input and output rule tables (http-api §11.4)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from attrs import frozen

__all__ = ["Pattern", "matching", "regex", "substring"]


@frozen
class Pattern:
    """One rule of a table: its name and what it looks for."""

    name: str
    regex: re.Pattern[str]


def substring(name: str, phrase: str) -> Pattern:
    """A case-insensitive substring rule."""
    return Pattern(name, re.compile(re.escape(phrase), re.IGNORECASE))


def regex(name: str, expression: str, flags: re.RegexFlag = re.IGNORECASE) -> Pattern:
    """A regular-expression rule (case-insensitive unless ``flags`` say otherwise)."""
    return Pattern(name, re.compile(expression, flags))


def matching(rules: Iterable[Pattern], text: str) -> list[Pattern]:
    """The rules found in ``text``, in table order."""
    return [rule for rule in rules if rule.regex.search(text)]
