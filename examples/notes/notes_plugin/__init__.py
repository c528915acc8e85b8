"""notes: an example plugin with HTTP routes, its own table and a UI page.

- ``register_migrations`` creates the table ``notes_items`` in the runtime's store (a plugin's
  tables should carry its name as a prefix).
- ``register_routes`` serves ``/api/v1/notes/items`` (list, add) and ``/items/{id}`` (get, delete).
- ``ui/index.html`` is listed by ``GET /ui/pages`` (the manifest's ``[ui] pages``) and served at
  ``/api/v1/notes/ui/index.html``.
"""

from __future__ import annotations

import time

from attrs import frozen

from sdk import Invalid, Migration, NotFound, Route, hookimpl

from . import store


@frozen(kw_only=True)
class NewNote:
    text: str


@hookimpl
def register_migrations(ctx):
    return [
        Migration(
            version=1,
            sql="""
            CREATE TABLE notes_items (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                text TEXT NOT NULL,
                created_at_ms INTEGER NOT NULL
            );
            """,
        )
    ]


@hookimpl
def register_routes(ctx):
    return [
        Route(method="GET", path="/items", handler=list_items),
        Route(method="POST", path="/items", handler=add_item, body=NewNote),
        Route(method="GET", path="/items/{id}", handler=get_item),
        Route(method="DELETE", path="/items/{id}", handler=delete_item),
    ]


async def list_items(ctx):
    return {"items": await store.all_items(ctx.store)}


async def add_item(ctx, body: NewNote):
    text = body.text.strip()
    if not text or len(text) > 2000:
        raise Invalid("field 'text' must have 1 to 2000 characters")
    note = await store.add(ctx.store, text, int(time.time() * 1000))
    await ctx.bus.publish("note:created", {"id": note["id"]})
    return note


async def get_item(ctx, id: str):
    note = await store.one(ctx.store, _number(id))
    if note is None:
        raise NotFound(f"note not found: {id}")
    return note


async def delete_item(ctx, id: str):
    if not await store.delete(ctx.store, _number(id)):
        raise NotFound(f"note not found: {id}")
    return {"ok": True, "id": int(id)}


def _number(value: str) -> int:
    if not value.isdigit():
        raise NotFound(f"note not found: {value}")
    return int(value)
