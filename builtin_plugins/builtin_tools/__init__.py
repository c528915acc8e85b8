"""builtin-tools: the nine built-in tools agents call and operators run (http-api §18.1).

``read``, ``list``, ``find``, ``grep`` (low), ``write``, ``edit``, ``http`` (medium), ``exec`` and
``db`` (high). The ``tools`` plugin runs every call through the schema, the tool guards (hardline
rules, allowlist, §18.2), approval and the time limit before a handler here runs; a handler gets
the validated arguments with the schema's defaults filled in, resolves relative paths against
``tc.workspace`` and raises :class:`~sdk.ToolError` on failure.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from sdk import PluginContext, Sensitivity, Tool, ToolContext, hookimpl

from . import db, files, process, schemas, web

__all__ = ["TABLE", "with_defaults"]

Handler = Callable[[dict[str, Any], ToolContext], Any]

#: name → (sensitivity, description, argument schema, handler), as http-api §18.1 lists them.
TABLE: dict[str, tuple[Sensitivity, str, Mapping[str, Any], Handler]] = {
    "read": ("low", "Read a text file (UTF-8), optionally a byte range", schemas.READ, files.read),
    "list": ("low", "List the entries of a directory", schemas.LIST, files.list_dir),
    "find": ("low", "Find files and directories by glob pattern", schemas.FIND, files.find),
    "grep": ("low", "Search files for lines matching a regex", schemas.GREP, files.grep),
    "write": ("medium", "Write or append to a text file", schemas.WRITE, files.write),
    "edit": ("medium", "Replace exact text in a file", schemas.EDIT, files.edit),
    "http": ("medium", "Send an HTTP request and return the response", schemas.HTTP, web.request),
    "exec": ("high", "Run a command and return its output", schemas.EXEC, process.run),
    "db": ("high", "Run one SQL statement on a SQLite database file", schemas.DB, db.run),
}


@hookimpl
def register_tools(ctx: PluginContext) -> list[Tool]:
    return [
        Tool(
            name=name,
            description=description,
            handler=_with_schema_defaults(parameters, handler),
            parameters=parameters,
            sensitivity=sensitivity,
        )
        for name, (sensitivity, description, parameters, handler) in TABLE.items()
    ]


def with_defaults(schema: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` (already valid) with the ``default`` of every missing property, and integers as
    ``int`` (JSON Schema counts ``5.0`` as an integer)."""
    properties: Mapping[str, Mapping[str, Any]] = schema["properties"]
    out = {k: copy.deepcopy(p["default"]) for k, p in properties.items() if "default" in p}
    out.update(args)
    for key, prop in properties.items():
        if prop.get("type") == "integer" and key in out:
            out[key] = int(out[key])
    return out


def _with_schema_defaults(schema: Mapping[str, Any], handler: Handler) -> Handler:
    """``handler`` called with :func:`with_defaults` applied; sync stays sync (the ``tools``
    plugin runs it in a worker thread), async stays async."""
    if inspect.iscoroutinefunction(handler):

        async def run_async(args: dict[str, Any], tc: ToolContext) -> Any:
            return await handler(with_defaults(schema, args), tc)

        return functools.wraps(handler)(run_async)

    def run(args: dict[str, Any], tc: ToolContext) -> Any:
        return handler(with_defaults(schema, args), tc)

    return functools.wraps(handler)(run)
