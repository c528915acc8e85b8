"""The JSON Schemas (draft 2020-12) of the built-in tools' arguments (http-api §18.1).

Every schema is a closed object (``additionalProperties: false``); the ``default`` of each
optional argument is the one place the defaults are written (the handlers get them through
:func:`builtin_plugins.builtin_tools.with_defaults`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DB", "EDIT", "EXEC", "FIND", "GREP", "HTTP", "LIST", "READ", "WRITE"]

Schema = dict[str, Any]

#: read's ``limit`` (http-api §18.1).
READ_MAX = 1_048_576
#: The most entries or matches ``list``, ``find`` and ``grep`` return.
RESULTS_MAX = 10_000
#: ``timeout_ms`` of ``http`` and ``exec``: at most an hour, like ``runtime.tool_timeout_sec``.
TIMEOUT_MAX_MS = 3_600_000
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _object(required: tuple[str, ...], **properties: Schema) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _text(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _path(description: str, **extra: Any) -> Schema:
    return _text(f"{description} (relative to the workspace, or absolute)", minLength=1, **extra)


def _flag(description: str, default: bool) -> Schema:
    return {"type": "boolean", "description": description, "default": default}


def _count(description: str, default: int, minimum: int, maximum: int) -> Schema:
    return {
        "type": "integer",
        "description": description,
        "default": default,
        "minimum": minimum,
        "maximum": maximum,
    }


def _timeout(description: str) -> Schema:
    return _count(description, 5000, 1, TIMEOUT_MAX_MS)


READ = _object(
    ("path",),
    path=_path("File to read"),
    offset=_count("Byte offset to start at", 0, 0, 2**63 - 1),
    limit=_count("Bytes to read at most", READ_MAX, 1, READ_MAX),
)
LIST = _object(
    (),
    path=_path("Directory to list", default="."),
    recursive=_flag("List subdirectories too", False),
    max_entries=_count("Entries to return at most", 1000, 1, RESULTS_MAX),
)
FIND = _object(
    ("pattern",),
    pattern=_text(
        "Glob matched against names (against paths relative to 'path' when it contains '/')",
        minLength=1,
    ),
    path=_path("Directory to search", default="."),
    max_results=_count("Matches to return at most", 1000, 1, RESULTS_MAX),
)
GREP = _object(
    ("pattern",),
    pattern=_text("Python regular expression searched in each line", minLength=1),
    path=_path("File, or directory to search recursively", default="."),
    glob=_text("Only files whose name matches this glob", minLength=1, default="*"),
    ignore_case=_flag("Match case-insensitively", False),
    max_results=_count("Matching lines to return at most", 500, 1, RESULTS_MAX),
)
WRITE = _object(
    ("path", "content"),
    path=_path("File to write"),
    content=_text("Text to write (UTF-8)"),
    append=_flag("Append instead of replacing the file", False),
    create_dirs=_flag("Create missing parent directories", True),
)
EDIT = _object(
    ("path", "old_text", "new_text"),
    path=_path("File to edit"),
    old_text=_text("Exact text to replace", minLength=1),
    new_text=_text("Replacement text"),
    replace_all=_flag("Replace every occurrence instead of the first", False),
)
HTTP = _object(
    ("url",),
    url=_text("http:// or https:// URL", pattern="^[Hh][Tt][Tt][Pp][Ss]?://"),
    method={"type": "string", "enum": list(METHODS), "default": "GET"},
    headers={
        "type": "object",
        "description": "Request headers",
        "additionalProperties": {"type": "string"},
        "default": {},
    },
    body=_text("Request body (sent as UTF-8)"),
    timeout_ms=_timeout("Limit for the whole request, in milliseconds"),
)
EXEC = _object(
    ("command",),
    command=_text(
        "Shell command line (run by /bin/sh -c) when 'args' is empty, else the program to run",
        minLength=1,
    ),
    args={
        "type": "array",
        "description": "Arguments of the program (no shell)",
        "items": {"type": "string"},
        "default": [],
    },
    cwd=_path("Working directory (default: the workspace)"),
    timeout_ms=_timeout("Limit in milliseconds; the process group is killed after it"),
    detach=_flag("Start in the background and answer with its pid at once", False),
)
DB = _object(
    ("db_path", "sql"),
    db_path=_path("SQLite database file"),
    sql=_text("One SQL statement, with ? placeholders", minLength=1),
    params={
        "type": "array",
        "description": "Values of the ? placeholders, in order",
        "items": {"type": ["string", "number", "boolean", "null"]},
        "default": [],
    },
    operation={
        "type": "string",
        "description": "'query' reads rows (read-only); 'execute' changes the database and commits",
        "enum": ["query", "execute"],
        "default": "query",
    },
)
