"""The output validator and the content filter (http-api §11.4, §11.3 step 5)."""

from __future__ import annotations

import pytest

from builtin_plugins.security.output import CONTENT_FILTER, VALIDATOR
from sdk import TextInput

INFORMATION = (
    "[I apologize, but I cannot provide that response as it may contain sensitive information.]"
)
DATA = "[I apologize, but I cannot provide that response as it may contain sensitive data.]"


def reply(text: str) -> TextInput:
    return TextInput(text=text, agent_id="main", session_id="s-1")


VALIDATED = [
    ("your key is SK-abc", ["openai_api_key"]),
    ("akiaXYZ", ["aws_access_key"]),
    ("-----Begin CERTIFICATE-----", ["private_key_block"]),
    ("token GHP_xyz", ["github_token"]),
    ("-----BEGIN RSA PRIVATE KEY-----", ["private_key_block", "private_key_pem"]),
    ("You are an AI assistant that", ["system_prompt_disclosure"]),
    ("my System\n Prompt says", ["system_prompt_mention"]),
    ("I will IGNORE SAFETY", ["tool_prompt_injection"]),
    ("how to bypass filter x", ["tool_bypass"]),
    ("Execute  Shell Command: ls", ["shell_command_exec"]),
    ("sk- and ghp_ here", ["openai_api_key", "github_token"]),
]


@pytest.mark.parametrize(("text", "names"), VALIDATED)
def test_validator_replaces_matching_replies(text, names):
    verdict = VALIDATOR.check(reply(text))
    assert verdict is not None
    assert (verdict.reason, verdict.replacement) == (f"validator:{','.join(names)}", INFORMATION)


@pytest.mark.parametrize(
    "text", ["Hello there.", "the system is up", "a prompt answer", "execute the shell", "gh_p"]
)
def test_validator_passes_other_replies(text):
    assert VALIDATOR.check(reply(text)) is None


KEY = "A1b2C3d4E5f6G7h8I9j0"  # 20 key characters

FILTERED = [
    (f"key: sk-{KEY}", "api_key"),
    (f"key: sk-proj-{KEY}", "api_key"),
    (f"key: sk-ant-api03-{KEY}_x-y", "api_key"),
    (f"gho_{KEY}{KEY[:16]}", "github_token"),
    (f"ghp_{KEY}{KEY}", "github_token"),
    ("ghs_" + "a" * 36, "github_token"),
    ("ghu_" + "Z9" * 18, "github_token"),
    ("ghr_" + "0" * 36, "github_token"),
    ("id AKIAIOSFODNN7EXAMPLE ok", "aws_access_key"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl-_x", "jwt"),
]


@pytest.mark.parametrize(("text", "name"), FILTERED)
def test_content_filter_replaces_secrets(text, name):
    verdict = CONTENT_FILTER.check(reply(text))
    assert verdict is not None
    assert (verdict.reason, verdict.replacement) == (f"content_filter:{name}", DATA)


NOT_FILTERED = [
    f"sk-{KEY[:19]}",  # 19 key characters
    f"SK-{KEY}",  # the shapes are case-sensitive
    "gho_" + "a" * 35,
    "ghx_" + "a" * 40,
    "AKIA" + "A" * 15,
    "AKIA" + "a" * 16,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0",  # two parts
    "abc.def.ghi",  # no eyJ
    "A perfectly normal reply.",
]


@pytest.mark.parametrize("text", NOT_FILTERED)
def test_content_filter_passes_other_replies(text):
    assert CONTENT_FILTER.check(reply(text)) is None


def test_content_filter_names_every_match_in_table_order():
    verdict = CONTENT_FILTER.check(reply(f"AKIAIOSFODNN7EXAMPLE and sk-{KEY}"))
    assert verdict is not None
    assert verdict.reason == "content_filter:api_key,aws_access_key"
