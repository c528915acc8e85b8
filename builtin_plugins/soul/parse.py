"""The soul file as data (formats §4): parsing (§4.1), the soul prompt (§4.2) and the boundary
check (§4.3). Pure functions, no I/O."""

from __future__ import annotations

from attrs import frozen

from sdk import Invalid

__all__ = [
    "LIST_SECTIONS",
    "MAX_BYTES",
    "SECTIONS",
    "TEXT_SECTIONS",
    "Soul",
    "decode",
    "parse",
    "prompt",
    "violated",
]

MAX_BYTES = 262_144
TEXT_SECTIONS = ("identity", "core", "vibe")
LIST_SECTIONS = ("expertise", "preferences", "boundaries")
SECTIONS = ("identity", "core", "expertise", "vibe", "preferences", "boundaries")
DEFAULT_NAME = "aman"
_NAME_SECTION = "name"
_NEGATIONS = ("do not ", "don't ", "never ")
_MIN_REMAINDER = 3

EMPTY_OR_INVALID = "SOUL.md content is empty or invalid"
TOO_LARGE = f"soul content is too large (max {MAX_BYTES} bytes)"


@frozen(kw_only=True)
class Soul:
    """A parsed soul. ``sections``: the known sections the file has, in order of first
    appearance (a repeated one is listed once)."""

    name: str
    identity: str = ""
    core: str = ""
    expertise: tuple[str, ...] = ()
    vibe: str = ""
    preferences: tuple[str, ...] = ()
    boundaries: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()


def decode(data: bytes) -> str:
    """The text of a soul file's bytes; raises :class:`~sdk.Invalid` when it is not UTF-8
    (§4.1)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(EMPTY_OR_INVALID) from None


def parse(text: str) -> Soul:
    """Parse a soul file's text by the rules of formats §4.1 (a leading byte order mark is
    ignored). Raises :class:`~sdk.Invalid` for text that is not valid Unicode (lone surrogates),
    holds a NUL (binary, not text), is over :data:`MAX_BYTES` in UTF-8, or is empty or
    whitespace only."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise Invalid(EMPTY_OR_INVALID) from None
    if "\x00" in text:
        raise Invalid(EMPTY_OR_INVALID)
    if size > MAX_BYTES:
        raise Invalid(TOO_LARGE)
    body = text.removeprefix("\ufeff")
    if not body.strip():
        raise Invalid(EMPTY_OR_INVALID)
    title, lines = _split(body)
    names = [line.strip() for line in lines.get(_NAME_SECTION, []) if line.strip()]
    return Soul(
        name=title or (names[0] if names else DEFAULT_NAME),
        identity=_text(lines.get("identity", [])),
        core=_text(lines.get("core", [])),
        expertise=_items(lines.get("expertise", [])),
        vibe=_text(lines.get("vibe", [])),
        preferences=_items(lines.get("preferences", [])),
        boundaries=_items(lines.get("boundaries", [])),
        sections=tuple(s for s in lines if s in SECTIONS),
    )


def _split(text: str) -> tuple[str, dict[str, list[str]]]:
    """The first level-1 heading's text and the lines of each known section (and of ``## Name``),
    repeated sections appended to the first. A level-1 heading ends the section before it."""
    title = ""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "#" or stripped.startswith("# "):
            title = title or stripped[1:].strip()
            current = None
        elif stripped == "##" or stripped.startswith("## "):
            header = stripped[2:].strip().lower()
            known = header in SECTIONS or header == _NAME_SECTION
            current = sections.setdefault(header, []) if known else None
        elif current is not None:
            current.append(line)
    return title, sections


def _text(lines: list[str]) -> str:
    return " ".join(line.strip() for line in lines if line.strip())


def _items(lines: list[str]) -> tuple[str, ...]:
    items = (line.lstrip()[2:].strip() for line in lines if line.lstrip()[:2] in ("- ", "* "))
    return tuple(item for item in items if item)


def prompt(soul: Soul) -> str:
    """The soul prompt (formats §4.2): one line per part, every empty part left out."""
    lines = [f"You are {soul.name}."]
    parts = (
        ("Identity", soul.identity),
        ("Core", soul.core),
        ("Expertise", ", ".join(soul.expertise)),
        ("Vibe", soul.vibe),
        ("Preferences", "; ".join(soul.preferences)),
    )
    lines += [f"{label}: {value}" for label, value in parts if value]
    if soul.boundaries:
        lines += ["Boundaries:", *(f"- {boundary}" for boundary in soul.boundaries)]
    return "\n".join(lines)


def violated(text: str, boundaries: tuple[str, ...] | list[str]) -> str | None:
    """The first boundary ``text`` violates (formats §4.3), or None."""
    lowered = text.lower()
    for boundary in boundaries:
        if any(phrase in lowered for phrase in _phrases(boundary.lower())):
            return boundary
    return None


def _phrases(boundary: str) -> list[str]:
    """The boundary and, without one leading negation, its remainder (if 3 characters or more)."""
    phrases = [boundary]
    for negation in _NEGATIONS:
        if boundary.startswith(negation):
            remainder = boundary[len(negation) :].strip()
            if len(remainder) >= _MIN_REMAINDER:
                phrases.append(remainder)
            break
    return phrases
