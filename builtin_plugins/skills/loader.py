"""Skill files (formats §2): discovery, parsing of YAML and ``SKILL.md`` files, trigger matching.

Everything here is pure: :func:`parse` turns one file's text into a :class:`Skill` or raises
:class:`LoadError` with the reason that ``/skills/reload`` reports; :func:`discover` lists the
skill files of a directory in the order of §2.1.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from attrs import field, frozen

from sdk.yamldoc import YamlError, load_yaml

__all__ = [
    "SEMVER",
    "Concurrency",
    "LoadError",
    "Skill",
    "Trigger",
    "discover",
    "matches",
    "parse",
    "tokens",
]

Format = Literal["yaml", "skill_md"]
#: ``"serial"``, ``"parallel"`` or the N of ``{limited: N}``.
Concurrency = str | int

#: SemVer 2.0.0 (semver.org's grammar: no leading zeros in numeric identifiers).
_NUM = r"(?:0|[1-9]\d*)"
_PRE_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER = re.compile(
    rf"{_NUM}\.{_NUM}\.{_NUM}"
    rf"(?:-{_PRE_ID}(?:\.{_PRE_ID})*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?",
    re.ASCII,
)
_TOKEN = re.compile(r"[^\W_]+")  # maximal runs of Unicode letters and digits
_PLATFORMS = ("linux", "macos", "windows")
_ENVIRONMENTS = ("docker", "s6")
_PRIORITIES = ("high", "normal", "low")
_FENCE = re.compile(r"^```[ \t]*yaml[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


class LoadError(Exception):
    """The file does not define a valid skill; the message is the reported reason."""


@frozen(kw_only=True)
class Trigger:
    """An event trigger (§2.3)."""

    event_types: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    priorities: tuple[str, ...] = ()
    match_all: bool = False

    def matches(self, event_type: str, source: str, priority: str) -> bool:
        checks = (
            (self.event_types, event_type, True),
            (self.sources, source, True),
            (self.priorities, priority, False),
        )
        if self.match_all:
            return all(not values or _contains(values, v, p) for values, v, p in checks)
        if not (self.event_types or self.sources or self.priorities):
            return True
        return any(_contains(values, v, p) for values, v, p in checks)

    def snapshot(self) -> dict[str, Any]:
        return {
            "event_types": list(self.event_types),
            "sources": list(self.sources),
            "priorities": list(self.priorities),
            "match_all": self.match_all,
        }


def _contains(values: tuple[str, ...], value: str, patterns: bool) -> bool:
    for entry in values:
        if entry == value or (patterns and entry.endswith("*") and value.startswith(entry[:-1])):
            return True
    return False


@frozen(kw_only=True)
class Skill:
    """One loaded skill: the fields of §2.2 plus where it came from."""

    name: str
    version: str = "0.1.0"
    description: str = ""
    enabled: bool = True  # the file's initial state only
    tags: tuple[str, ...] = ()
    category: str = ""
    triggers: tuple[Trigger, ...] = ()
    keywords: tuple[str, ...] = ()
    concurrency: Concurrency = "serial"
    idle_prompts: tuple[str, ...] = ()
    instructions: str = ""
    llm_visible: bool = True
    platforms: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(factory=dict)
    format: Format = "yaml"
    path: str = ""
    content: str = ""
    content_hash: str = ""

    @property
    def search_tags(self) -> list[str]:
        """The ``tags`` search field: declared tags, trigger event types and keywords, once each."""
        seen: dict[str, None] = {}
        for tag in (
            *self.tags,
            *(t for tr in self.triggers for t in tr.event_types),
            *self.keywords,
        ):
            seen.setdefault(tag, None)
        return list(seen)

    @property
    def has_instructions(self) -> bool:
        return bool(self.instructions)


def matches(skill: Skill, event_type: str, source: str, priority: str) -> bool:
    """Whether an event matches the skill's triggers (§2.3; the caller checks enabled, idle and
    ``skill:`` sources). A skill without event triggers never matches."""
    return any(t.matches(event_type, source, priority) for t in skill.triggers)


def tokens(text: str) -> list[str]:
    """Search tokens: maximal runs of Unicode letters and digits, lower-cased (http-api §4)."""
    return _TOKEN.findall(text.lower())


# --- discovery --------------------------------------------------------------------------------


def discover(root: Path) -> list[Path]:
    """The skill files under ``root`` (§2.1): ``*.yaml``, ``*.yml`` and ``SKILL.md``, hidden
    names and symbolic links skipped, in byte order of the path relative to ``root``.
    ``os.scandir`` entries answer the type questions without a ``stat`` per file."""
    found: list[tuple[bytes, str]] = []
    stack = [(str(root), b"")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, prefix + os.fsencode(name) + b"/"))
                elif entry.is_file(follow_symlinks=False) and (
                    name.endswith((".yaml", ".yml")) or name == "SKILL.md"
                ):
                    found.append((prefix + os.fsencode(name), entry.path))
    found.sort()
    return [Path(path) for _, path in found]


# --- parsing ----------------------------------------------------------------------------------


def parse(path: Path, content: str, content_hash: str) -> Skill:
    """The skill that ``content`` (the text of ``path``) defines; :class:`LoadError` otherwise."""
    if path.name == "SKILL.md":
        data, instructions = _split_skill_md(path, content)
        return _build(data, "skill_md", instructions, path, content, content_hash)
    data = _load_yaml(content)
    if not isinstance(data, dict):
        raise LoadError("not a YAML mapping")
    return _build(data, "yaml", None, path, content, content_hash)


def _load_yaml(text: str) -> Any:
    try:
        return load_yaml(text)
    except YamlError as exc:
        raise LoadError(f"invalid YAML: {exc}") from None


def _split_skill_md(path: Path, text: str) -> tuple[dict[str, Any], str]:
    """Front-matter (or the first fenced ``yaml`` block, or nothing) and the instructions."""
    text = text.lstrip("\ufeff")
    lines = text.splitlines(keepends=True)
    if lines and lines[0].rstrip() == "---":
        for i in range(1, len(lines)):
            if lines[i].rstrip() == "---":
                data = _load_yaml("".join(lines[1:i]))
                return _mapping(data, "front-matter"), "".join(lines[i + 1 :]).strip()
        raise LoadError("front-matter is not closed by a line '---'")
    fence = _FENCE.search(text)
    if fence is not None:
        data = _load_yaml(fence.group(1))
        return _mapping(data, "the yaml block"), text[fence.end() :].strip()
    heading = next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")), "")
    return {"name": heading or path.parent.name}, text.strip()


def _mapping(data: Any, what: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoadError(f"{what} is not a YAML mapping")
    return data


def _build(
    data: dict[str, Any],
    fmt: Format,
    instructions: str | None,
    path: Path,
    content: str,
    content_hash: str,
) -> Skill:
    name = _name(data.get("name"))
    version = data.get("version", "0.1.0")
    version = version if isinstance(version, str) else str(version)
    if not SEMVER.fullmatch(version):
        raise LoadError(f"invalid semver: {version}")
    triggers, keywords = _triggers(data, fmt)
    if instructions is None:
        raw = data.get("instructions")
        instructions = raw.strip() if isinstance(raw, str) else ""
    default_description = "declarative skill" if fmt == "yaml" else ""
    description = data.get("description", default_description)
    metadata = data.get("metadata")
    return Skill(
        name=name,
        version=version,
        description="" if description is None else str(description),
        enabled=data.get("enabled") is not False,
        tags=_strings(data.get("tags")),
        category="" if data.get("category") is None else str(data["category"]),
        triggers=triggers,
        keywords=keywords,
        concurrency=_concurrency(data.get("concurrency", "serial")),
        idle_prompts=_strings(data.get("idle_prompts", data.get("idle_prompt")), split=False),
        instructions=instructions,
        llm_visible=data.get("llm_visible") is not False,
        platforms=_choices(data.get("platforms"), _PLATFORMS, "platform"),
        environments=_choices(data.get("environments"), _ENVIRONMENTS, "environment"),
        metadata=metadata if isinstance(metadata, dict) else {},
        format=fmt,
        path=str(path),
        content=content,
        content_hash=content_hash,
    )


def _name(value: Any) -> str:
    if value is None or value == "":
        raise LoadError("missing name")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise LoadError("invalid name: must be a string")
    name = str(value)
    if len(name) > 128:
        raise LoadError("invalid name: longer than 128 characters")
    if "/" in name:
        raise LoadError(f"invalid name: {name!r} contains '/'")
    if name != name.strip():
        raise LoadError(f"invalid name: {name!r} has surrounding whitespace")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise LoadError(f"invalid name: {name!r} contains a control character")
    return name


def _strings(value: Any, *, split: bool = True) -> tuple[str, ...]:
    """A lenient list of strings (tags, idle prompts): a string is one item (tags: split at
    commas), anything else that is not a list is ignored."""
    if isinstance(value, str):
        items = value.split(",") if split else [value]
        return tuple(s.strip() for s in items if s.strip())
    if isinstance(value, list):
        return tuple(str(v) for v in value if v is not None)
    return ()


def _concurrency(value: Any) -> Concurrency:
    if value in ("serial", "parallel"):
        return str(value)
    if isinstance(value, dict) and set(value) == {"limited"}:
        n = value["limited"]
        if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1000:
            return n
    raise LoadError(
        f"invalid concurrency: {_show(value)} (serial, parallel or {{limited: N}} with N 1-1000)"
    )


def _choices(value: Any, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LoadError(f"invalid {what}s: must be a list")
    for item in value:
        if item not in allowed:
            raise LoadError(f"unknown {what}: {_show(item)} (one of {', '.join(allowed)})")
    return tuple(value)


def _triggers(data: dict[str, Any], fmt: Format) -> tuple[tuple[Trigger, ...], tuple[str, ...]]:
    raw = data.get("triggers")
    if raw is None:
        metadata = data.get("metadata")
        raw = metadata.get("triggers") if isinstance(metadata, dict) else None
        if not isinstance(raw, str):
            return (), ()
        return (), _keywords(raw)
    if isinstance(raw, str) and fmt == "skill_md":
        return (), _keywords(raw)
    if not isinstance(raw, list):
        raise LoadError("invalid trigger: triggers must be a list")
    triggers: list[Trigger] = []
    keywords: list[str] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            if item.strip():
                keywords.append(item.strip())
        elif isinstance(item, dict):
            triggers.append(_trigger(item, i))
        else:
            raise LoadError(
                f"invalid trigger #{i + 1}: {_show(item)} is neither a mapping nor a string"
            )
    return tuple(triggers), tuple(keywords)


def _keywords(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _trigger(item: dict[str, Any], i: int) -> Trigger:
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("event_types", "sources", "priorities"):
        value = item.get(key)
        if value is None:
            lists[key] = ()
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise LoadError(f"invalid trigger #{i + 1}: {key} must be a list of strings")
        lists[key] = tuple(value)
    for priority in lists["priorities"]:
        if priority not in _PRIORITIES:
            raise LoadError(f"invalid trigger #{i + 1}: unknown priority {priority!r}")
    match_all = item.get("match_all", False)
    if not isinstance(match_all, bool):
        raise LoadError(f"invalid trigger #{i + 1}: match_all must be a boolean")
    return Trigger(match_all=match_all, **lists)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
