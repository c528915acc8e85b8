"""The skill registry: what is loaded, enabled flags and history in the store, incremental reload.

A reload pass (start-up, ``/skills/reload``, rollback, the watcher) reads every skill file and
hashes it; only files whose SHA-256 differs from the previous pass are parsed again (``parses``
counts the parses, for the benchmark). Names are then assigned in path order: the first file
defining a name wins, a later one fails as a duplicate, and a file that fails to load keeps the
skill it defined before with its previous content (formats §2.5). The result is compared with the
registry to report what was inserted, updated and removed; history records are added for new
content (§2.4) and the search index is kept in step.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import define, field, frozen

from sdk import Failure, Migration, NotFound, Unrecoverable, now_ms
from sdk.files import write_atomic

from .loader import LoadError, Skill, discover, matches, parse
from .search import SearchIndex

if TYPE_CHECKING:
    from sdk import Event, Store

__all__ = ["MIGRATIONS", "HistoryRecord", "Registry", "ReloadResult"]

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE skill_state (
            name TEXT PRIMARY KEY,
            enabled INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL
        );
        CREATE TABLE skill_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            format TEXT NOT NULL,
            path TEXT NOT NULL,
            content TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL
        );
        CREATE INDEX skill_history_name ON skill_history (name, id);
        """,
    )
]
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@define
class _File:
    """One skill file as seen by the last pass: its hash and what parsing it gave."""

    hash: str
    skill: Skill | None
    error: str | None


@frozen(kw_only=True)
class ReloadResult:
    inserted: list[str] = field(factory=list)
    updated_same_version: list[str] = field(factory=list)
    updated_new_version: list[str] = field(factory=list)
    removed: list[str] = field(factory=list)
    failed: list[dict[str, str]] = field(factory=list)
    new_failures: int = 0

    @property
    def changed(self) -> bool:
        return bool(
            self.inserted
            or self.updated_same_version
            or self.updated_new_version
            or self.removed
            or self.new_failures
        )

    def payload(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted,
            "updated_same_version": self.updated_same_version,
            "updated_new_version": self.updated_new_version,
            "removed": self.removed,
            "failed": self.failed,
        }

    def detail(self) -> str:
        updated = len(self.updated_same_version) + len(self.updated_new_version)
        return (
            f"inserted={len(self.inserted)} updated={updated} "
            f"removed={len(self.removed)} failed={len(self.failed)}"
        )


@frozen(kw_only=True)
class HistoryRecord:
    version: str
    format: str
    path: str
    content: str
    content_hash: str
    created_at_ms: int


