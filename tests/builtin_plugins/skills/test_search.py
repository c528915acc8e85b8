"""``/skills/search`` (http-api §4): per-field BM25 on the FTS5 index, checked against an
independent implementation of the spec's formula, plus snippet and matched_field."""

from __future__ import annotations

import math
import re
import sqlite3

from builtin_plugins.skills.loader import Skill, Trigger
from builtin_plugins.skills.search import SearchIndex

CORPUS = {
    "pdf-summary.yaml": "name: pdf-summary\ndescription: Summarize PDF documents into short notes\ntags: [pdf, writing]\n",
    "summarize.yaml": "name: summarize\ndescription: Summarize any text\ntags: [writing]\ntriggers: [tl;dr]\n",
    "translate.yaml": "name: translate\ndescription: Translate text between languages, keeps the summary style\ntags: [language]\n",
    "notes.yaml": "name: notes\ndescription: Keep notes of meetings\ntags: [notes, meetings, summarize]\n",
    "inbox.yaml": "name: inbox-watch\ndescription: React to new files\ntriggers: [{event_types: [file_created]}]\n",
    "café.yaml": "name: café\ndescription: Überblick über Kaffee-Sorten\ntags: [Kaffee]\n",
}


def toks(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def reference(skills: list[Skill], query: str) -> list[tuple[str, int]]:
    """The spec's BM25, written independently: per field, k1 1.2, b 0.75, summed over fields."""
    fields = {
        s.name: [toks(s.name), toks(s.description), [t for tag in s.search_tags for t in toks(tag)]]
        for s in skills
    }
    n = len(skills)
    avg = [sum(len(f[i]) for f in fields.values()) / n for i in range(3)]
    scores = {}
    for name, fs in fields.items():
        total, hit = 0.0, False
        for term in set(toks(query)):
            for i, field in enumerate(fs):
                tf = field.count(term)
                if not tf:
                    continue
                hit = True
                df = sum(term in other[i] for other in fields.values())
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                total += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(field) / avg[i]))
        if hit:
            scores[name] = math.floor(total * 100 + 0.5)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


async def test_ranking_on_a_small_corpus(start):
    env = await start(CORPUS)
    status, body = await env.get("/skills/search", query_string={"q": "summarize notes"})
    assert status == 200
    # notes: "notes" in name, description and tags, "summarize" in tags; summarize: in name and
    # description; pdf-summary: both words in a longer description only; translate has
    # "summary", a different token, and is no hit.
    assert [i["name"] for i in body["items"]] == ["notes", "summarize", "pdf-summary"]
    skills = list(env.skills.registry.skills.values())
    assert [(i["name"], i["score"]) for i in body["items"]] == reference(skills, "summarize notes")
    for q in ("summarize", "text", "pdf", "file_created", "tl;dr", "kaffee", "CAFÉ", "writing text"):
        _, found = await env.get("/skills/search", query_string={"q": q})
        assert [(i["name"], i["score"]) for i in found["items"]] == reference(skills, q), q


async def test_fts5_bm25_differs_from_the_spec_and_is_not_used_for_scores():
    """Why the index computes the score itself (docs/decisions.md): FTS5's bm25() is negative
    and measures the whole row, not each field."""
    # "alpha" in the name of one skill only, but in the descriptions of several others
    docs = [("alpha", " ".join(f"w{i}" for i in range(20))), ("bee", "alpha")]
    docs += [(f"other{i}", "alpha x") for i in range(3)] + [(f"p{i}", "y") for i in range(5)]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(name, description, tags, tokenize='ascii')")
    db.executemany("INSERT INTO t VALUES (?, ?, '')", docs)
    fts5 = db.execute("SELECT name, bm25(t) FROM t WHERE t MATCH 'alpha' ORDER BY bm25(t)").fetchall()
    assert all(score < 0 for _, score in fts5)
    # FTS5: one document per row (the long description buries the name match), one document
    # frequency over all columns (IDF floored to 1e-6 here): the name match comes last.
    assert fts5[0][0] == "bee" and fts5[-1][0] == "alpha"
    index = SearchIndex()
    skills = [Skill(name=name, description=description) for name, description in docs]
    index.update(skills, [])
    ours = index.search("alpha", 10)
    assert ours == reference(skills, "alpha")
    assert [name for name, _ in ours][:2] == ["alpha", "bee"]  # per field: a rare name match wins
    index.close()


async def test_matched_field_and_snippet(start):
    env = await start(CORPUS)

    async def hit(q: str, name: str) -> tuple[str, str]:
        _, body = await env.get("/skills/search", query_string={"q": q, "limit": "100"})
        item = next(i for i in body["items"] if i["name"] == name)
        assert item["version"] == "0.1.0"
        return item["matched_field"], item["snippet"]

    assert await hit("  PDF  ", "pdf-summary") == ("name", "pdf-summary")
    assert await hit("documents into", "pdf-summary") == ("description", "Summarize PDF documents into short notes")
    assert await hit("keeps the summary", "translate") == ("description", "ween languages, keeps the summary style")
    assert await hit("language", "translate") == ("description", "te text between languages, keeps the sum")
    assert await hit("meetings summarize", "notes") == ("content", "Keep notes of meetings")
    assert await hit("created", "inbox-watch") == ("tags", "file_created")
    assert await hit("kaffee", "café") == ("description", "Überblick über Kaffee-Sorten")


async def test_empty_query_no_tokens_and_limit(start):
    env = await start({f"s{i}.yaml": f"name: s{i}\ndescription: common word {i}\n" for i in range(120)})
    assert (await env.get("/skills/search"))[1] == {"items": []}
    assert (await env.get("/skills/search", query_string={"q": "   "}))[1] == {"items": []}
    assert (await env.get("/skills/search", query_string={"q": "!!"}))[1] == {"items": []}
    assert (await env.get("/skills/search", query_string={"q": "absent"}))[1] == {"items": []}
    assert len((await env.get("/skills/search", query_string={"q": "common"}))[1]["items"]) == 10
    assert len((await env.get("/skills/search", query_string={"q": "common", "limit": "0"}))[1]["items"]) == 1
    items = (await env.get("/skills/search", query_string={"q": "common", "limit": "500"}))[1]["items"]
    assert len(items) == 100
    assert [i["name"] for i in items] == sorted(i["name"] for i in items)  # equal scores: by name
    assert (await env.get("/skills/search", query_string={"q": "x", "limit": "-1"}))[0] == 400


async def test_the_index_follows_reloads(start):
    env = await start(CORPUS)
    env.write("notes.yaml", "name: notes\ndescription: Nothing here\n")
    (env.root / "pdf-summary.yaml").unlink()
    env.write("new.yaml", "name: fresh\ndescription: summarize quickly\n")
    await env.post("/skills/reload")
    _, body = await env.get("/skills/search", query_string={"q": "summarize notes"})
    assert sorted(i["name"] for i in body["items"]) == ["fresh", "notes", "summarize"]
    skills = list(env.skills.registry.skills.values())
    assert [(i["name"], i["score"]) for i in body["items"]] == reference(skills, "summarize notes")
    assert len(env.skills.registry.index) == len(skills)


def test_tags_field_has_tags_event_types_and_keywords_once():
    skill = Skill(name="x", tags=("a", "b"), triggers=(Trigger(event_types=("b", "c")),), keywords=("c", "d"))
    assert skill.search_tags == ["a", "b", "c", "d"]

