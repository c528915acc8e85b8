"""Output checks on final replies (http-api §11.4, step 5 of §11.3): the output validator and the
content filter. A match replaces the whole reply; the ``output_blocked`` reason is
``<check>:<rule names joined by ','>`` (``validator:openai_api_key``)."""

from __future__ import annotations

import re

from attrs import frozen

from sdk import OutputVerdict, TextInput

from .patterns import Pattern, matching, regex, substring

__all__ = ["CONTENT_FILTER", "VALIDATOR", "OutputCheck"]


@frozen
class OutputCheck:
    """A table of rules and the reply that replaces a matching one."""

    name: str
    rules: tuple[Pattern, ...]
    replacement: str

    def check(self, item: TextInput) -> OutputVerdict | None:
        matched = matching(self.rules, item.text)
        if not matched:
            return None
        names = ",".join(rule.name for rule in matched)
        return OutputVerdict(reason=f"{self.name}:{names}", replacement=self.replacement)


#: The validator: case-insensitive substrings and regular expressions.
VALIDATOR = OutputCheck(
    "validator",
    (
        substring("openai_api_key", "sk-"),
        substring("aws_access_key", "akia"),
        substring("private_key_block", "-----begin"),
        substring("github_token", "ghp_"),
        regex("private_key_pem", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        substring("system_prompt_disclosure", "you are an ai assistant"),
        regex("system_prompt_mention", r"system\s+prompt"),
        substring("tool_prompt_injection", "ignore safety"),
        substring("tool_bypass", "bypass filter"),
        regex("shell_command_exec", r"execute\s+shell\s+command"),
    ),
    "[I apologize, but I cannot provide that response as it may contain sensitive information.]",
)

_KEY = r"[A-Za-z0-9_-]"
_CASE = re.RegexFlag(0)  # the secret shapes are case-sensitive

#: The content filter, high severity: secrets by their shape.
CONTENT_FILTER = OutputCheck(
    "content_filter",
    (
        # `-` is a key character, so `sk-proj-…` and `sk-ant-…` keys match as well
        regex("api_key", rf"sk-{_KEY}{{20,}}", _CASE),
        regex("github_token", r"gh[pousr]_[A-Za-z0-9]{36,}", _CASE),
        regex("aws_access_key", r"AKIA[A-Z0-9]{16}", _CASE),
        regex("jwt", rf"eyJ{_KEY}+\.{_KEY}+\.{_KEY}+", _CASE),
    ),
    "[I apologize, but I cannot provide that response as it may contain sensitive data.]",
)
