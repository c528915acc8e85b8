"""Hardline rules (http-api §18.2): tool calls refused whatever the origin, the settings or an
approval. Each rule looks at one *subject* of the call: the ``exec`` command line (``command``
as the shell reads it, or with ``args`` exactly those words), the ``db`` statement (``sql``,
without its comments and quoted contents) or the path of ``write``, ``edit`` and ``read`` (made
absolute against the workspace, both as written and with symlinks followed).

Command rules look at every command of the line as :func:`.shell.commands` reads it: after
``;``, ``&&``, ``|``, … and backticks, behind ``sudo`` and other wrappers, and inside
``sh -c``/``eval`` strings.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence

from attrs import frozen

from sdk import ToolDenial, ToolRequest

from .paths import lexical, resolved
from .shell import commands

__all__ = ["HARDLINE", "SUBJECTS", "HardlineRule", "check"]

_ROOT = re.compile(r"^/+\*?$")  # `/` alone (also `//`, and `/*`, which deletes as much)


@frozen
class HardlineRule:
    """One row of the table: the tools it applies to, the test of a subject, the reason."""

    tools: frozenset[str]
    blocks: Callable[[str], object]
    reason: str


def check(request: ToolRequest) -> ToolDenial | None:
    """The first hardline rule (in table order) that blocks the call, as a denial."""
    subject = SUBJECTS.get(request.tool)
    if subject is None:
        return None
    texts = subject(request)
    for rule in HARDLINE:
        if request.tool in rule.tools and any(rule.blocks(text) for text in texts):
            return ToolDenial(block_type="hardline", reason=rule.reason)
    return None


def _command(names: str, arguments: Callable[[Sequence[str]], bool]) -> Callable[[str], bool]:
    """A rule on a command line: some command named ``names`` (a regex on its base name) with
    ``arguments`` true of its arguments."""
    pattern = re.compile(names)

    def blocks(line: str) -> bool:
        return any(pattern.fullmatch(name) and arguments(args) for name, args in commands(line))

    return blocks


def _any_argument(expression: str | re.Pattern[str]) -> Callable[[Sequence[str]], bool]:
    pattern = re.compile(expression)
    return lambda args: any(pattern.search(arg) for arg in args)


def _always(args: Sequence[str]) -> bool:
    return True


def _containing(*needles: str) -> Callable[[str], bool]:
    return lambda text: any(needle in text for needle in needles)


def _command_line(request: ToolRequest) -> list[str]:
    """Without ``args`` the tool runs ``command`` with ``/bin/sh -c``: a shell line. With them it
    runs exactly those words, quoted here so that reading the line gives them back."""
    command = str(request.args.get("command", ""))
    extra = request.args.get("args") or []
    if not extra:
        return [command]
    words = [command, *(extra if isinstance(extra, list) else [extra])]
    return [shlex.join(str(word) for word in words)]


def _sql(request: ToolRequest) -> list[str]:
    """The statement as SQLite reads its keywords: comments (``/* */``, ``--``) become a space
    and quoted strings and names lose their contents, so ``DROP/**/TABLE``, ``DELETE FROM t --
    WHERE`` and ``DELETE FROM "WHERE"`` read as what runs, and a keyword in a string is text."""
    return [_SQL_PARTS.sub(_blank, str(request.args.get("sql", "")))]


#: A quoted string or name, or a comment (each up to its end, or to the end of the text).
_SQL_PARTS = re.compile(
    r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?|/\*.*?(?:\*/|$)|--[^\n]*""", re.DOTALL
)
_CLOSE = {"'": "'", '"': '"', "`": "`", "[": "]"}


def _blank(match: re.Match[str]) -> str:
    text = match[0]
    return " " if text[0] in "/-" else text[0] + _CLOSE[text[0]]


