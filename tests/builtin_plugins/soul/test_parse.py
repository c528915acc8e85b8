"""The soul file format (formats §4.1), the soul prompt (§4.2) and the boundary check (§4.3)."""

from __future__ import annotations

import pytest

from builtin_plugins.soul.parse import Soul, decode, parse, prompt, violated
from sdk import Invalid

from .conftest import EXAMPLE

EMPTY = "SOUL.md content is empty or invalid"
TOO_LARGE = "soul content is too large (max 262144 bytes)"


def test_the_example_of_the_spec():
    assert parse(EXAMPLE) == Soul(
        name="Aman",
        identity="A calm, careful assistant.",
        core="Be honest. Say when you do not know.",
        expertise=("Python", "distributed systems"),
        vibe="Warm, concise.",
        preferences=("short answers", "metric units"),
        boundaries=("do not leak secrets", "never delete user files"),
        sections=("identity", "core", "expertise", "vibe", "preferences", "boundaries"),
    )
    assert prompt(parse(EXAMPLE)) == (
        "You are Aman.\n"
        "Identity: A calm, careful assistant.\n"
        "Core: Be honest. Say when you do not know.\n"
        "Expertise: Python, distributed systems\n"
        "Vibe: Warm, concise.\n"
        "Preferences: short answers; metric units\n"
        "Boundaries:\n"
        "- do not leak secrets\n"
        "- never delete user files"
    )


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("# Aman\n## Core\nx\n", "Aman"),
        ("## Core\nx\n#   Late Title  \n", "Late Title"),  # the first level-1 heading, anywhere
        ("# First\n# Second\n", "First"),
        ("# Title\n## Name\nOther\n", "Title"),  # the heading wins over ## Name
        ("## Name\n\n   Nova  \nsecond line\n## Core\nx\n", "Nova"),  # first non-empty line
        ("## NAME\nNova\n", "Nova"),
        ("## Name\n\n## Name\nLater\n", "Later"),  # a repeated section is appended
        ("## Core\nx\n", "aman"),
        ("#\n## Core\nx\n", "aman"),  # an empty heading names nothing
        ("#NoSpace\n", "aman"),  # not a heading
        ("### Deep\n", "aman"),
        ("\ufeff# Aman\n", "Aman"),  # a byte order mark is not part of the heading
    ],
)
def test_name(text, name):
    assert parse(text).name == name


def test_section_headers_are_trimmed_and_case_insensitive():
    soul = parse("#  X\n##   IDENTITY   \nwho\n## vIbE\nchill\n")
    assert (soul.identity, soul.vibe, soul.sections) == ("who", "chill", ("identity", "vibe"))


def test_other_sections_and_text_before_the_first_section_are_ignored():
    soul = parse(
        "intro line\n# X\n## Core\nkept\n## Notes\n- not an item\nnot core\n## Boundaries\n- b1\n"
    )
    assert (soul.core, soul.boundaries, soul.sections) == ("kept", ("b1",), ("core", "boundaries"))


def test_a_level_one_heading_ends_the_section_before_it():
    assert parse("## Core\nkept\n# Title\nnot core\n").core == "kept"


def test_text_sections_join_the_non_empty_lines_with_one_space():
    soul = parse("## Identity\n  first line  \n\n   \n\tsecond\n## Core\n- a dash stays text\n")
    assert soul.identity == "first line second"
    assert soul.core == "- a dash stays text"


def test_list_sections_take_dash_and_star_items_only():
    soul = parse(
        "## Expertise\n- one\n*   two  \n    - indented\n\t* tabbed\n-no space\n+ plus\nprose\n- \n*\n"
    )
    assert soul.expertise == ("one", "two", "indented", "tabbed")


def test_a_repeated_section_is_appended_to_the_first():
    soul = parse(
        "## Boundaries\n- b1\n## Core\nc1\n## boundaries\n- b2\n## Core\nc2\n## Preferences\n## Vibe\n"
    )
    assert soul.boundaries == ("b1", "b2")
    assert soul.core == "c1 c2"
    assert soul.sections == ("boundaries", "core", "preferences", "vibe")  # present, even empty
    assert soul.preferences == () and soul.vibe == ""


def error(fn, arg) -> str:
    with pytest.raises(Invalid) as raised:
        fn(arg)
    return str(raised.value)


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n", "\ufeff", "\ufeff \n"])
def test_empty_content_is_invalid(text):
    assert error(parse, text) == EMPTY


def test_content_that_is_not_utf8_is_invalid():
    assert error(decode, b"# Aman\n\xff\xfe") == EMPTY
    assert error(parse, "# Aman \ud800") == EMPTY  # a lone surrogate (JSON allows one)
    assert error(parse, "# A\x00\n## Identity\nx\n") == EMPTY  # a NUL: binary, not text
    assert decode("# Åman\n".encode()) == "# Åman\n"


def test_the_size_limit_counts_utf8_bytes():
    assert parse("#" + " " * 262_143).name == "aman"  # exactly 262 144 bytes: blank title
    assert error(parse, "# X\n" + "a" * 262_141) == TOO_LARGE
    assert error(parse, "é" * 131_073) == TOO_LARGE  # 262 146 bytes in 131 073 characters


# --- the soul prompt (§4.2) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("soul", "lines"),
    [
        (Soul(name="Aman"), ["You are Aman."]),
        (Soul(name="A", vibe="calm"), ["You are A.", "Vibe: calm"]),
        (Soul(name="A", core="c", expertise=("x",)), ["You are A.", "Core: c", "Expertise: x"]),
        (
            Soul(name="A", preferences=("p1", "p2", "p3"), boundaries=("b1",)),
            ["You are A.", "Preferences: p1; p2; p3", "Boundaries:", "- b1"],
        ),
        (Soul(name="A", identity="i", boundaries=()), ["You are A.", "Identity: i"]),
    ],
)
def test_prompt_leaves_out_empty_parts(soul, lines):
    assert prompt(soul) == "\n".join(lines)


# --- the boundary check (§4.3) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "boundaries", "found"),
    [
        ("please leak secrets now", ["do not leak secrets"], "do not leak secrets"),  # the example
        ("summarize the plan", ["do not leak secrets"], None),
        ("Please LEAK Secrets", ["Do Not Leak Secrets"], "Do Not Leak Secrets"),  # lower-cased
        ("i will do not leak secrets", ["do not leak secrets"], "do not leak secrets"),
        ("go and delete user files", ["never delete user files"], "never delete user files"),
        ("swear now", ["don't swear"], "don't swear"),
        ("talk about politics", ["politics"], "politics"),  # no negation: the boundary itself
        ("you lie", ["never lie"], "never lie"),  # a remainder of 3 characters is used
        ("go now", ["do not go"], None),  # a remainder shorter than 3 characters is not
        ("do not go", ["do not go"], "do not go"),  # ... but the whole boundary still is
        ("x y z", ["do not    x y"], "do not    x y"),  # the remainder is trimmed
        ("share it", ["never do not share"], None),  # only one leading negation is removed
        ("do not share it", ["never do not share"], "never do not share"),
        ("swear", ["please do not swear"], None),  # the negation must lead
        ("leak and delete", ["never delete", "do not leak"], "never delete"),  # first in order
        ("anything", [], None),
    ],
)
def test_violated(text, boundaries, found):
    assert violated(text, boundaries) == found