class Registry:
    """The loaded skills of one skills directory."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = root
        self.skills: dict[str, Skill] = {}
        self.loaded_at: dict[str, int] = {}
        self.enabled: dict[str, bool] = {}
        self.index = SearchIndex()
        self.parses = 0
        self.lock = asyncio.Lock()
        self._files: dict[str, _File] = {}
        self._latest: dict[str, str] = {}  # name -> content hash of its newest history record
        self._triggered: list[Skill] = []

    async def open(self) -> None:
        """Read the enabled flags and the newest history hashes from the store."""

        def read(c: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            flags = c.execute("SELECT name, enabled FROM skill_state").fetchall()
            latest = c.execute(
                "SELECT name, content_hash FROM skill_history WHERE id IN"
                " (SELECT max(id) FROM skill_history GROUP BY name)"
            ).fetchall()
            return flags, latest

        flags, latest = await self.store.read(read)
        self.enabled = {name: bool(on) for name, on in flags}
        self._latest = {name: digest for name, digest in latest}

    def close(self) -> None:
        self.index.close()

    # --- queries -----------------------------------------------------------------------------

    def is_enabled(self, name: str) -> bool:
        return self.enabled.get(name, True)

    def matching(self, event: Event) -> list[Skill]:
        """Enabled skills whose event triggers match ``event``, by name."""
        return [
            s
            for s in self._triggered
            if self.is_enabled(s.name)
            and matches(s, event.event_type, event.source, event.priority)
        ]

    async def history(self, name: str) -> list[HistoryRecord]:
        rows = await self.store.fetchall(
            "SELECT version, format, path, content, content_hash, created_at_ms"
            " FROM skill_history WHERE name = ? ORDER BY id DESC",
            (name,),
        )
        return [HistoryRecord(**dict(row)) for row in rows]

    # --- enabled flags -------------------------------------------------------------------------

    async def set_enabled(self, name: str, enabled: bool) -> None:
        if name not in self.skills:
            raise NotFound(f"skill not found: {name}")
        await self.store.execute(
            "INSERT INTO skill_state (name, enabled, updated_at_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled,"
            " updated_at_ms = excluded.updated_at_ms",
            (name, int(enabled), now_ms()),
        )
        self.enabled[name] = enabled

    # --- reloading -----------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """One incremental pass over the directory (serialised with other passes)."""
        async with self.lock:
            return await self._pass()

    async def _pass(self) -> ReloadResult:
        scanned, parsed = await asyncio.to_thread(self._scan, self.root, dict(self._files))
        self.parses += parsed
        return await self._apply(scanned)

    @staticmethod
    def _scan(root: Path, known: dict[str, _File]) -> tuple[list[tuple[str, _File, bool]], int]:
        """Read and hash every skill file; parse those whose content changed.
        ``[(path, file, fresh)]`` in path order and the number of parses."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.R_OK | os.X_OK):
                raise PermissionError(f"permission denied: '{root}'")
            paths = discover(root)
        except OSError as exc:
            raise Failure(f"cannot read skills directory {root}: {exc.strerror or exc}") from None
        out: list[tuple[str, _File, bool]] = []
        parsed = 0
        for path in paths:
            key = str(path)
            try:
                with open(key, "rb") as f:
                    data = f.read()
            except OSError as exc:
                out.append((key, _File("", None, f"cannot read: {exc.strerror or exc}"), True))
                continue
            digest = hashlib.sha256(data).hexdigest()
            old = known.get(key)
            if old is not None and old.hash == digest:
                out.append((key, old, False))
                continue
            parsed += 1
            try:
                skill = parse(path, data.decode("utf-8"), digest)
            except UnicodeDecodeError:
                out.append((key, _File(digest, None, "not UTF-8 text"), True))
            except LoadError as exc:
                out.append((key, _File(digest, None, str(exc)), True))
            else:
                out.append((key, _File(digest, skill, None), True))
        return out, parsed

    async def _apply(self, scanned: list[tuple[str, _File, bool]]) -> ReloadResult:
        before = self.skills
        kept = {s.path: s for s in before.values()}
        after: dict[str, Skill] = {}
        failed: list[dict[str, str]] = []
        new_failures = 0
        for path, file, fresh in scanned:
            candidate = file.skill
            if candidate is None:
                failed.append({"path": path, "error": file.error or "failed"})
                new_failures += fresh
                candidate = kept.get(path)  # keeps its previous content (formats §2.5)
                if candidate is None or candidate.name in after:
                    continue
            elif candidate.name in after:
                first = after[candidate.name].path
                failed.append(
                    {
                        "path": path,
                        "error": f"duplicate skill name '{candidate.name}' (already defined in {first})",
                    }
                )
                new_failures += fresh
                continue
            after[candidate.name] = candidate
        result = ReloadResult(
            inserted=sorted(n for n in after if n not in before),
            updated_same_version=sorted(
                n
                for n, s in after.items()
                if n in before and _differs(before[n], s) and before[n].version == s.version
            ),
            updated_new_version=sorted(
                n
                for n, s in after.items()
                if n in before and _differs(before[n], s) and before[n].version != s.version
            ),
            removed=sorted(n for n in before if n not in after),
            failed=failed,
            new_failures=new_failures,
        )
        await self._record(after, result)
        changed = [
            after[n]
            for n in (*result.inserted, *result.updated_same_version, *result.updated_new_version)
        ]
        self.index.update(changed, result.removed)
        now = now_ms()
        loaded_at = {n: t for n, t in self.loaded_at.items() if n in after}
        loaded_at.update((s.name, now) for s in changed)
        self.skills, self.loaded_at = after, loaded_at
        self._files = {path: file for path, file, _ in scanned}
        self._triggered = [after[n] for n in sorted(after) if after[n].triggers]
        return result

    async def _record(self, after: dict[str, Skill], result: ReloadResult) -> None:
        """History records for new content, enabled rows for skills new to the registry."""
        now = now_ms()
        history = [
            (s.name, s.version, s.format, s.path, s.content, s.content_hash, now)
            for s in after.values()
            if self._latest.get(s.name) != s.content_hash
        ]
        fresh = [(n, int(after[n].enabled), now) for n in result.inserted if n not in self.enabled]
        if not history and not fresh:
            return

        def write(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO skill_history (name, version, format, path, content, content_hash,"
                " created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                history,
            )
            c.executemany(
                "INSERT OR IGNORE INTO skill_state (name, enabled, updated_at_ms) VALUES (?, ?, ?)",
                fresh,
            )

        await self.store.write(write)
        self._latest.update((row[0], row[5]) for row in history)
        self.enabled.update((name, bool(on)) for name, on, _ in fresh)

    # --- rollback ------------------------------------------------------------------------------

    async def rollback(self, name: str, version: str) -> ReloadResult:
        """Restore the newest history record of ``name`` with ``version`` (http-api §4)."""
        async with self.lock:
            record = next((r for r in await self.history(name) if r.version == version), None)
            if record is None:
                raise NotFound(f"skill version {name}@{version} not found")
            current = self.skills.get(name)
            if current is not None:
                target = Path(current.path)
            elif record.format == "skill_md":
                target = self.root / _UNSAFE.sub("_", name) / "SKILL.md"
            else:
                target = self.root / f"{_UNSAFE.sub('_', name)}.yaml"
            try:
                previous = target.read_bytes() if target.exists() else None
                await asyncio.to_thread(write_atomic, target, record.content.encode("utf-8"))
            except OSError as exc:
                raise Failure(f"cannot write {target}: {exc.strerror or exc}") from None
            result = await self._pass()
            loaded = self.skills.get(name)
            if (
                loaded is not None
                and loaded.path == str(target)
                and (loaded.content_hash == record.content_hash)
            ):
                return result
            reason = next(
                (f["error"] for f in result.failed if f["path"] == str(target)),
                f"the file does not define skill '{name}'",
            )
            try:
                if previous is None:
                    target.unlink(missing_ok=True)
                else:
                    await asyncio.to_thread(write_atomic, target, previous)
            except OSError as exc:
                raise Failure(f"cannot restore {target}: {exc.strerror or exc}") from None
            await self._pass()
            raise Unrecoverable(f"rolled-back skill failed to load: {reason}")


def _differs(old: Skill, new: Skill) -> bool:
    return old.content_hash != new.content_hash or old.path != new.path