def _fork_bomb(line: str) -> bool:
    """A shell function that calls itself twice, piped or in the background, in its body:
    ``:(){ :|:& };:``, ``f() ( f|f & )``, ``function f { f & f; }``... Quotes are ignored, so
    a definition inside a ``sh -c '…'`` string counts too."""
    line = line.replace("'", " ").replace('"', " ")
    for definition in _FUNCTION.finditer(line):
        name = definition["f"] or definition["g"]
        body = line[definition.end() :]
        close = "}" if definition["open"] == "{" else ")"
        body = body[: body.find(close)] if close in body else body
        calls = re.findall(rf"(?<![^\s;&|(){{}}]){re.escape(name)}(?![^\s;&|(){{}}])", body)
        if len(calls) >= 2 and ("&" in body or "|" in body):
            return True
    return False


def _path(request: ToolRequest) -> list[str]:
    raw = request.args.get("path")
    if not isinstance(raw, str):
        return []
    path = request.workspace / raw
    followed = resolved(path)
    return [str(lexical(path)), *([str(followed)] if followed else [])]


#: What each tool's rules look at.
SUBJECTS: Mapping[str, Callable[[ToolRequest], list[str]]] = {
    "exec": _command_line,
    "db": _sql,
    "write": _path,
    "edit": _path,
    "read": _path,
}

_NAME = r"[^\s(){}|&;<>]+"
#: A shell function definition up to its body's opening brace or parenthesis.
_FUNCTION = re.compile(
    rf"(?:\bfunction\s+(?P<g>{_NAME})\s*(?:\(\s*\))?|(?P<f>{_NAME})\s*\(\s*\))\s*(?P<open>[{{(])"
)
_EXEC, _DB, _READ = frozenset({"exec"}), frozenset({"db"}), frozenset({"read"})

#: The hardline table of §18.2, checked in this order.
HARDLINE: tuple[HardlineRule, ...] = (
    HardlineRule(
        _EXEC, _command("rm", _any_argument(_ROOT)), "recursive root filesystem deletion is blocked"
    ),
    HardlineRule(_EXEC, _fork_bomb, "fork bomb is blocked"),
    HardlineRule(_EXEC, _command(r"mkfs(?:\..+)?", _always), "filesystem formatting is blocked"),
    HardlineRule(
        _EXEC,
        _command("dd", _any_argument(r"^of=/dev/(?:sd|nvme|hd|loop|dm-|rdisk)")),
        "raw disk write is blocked",
    ),
    HardlineRule(
        _EXEC, _command("kill", _any_argument("^-1$")), "killing all processes is blocked"
    ),
    HardlineRule(
        _EXEC,
        _command("shutdown|reboot|halt|poweroff", _always),
        "system power commands are blocked",
    ),
    HardlineRule(
        _EXEC, _command("chmod", _any_argument(_ROOT)), "chmod of the root filesystem is blocked"
    ),
    HardlineRule(
        frozenset({"write", "edit"}),
        _containing(
            ".ssh/authorized_keys",
            ".ssh/id_rsa",
            ".ssh/id_ed25519",
            ".ssh/config",
            ".bashrc",
            ".zshrc",
            ".profile",
            ".bash_profile",
            ".env",
            ".netrc",
            ".pgpass",
            ".npmrc",
            ".pypirc",
            "/etc/sudoers",
            "/etc/passwd",
            "/etc/shadow",
        ),
        "write to sensitive path is blocked",
    ),
    HardlineRule(
        _DB,
        re.compile(r"\b(?:DROP\s+(?:TABLE|DATABASE|INDEX)|TRUNCATE)\b", re.IGNORECASE).search,
        "destructive SQL (DROP/TRUNCATE) is blocked",
    ),
    HardlineRule(
        _DB,  # per statement: no WHERE before the next `;`
        re.compile(r"\bDELETE\s+FROM\b(?![^;]*\bWHERE\b)", re.IGNORECASE).search,
        "DELETE without WHERE clause is blocked",
    ),
    HardlineRule(_READ, re.compile(r"^/dev/(?!null$)").search, "reading device files is blocked"),
)
