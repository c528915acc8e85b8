"""The commands a shell line runs, for the ``exec`` rules (http-api §18.2).

A line is cut into simple commands at ``;``, ``&&``, ``||``, ``|``, ``&``, ``(``, ``)``, ``{``,
``}``, backticks and newlines (so ``$(…)`` and `` `…` `` count too); a redirection (``>``,
``2>&1``, ``<``) and its target stay in their command. Each simple command yields its program
(base name) with its arguments, after leading keywords (``if``, ``then``, ``!``, …) and
``NAME=value`` assignments; a wrapper (``sudo``, ``env``, ``nohup``, …) yields itself and then
the command it runs, and ``sh -c``/``eval`` yield themselves and then the commands of their
string. This is a reading for safety checks, not a shell: quoting is honoured, but expansions
are not performed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from functools import lru_cache
from itertools import takewhile
from pathlib import PurePosixPath

__all__ = ["KEYWORDS", "SHELLS", "WRAPPERS", "Command", "commands"]

Command = tuple[str, tuple[str, ...]]  # (base name, arguments)

#: Programs that run the rest of their command as a command (their options are skipped).
WRAPPERS = frozenset({"sudo", "doas", "env", "nohup", "nice", "time", "exec", "command"})
#: Shell keywords that may precede a command.
KEYWORDS = frozenset({"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!"})
#: Shells whose ``-c`` string is a command line of its own (``eval`` takes one directly).
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})
_OPERATORS = frozenset("();<>|&")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@lru_cache(maxsize=256)
def commands(line: str) -> tuple[Command, ...]:
    """The commands ``line`` runs, in order."""
    found: list[Command] = []
    for words in _simple_commands(_words(line)):
        found += _unwrap(words)
    return tuple(found)


def _words(line: str) -> list[str]:
    """Shell words and operator tokens (backticks and newlines count as ``;``)."""
    line = line.replace("`", ";").replace("\n", ";")
    try:
        return _lex(line)
    except ValueError:  # unbalanced quotes or a final backslash: read the line without them
        return _lex(re.sub(r"[\"'\\]", "", line))


def _lex(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # a `#` comment ends at its newline, which became `;` above
    return list(lexer)


def _simple_commands(words: Sequence[str]) -> list[list[str]]:
    """The runs of words between control operators and braces; a redirection operator and
    its target are left out."""
    runs: list[list[str]] = [[]]
    target = False
    for word in words:
        operator = bool(word) and set(word) <= _OPERATORS
        if operator and ("<" in word or ">" in word):
            target = True
        elif operator or word in ("{", "}"):
            runs.append([])
        elif target:
            target = False
        else:
            runs[-1].append(word)
    return [run for run in runs if run]


def _unwrap(words: Sequence[str]) -> list[Command]:
    start = 0
    while start < len(words) and (words[start] in KEYWORDS or _ASSIGNMENT.match(words[start])):
        start += 1
    if start == len(words):
        return []
    name, rest = PurePosixPath(words[start]).name, list(words[start + 1 :])
    command: Command = (name, tuple(rest))
    options = list(takewhile(lambda word: word.startswith("-"), rest))
    if name in WRAPPERS:
        return [command, *_unwrap(rest[len(options) :])]
    if name == "eval":
        return [command, *commands(" ".join(rest))]
    if name in SHELLS and any("c" in o for o in options if not o.startswith("--")):
        return [command, *commands(" ".join(rest[len(options) :]))]
    return [command]
