"""The ``db`` tool on a real SQLite file (http-api §18.1)."""

from __future__ import annotations

import sqlite3

import pytest

from builtin_plugins.builtin_tools.db import ROWS_MAX
from sdk import ToolError


async def test_execute_commits_and_query_reads_columns_and_rows(run, workspace):
    created = await run(
        "db",
        db_path="app.db",
        operation="execute",
        sql="CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, avatar BLOB)",
    )
    assert created == {"rows_affected": 0}
    inserted = await run(
        "db",
        db_path="app.db",
        operation="execute",
        sql="INSERT INTO users (name, avatar) VALUES (?, ?), (?, NULL)",
        params=["ann", "x", "bob"],
    )
    assert inserted == {"rows_affected": 2}
    with sqlite3.connect(workspace / "app.db") as conn:  # committed: another connection sees it
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (2,)
        conn.execute("UPDATE users SET avatar = x'00ff' WHERE id = 1")
    out = await run(
        "db", db_path="app.db", sql="SELECT id, name, avatar FROM users WHERE id >= ?", params=[1]
    )
    assert out == {
        "columns": ["id", "name", "avatar"],
        "rows": [[1, "ann", "00ff"], [2, "bob", None]],
    }


async def test_query_is_read_only(run, workspace):
    sqlite3.connect(workspace / "ro.db").close()
    await run("db", db_path="ro.db", operation="execute", sql="CREATE TABLE t (x)")
    with pytest.raises(ToolError, match=r"^database error: attempt to write a readonly database$"):
        await run("db", db_path="ro.db", sql="INSERT INTO t VALUES (1)", operation="query")
    assert (await run("db", db_path="ro.db", sql="SELECT * FROM t"))["rows"] == []


@pytest.mark.parametrize("operation", ["query", "execute"])
async def test_no_statement_reaches_another_file(run, workspace, tmp_path, operation):
    await run("db", db_path="a.db", operation="execute", sql="CREATE TABLE t (x)")
    outside = tmp_path / "outside"
    outside.mkdir()
    for sql in [
        f"VACUUM INTO '{outside / 'copy.db'}'",
        f"ATTACH 'file:{outside / 'new.db'}?mode=rwc' AS o",
        f"ATTACH '{workspace / 'b.db'}' AS b",
    ]:
        with pytest.raises(ToolError, match=r"^database error: too many attached databases"):
            await run("db", db_path="a.db", operation=operation, sql=sql)
    assert list(outside.iterdir()) == [] and not (workspace / "b.db").exists()


async def test_query_rows_are_capped(run, workspace):
    await run("db", db_path="big.db", operation="execute", sql="CREATE TABLE t (x)")
    await run(
        "db",
        db_path=str(workspace / "big.db"),
        operation="execute",
        sql="INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        "WHERE x < ?) SELECT x FROM c",
        params=[ROWS_MAX + 5],
    )
    out = await run("db", db_path="big.db", sql="SELECT x FROM t ORDER BY x")
    assert len(out["rows"]) == ROWS_MAX == 10_000 and out["rows"][-1] == [ROWS_MAX]


async def test_errors_are_tool_errors(run, workspace):
    with pytest.raises(ToolError, match=r"^database not found: "):
        await run("db", db_path="nope.db", sql="SELECT 1")
    assert not (workspace / "nope.db").exists()
    await run("db", db_path="e.db", operation="execute", sql="CREATE TABLE t (x)")
    with pytest.raises(ToolError, match=r"^database error: no such table: missing$"):
        await run("db", db_path="e.db", sql="SELECT * FROM missing")
    with pytest.raises(ToolError, match=r"^database error: .*one statement at a time"):
        await run("db", db_path="e.db", operation="execute", sql="SELECT 1; SELECT 2")


async def test_a_statement_running_past_the_time_limit_is_interrupted(run, run_within):
    await run("db", db_path="slow.db", operation="execute", sql="CREATE TABLE t (x)")
    endless = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    with pytest.raises(ToolError, match=r"^database error: interrupted$"):
        await run_within(0.2, "db", db_path="slow.db", sql=endless)
