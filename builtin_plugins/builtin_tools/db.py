"""The ``db`` tool: one SQL statement on a SQLite file (http-api §18.1).

``query`` opens the file read-only (``mode=ro``) and answers ``{"columns", "rows"}`` (rows as
lists, at most :data:`ROWS_MAX`; BLOBs as lowercase hex); ``execute`` opens it read-write
(creating it if missing), commits and answers ``{"rows_affected"}`` (0 for statements that change
no rows, such as ``CREATE TABLE``). ``params`` bind the ``?`` placeholders in order. The statement
is interrupted when the call's time limit passes. No statement reaches another file: ``ATTACH``
and ``VACUUM`` (``INTO``) fail.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING, Any

from sdk import ToolContext, ToolError

from .common import Deadline, resolve

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ROWS_MAX", "run"]

#: ``query`` returns at most this many rows.
ROWS_MAX = 10_000
#: SQLite calls the deadline check every this many virtual machine instructions.
_PROGRESS_STEPS = 10_000


def run(args: dict[str, Any], tc: ToolContext) -> dict[str, Any]:
    """``db``: run ``sql`` with ``params`` as a ``query`` or an ``execute``."""
    path = resolve(tc, args["db_path"])
    query = args["operation"] == "query"
    if query and not path.is_file():
        raise ToolError(f"database not found: {path}")
    try:
        with contextlib.closing(_connect(path, read_only=query, tc=tc)) as conn:
            cursor = conn.execute(args["sql"], args["params"])
            if query:
                columns = [d[0] for d in cursor.description or ()]
                rows = [[_value(v) for v in row] for row in cursor.fetchmany(ROWS_MAX)]
                return {"columns": columns, "rows": rows}
            conn.commit()
            return {"rows_affected": max(cursor.rowcount, 0)}
    except sqlite3.Error as exc:
        raise ToolError(f"database error: {exc}") from None


def _connect(path: Path, *, read_only: bool, tc: ToolContext) -> sqlite3.Connection:
    target = f"{path.absolute().as_uri()}?mode=ro" if read_only else str(path)
    conn = sqlite3.connect(target, uri=read_only, timeout=min(tc.timeout_sec, 5.0))
    # No other database file: ATTACH (and VACUUM INTO, which attaches its target) could open
    # or create any file, outside the workspace or read-write beside a read-only query.
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    deadline = Deadline.of(tc)
    conn.set_progress_handler(lambda: deadline.passed, _PROGRESS_STEPS)  # true interrupts
    return conn


def _value(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value
