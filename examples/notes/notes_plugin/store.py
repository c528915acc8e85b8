"""The plugin's queries on its table ``notes_items`` (a submodule, imported relatively)."""

from __future__ import annotations

from typing import Any

_COLUMNS = "id, text, created_at_ms"


def _row(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "text": row["text"], "created_at_ms": row["created_at_ms"]}


async def all_items(store) -> list[dict[str, Any]]:
    rows = await store.fetchall(f"SELECT {_COLUMNS} FROM notes_items ORDER BY id")
    return [_row(r) for r in rows]


async def one(store, note_id: int) -> dict[str, Any] | None:
    rows = await store.fetchall(f"SELECT {_COLUMNS} FROM notes_items WHERE id = ?", (note_id,))
    return _row(rows[0]) if rows else None


async def add(store, text: str, now_ms: int) -> dict[str, Any]:
    def insert(conn):
        cur = conn.execute(
            "INSERT INTO notes_items (text, created_at_ms) VALUES (?, ?)", (text, now_ms)
        )
        return cur.lastrowid

    note_id = await store.write(insert)
    return {"id": note_id, "text": text, "created_at_ms": now_ms}


async def delete(store, note_id: int) -> bool:
    return await store.execute("DELETE FROM notes_items WHERE id = ?", (note_id,)) > 0
