"""``/skills/search`` (http-api §4): BM25 over name, description and tags, on SQLite FTS5.

The index is derived data, rebuilt from the registry at every start, so it lives in a private
in-memory SQLite database of the plugin rather than in the runtime store. The FTS5 table has the
three fields as columns; each skill is one row.

Why the score is not FTS5's own ``bm25()`` (docs/decisions.md, "Skill search"): FTS5's ``bm25``
is the negative of a BM25 over the row as *one* document (document length = all columns
together, one average over all columns, document frequency = rows containing the term in any
column, column weights only scale the term frequency) with the IDF ``ln((N-n+0.5)/(n+0.5))``
floored at 1e-6. The spec sums a BM25 *per field*. So FTS5 is used for what it does well
(tokenised storage, the inverted index, per-column document frequencies through ``fts5vocab``
``col``, per-row per-column term frequencies through ``fts5vocab`` ``instance``) and the spec's
formula is evaluated in the same SQL statement:

    score(d) = Σ_fields Σ_t IDF_f(t) · tf·(k1+1) / (tf + k1·(1 − b + b·len_f(d)/avgdl_f))
    IDF_f(t) = ln(1 + (N − n_f(t) + 0.5) / (n_f(t) + 0.5))

with k1 = 1.2, b = 0.75, N the number of skills, n_f(t) the number of skills whose field f
contains t, len_f the field's token count and avgdl_f its mean. Text is tokenised in Python
(maximal runs of letters and digits, lower-cased) and stored as space-separated tokens under
FTS5's ``ascii`` tokenizer, so FTS5 sees exactly the spec's tokens.
"""

from __future__ import annotations

import heapq
import math
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .loader import tokens

if TYPE_CHECKING:
    from .loader import Skill

__all__ = ["FIELDS", "K1", "B", "SearchIndex", "hit_fields"]

K1, B = 1.2, 0.75
FIELDS = ("name", "description", "tags")

_SCHEMA = """
CREATE TABLE docs (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, version TEXT NOT NULL,
    len_name INTEGER NOT NULL, len_description INTEGER NOT NULL, len_tags INTEGER NOT NULL
);
CREATE VIRTUAL TABLE fts USING fts5(name, description, tags, tokenize = 'ascii', detail = full);
CREATE VIRTUAL TABLE fts_col USING fts5vocab(fts, 'col');
CREATE VIRTUAL TABLE fts_inst USING fts5vocab(fts, 'instance');
"""


def _fields(skill: Skill) -> tuple[list[str], list[str], list[str]]:
    return (
        tokens(skill.name),
        tokens(skill.description),
        [t for tag in skill.search_tags for t in tokens(tag)],
    )


class SearchIndex:
    """The FTS5 index of the registry's skills; :meth:`put` and :meth:`remove` keep it in step."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        # per field: token count by row, and term frequencies above 1 by (row, term); the FTS5
        # rows hold each field's distinct tokens, so a MATCH tells presence, these the rest
        self._lens: tuple[dict[int, int], ...] = ({}, {}, {})
        self._extra: tuple[dict[str, dict[int, int]], ...] = ({}, {}, {})
        self._totals = dict.fromkeys(FIELDS, 0)
        self._next = 1

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> None:
        self._db.close()

    def update(self, put: Iterable[Skill], remove: Iterable[str]) -> None:
        """Replace the rows of ``put`` and drop those of ``remove``, in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            for name in remove:
                self._remove(name)
            for skill in put:
                self._remove(skill.name)
                fields = _fields(skill)
                doc_id, self._next = self._next, self._next + 1
                db.execute(
                    "INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?)",
                    (doc_id, skill.name, skill.version, *(len(f) for f in fields)),
                )
                counts = [Counter(f) for f in fields]
                db.execute(
                    "INSERT INTO fts (rowid, name, description, tags) VALUES (?, ?, ?, ?)",
                    (doc_id, *(" ".join(c) for c in counts)),
                )
                self._ids[skill.name] = doc_id
                self._names[doc_id] = skill.name
                for slot, (key, value) in enumerate(zip(FIELDS, fields, strict=True)):
                    self._totals[key] += len(value)
                    self._lens[slot][doc_id] = len(value)
                    for t, tf in counts[slot].items():
                        if tf > 1:
                            self._extra[slot].setdefault(t, {})[doc_id] = tf
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _remove(self, name: str) -> None:
        doc_id = self._ids.pop(name, None)
        if doc_id is None:
            return
        del self._names[doc_id]
        row = self._db.execute(
            "SELECT name, description, tags FROM fts WHERE rowid = ?", (doc_id,)
        ).fetchone()
        for slot, key in enumerate(FIELDS):
            self._totals[key] -= self._lens[slot].pop(doc_id)
            for t in row[slot].split():
                docs = self._extra[slot].get(t)
                if docs is not None and docs.pop(doc_id, None) is not None and not docs:
                    del self._extra[slot][t]
        self._db.execute("DELETE FROM docs WHERE id = ?", (doc_id,))
        self._db.execute("DELETE FROM fts WHERE rowid = ?", (doc_id,))

    def search(self, query: str, limit: int) -> list[tuple[str, int]]:
        """``[(name, score)]``: the best ``limit`` hits, by score descending, then name."""
        terms = sorted(set(tokens(query)))
        n = len(self._ids)
        if not terms or not n:
            return []
        marks = ",".join("?" * len(terms))
        # n_f(t): the skills whose field f contains t (fts5vocab 'col': documents per column)
        df = self._db.execute(f"SELECT term, col, doc FROM fts_col WHERE term IN ({marks})", terms)
        scores: dict[int, float] = defaultdict(float)
        for term, col, docs in df.fetchall():
            slot = FIELDS.index(col)
            idf = math.log(1 + (n - docs + 0.5) / (docs + 0.5))
            total = self._totals[col]
            per_token = K1 * B * n / total if total else 0.0
            lens, extra = self._lens[slot], self._extra[slot].get(term, {})
            weight, base = idf * (K1 + 1), 1 + K1 * (1 - B)
            # the skills whose field contains the term (rowids only: cheap to fetch)
            rows = self._db.execute(
                "SELECT rowid FROM fts WHERE fts MATCH ?", (f'{col} : "{term}"',)
            ).fetchall()
            for (doc,) in rows:
                if doc in extra:
                    tf = extra[doc]
                    scores[doc] += weight * tf / (tf + base - 1 + per_token * lens[doc])
                else:
                    scores[doc] += weight / (base + per_token * lens[doc])
        if not scores:
            return []
        # the limit-th best raw score bounds the rounded scores that can make the cut
        floor = heapq.nlargest(limit, scores.values())[-1]
        cut = (math.floor(floor * 100 + 0.5) - 0.5) / 100 - 1e-9  # float slack
        names = self._names
        best = sorted(
            (-math.floor(s * 100 + 0.5), names[d]) for d, s in scores.items() if s >= cut
        )[:limit]
        return [(name, -neg) for neg, name in best]


def hit_fields(skill: Skill, query: str) -> tuple[str, str]:
    """``(matched_field, snippet)`` of a hit for the trimmed, lower-cased query (http-api §4)."""
    if query in skill.name.lower():
        return "name", skill.name
    at = skill.description.lower().find(query)
    if at >= 0:
        return "description", skill.description[max(0, at - 16) : at + len(query) + 16]
    for tag in skill.search_tags:
        if query in tag.lower():
            return "tags", tag
    return "content", skill.description[:40]
