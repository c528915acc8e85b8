"""UI pages: ``GET /ui/pages`` lists the pages that running plugins contribute (http-api §22).

Pages come from two places, per plugin: the ``[ui] pages`` of an installed plugin's manifest
(``formats.md`` §5.2, read from the plugin's ``ui_pages`` in ``/plugins``), then what its
``register_ui_pages`` hook returns. They are gathered on every request, so the pages of a
disabled or uninstalled plugin disappear at once. The page files themselves are served by the
kernel's router at ``/api/v1/<plugin>/ui/<path>`` (``kernel/static.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sdk import PluginContext, Route, UiPage, hookimpl

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_MAX_LABEL = 64


@hookimpl
def register_routes(ctx: PluginContext) -> list[Route]:
    return [
        Route(method="GET", path="/ui/pages", handler=pages, public=True, availability="always")
    ]


def _page(item: Any) -> UiPage:
    """A declared page as a checked :class:`UiPage` with its label. Paths are relative to the
    plugin's root (``ui/index.html``): the hook's as declared, the manifest's as the installer
    lists them in the plugin's ``ui_pages`` (it prefixes the manifest's ``path`` with ``ui/``)."""
    if isinstance(item, UiPage):
        page = item
    elif isinstance(item, str):
        page = UiPage(id=item)
    elif isinstance(item, Mapping):
        page = UiPage(
            id=str(item.get("id", "")),
            label=str(item.get("label") or ""),
            path=str(item.get("path") or "ui/index.html"),
        )
    else:
        raise ValueError(f"not a page: {item!r}")
    path = page.path
    if not _ID.match(page.id):
        raise ValueError(f"invalid page id {page.id!r}")
    if len(page.label) > _MAX_LABEL:
        raise ValueError(f"page {page.id}: label longer than {_MAX_LABEL} characters")
    parts = path.split("/")
    if parts[0] != "ui" or len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"page {page.id}: path {page.path!r} is not a file of the ui/ folder")
    label = page.label or page.id[:1].upper() + page.id[1:]
    return UiPage(id=page.id, label=label, path=path)


async def pages(ctx: PluginContext) -> list[dict[str, str]]:
    running = {p.name: p for p in ctx.plugins.list() if p.state == "running"}
    declared: dict[str, list[Any]] = {name: list(info.ui_pages) for name, info in running.items()}
    for c in ctx.plugins.contributions("register_ui_pages"):
        declared.setdefault(c.plugin, []).append(c.item)
    answer: list[dict[str, str]] = []
    for plugin in sorted(declared):
        seen: set[str] = set()
        for item in declared[plugin]:
            try:
                page = _page(item)
            except ValueError as exc:
                ctx.log.error("plugin %s: ignoring UI page: %s", plugin, exc)
                continue
            if page.id in seen:
                ctx.log.error("plugin %s: ignoring UI page: id %s listed twice", plugin, page.id)
                continue
            seen.add(page.id)
            answer.append(
                {
                    "id": page.id,
                    "label": page.label,
                    "plugin": plugin,
                    "url": f"/api/v1/{plugin}/{page.path}",
                }
            )
    return answer
