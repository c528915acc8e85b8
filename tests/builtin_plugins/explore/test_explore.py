"""``POST /explore/start`` and the exploration pipeline (http-api §15), with an info-hub test
plugin whose tools read real RSS and Atom feeds from a local HTTP server."""

from __future__ import annotations

import asyncio
import random
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from builtin_plugins import explore
from sdk import PluginContext, Tool, ToolError, hookimpl
from sdk.testing import Recorder, wait_for

RSS = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>Hacker News</title>
  <item><title>Python 3.14 released</title><link>https://example.org/py</link>
    <guid>hn-1</guid><description>The new Python brings free threading. More below.</description></item>
  <item><title>Rust in the kernel</title><link>https://example.org/rust</link>
    <guid>hn-2</guid><description>Rust drivers land upstream.</description></item>
  <item><title>Local bakery opens</title><link>https://example.org/bread</link>
    <guid>hn-3</guid></item>
</channel></rss>"""
ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Lobsters</title>
  <entry><title>Zig comptime explained</title><id>urn:lob:1</id>
    <link href="https://example.org/zig"/><summary>Zig runs code at compile time.</summary></entry>
  <entry><title>A quiet week</title><id>urn:lob:2</id><link href="https://example.org/quiet"/></entry>
</feed>"""
ATOM_NS = "{http://www.w3.org/2005/Atom}"
TOPICS = ("python", "rust", "zig")
ALL_TOOLS = ("info_search", "info_tag_articles", "info_score_articles", "info_summarize_articles")


# --- a local feed server ------------------------------------------------------------------------


class FeedServer:
    """Serves ``feeds`` (path → XML) on 127.0.0.1 from a thread; other paths are 404."""

    def __init__(self, feeds: dict[str, str]) -> None:
        feeds_ = feeds

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = feeds_.get(self.path)
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Type", "application/xml")
                data = (body or "").encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture(name="feeds")
def _feeds() -> Iterator[FeedServer]:
    server = FeedServer({"/hn.rss": RSS, "/lobsters.atom": ATOM})
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


# --- the info-hub test plugin -------------------------------------------------------------------


def parse_feed(xml: str) -> list[dict[str, str]]:
    """The items of an RSS 2.0 or Atom document: id, title, url, text."""
    root = ET.fromstring(xml)
    if root.tag == f"{ATOM_NS}feed":
        return [
            {
                "id": e.findtext(f"{ATOM_NS}id", ""),
                "title": e.findtext(f"{ATOM_NS}title", ""),
                "url": e.find(f"{ATOM_NS}link").get("href", ""),
                "text": e.findtext(f"{ATOM_NS}summary", ""),
            }
            for e in root.iter(f"{ATOM_NS}entry")
        ]
    return [
        {
            "id": i.findtext("guid") or i.findtext("link", ""),
            "title": i.findtext("title", ""),
            "url": i.findtext("link", ""),
            "text": i.findtext("description", ""),
        }
        for i in root.iter("item")
    ]


class InfoHub:
    """The four ``info_*`` tools of http-api §15 over the feeds of ``[plugin.infohub-test.feeds]``
    (source name → URL). ``hold`` (set) holds ``info_search`` while cleared."""

    name = "infohub-test"

    def __init__(self) -> None:
        self.articles: dict[str, dict[str, Any]] = {}
        self.hold = asyncio.Event()
        self.hold.set()

    @hookimpl
    def register_tools(self, ctx: PluginContext) -> list[Tool]:
        async def search(args: dict[str, Any], tc: Any) -> dict[str, Any]:
            await self.hold.wait()
            found = []
            for source in args["sources"]:
                url = ctx.config.get("feeds", {}).get(source)
                if url is None:
                    raise ToolError(f"unknown source: {source}")
                async with httpx.AsyncClient(timeout=5) as http:
                    resp = await http.get(url)
                if resp.status_code != 200:
                    raise ToolError(f"HTTP {resp.status_code} from {source}")
                found += parse_feed(resp.text)
            for article in found:
                article["tags"] = [t for t in TOPICS if t in article["title"].lower()]
                self.articles[article["id"]] = article
            return {
                "articles": [
                    {k: a[k] for k in ("id", "title", "url")} for a in found[: args["limit"]]
                ]
            }

        def tag(args: dict[str, Any], tc: Any) -> dict[str, Any]:
            picked = [self.articles[i] for i in args["article_ids"]]
            return {"articles": [{"id": a["id"], "tags": a["tags"]} for a in picked]}

        def score(args: dict[str, Any], tc: Any) -> dict[str, Any]:
            scores = []
            for i in args["article_ids"]:
                a = self.articles[i]
                relevance, quality, timeliness = (
                    (10 if a["tags"] else 2),
                    (8 if a["text"] else 3),
                    7,
                )
                scores.append(
                    {
                        "id": i,
                        "relevance": relevance,
                        "quality": quality,
                        "timeliness": timeliness,
                        "total": relevance + quality + timeliness,
                    }
                )
            return {"scores": scores}

        def summarize(args: dict[str, Any], tc: Any) -> dict[str, Any]:
            picked = [self.articles[i] for i in args["article_ids"]]
            return {
                "summaries": [
                    {
                        "id": a["id"],
                        "title": a["title"],
                        "summary": f"[{args['lang']}] {a['text'].split('. ')[0].rstrip('.')}.",
                    }
                    for a in picked
                ]
            }

        ids = {
            "type": "object",
            "properties": {"article_ids": {"type": "array"}},
            "required": ["article_ids"],
        }
        return [
            Tool(
                name="info_search",
                description="Search the feeds",
                handler=search,
                parameters={"type": "object", "required": ["query", "limit", "sources"]},
                sensitivity="low",
            ),
            Tool(name="info_tag_articles", description="Tag", handler=tag, parameters=ids),
            Tool(name="info_score_articles", description="Score", handler=score, parameters=ids),
            Tool(
                name="info_summarize_articles",
                description="Summarize",
                handler=summarize,
                parameters=ids,
            ),
        ]


class SearchOnly:
    """A plugin with only one of the four tools."""

    name = "search-only"

    @hookimpl
    def register_tools(self, ctx: PluginContext) -> list[Tool]:
        return [Tool(name="info_search", description="x", handler=lambda args, tc: {})]


# --- the environment ------------------------------------------------------------------------------


class Env:
    def __init__(self, client: Any, kernel: Any, recorder: Recorder) -> None:
        self.client, self.kernel, self.recorder = client, kernel, recorder

    async def start(self, headers: dict[str, str] | None = None, **body: Any) -> tuple[int, Any]:
        resp = await self.client.post("/explore/start", json=body, headers=headers or {})
        return resp.status_code, await resp.get_json()

    def replies(self, sid: str) -> list[str]:
        return [
            e.payload["reply"]
            for e in self.recorder.of_type("agent:reply_ready")
            if e.payload["session_id"] == sid
        ]

    async def finished(self, sid: str) -> list[str]:
        """The pipeline's messages once its last one (complete or failed) is out."""

        def done() -> bool:
            last = (self.replies(sid) or [""])[-1]
            return last.startswith(("Exploration complete", "Step "))

        await wait_for(done)
        await wait_for(lambda: not explore_tasks(self.kernel))
        return self.replies(sid)

    async def audits(self) -> list[tuple[str, str, str, str]]:
        page = await self.kernel.audit.query(action="explore.start")
        return [(r.operator, r.target, r.outcome, r.detail) for r in reversed(page.items)]


def explore_tasks(kernel: Any) -> dict[str, Any]:
    return kernel.stash[explore.EXPLORATIONS].tasks


@pytest.fixture(name="boot")
def _boot(make_kernel, serve_kernel, tmp_path, feeds):
    """``env = await boot(toml, *plugins)``: a served kernel whose ``[plugin.infohub-test.feeds]``
    point at the local feed server."""

    async def boot(toml: str = "", *plugins: Any) -> Env:
        config = tmp_path / "aman.toml"
        config.write_text(
            toml + "\n[plugin.infohub-test.feeds]\n"
            f'hacker-news = "{feeds.url("/hn.rss")}"\n'
            f'lobsters = "{feeds.url("/lobsters.atom")}"\n'
            f'broken = "{feeds.url("/missing.rss")}"\n'
        )
        recorder = Recorder("agent:reply_ready", "tool:completed", "session:started")
        kernel = make_kernel(recorder, *plugins, config_path=config)
        return Env(await serve_kernel(kernel), kernel, recorder)

    return boot


def sources(*names: str) -> str:
    return "[info_hub]\nsources = [" + ", ".join(f'"{n}"' for n in names) + "]\n"


HN_MESSAGES = [
    "Exploring hacker-news…",
    "Found 3 articles:\n- Python 3.14 released\n- Rust in the kernel\n- Local bakery opens",
    "Tagged 3 articles.",
    "Scored 3 articles; 2 scored above 20.",
    "**Python 3.14 released**\n[en] The new Python brings free threading.",
    "**Rust in the kernel**\n[en] Rust drivers land upstream.",
    "Exploration complete: 3 articles found, 2 summarized.",
]


# --- tests -----------------------------------------------------------------------------------------


async def test_an_rss_exploration_posts_every_step(boot):
    env = await boot(sources("hacker-news"), InfoHub())
    status, out = await env.start(headers={"x-aman-operator": "alice"})
    assert status == 200, out
    sid = out["session_id"]
    assert out == {"session_id": sid, "source": "hacker-news"}
    assert await env.finished(sid) == HN_MESSAGES
    ready = [e for e in env.recorder.of_type("agent:reply_ready") if e.payload["session_id"] == sid]
    assert {(e.source, e.payload["turns_processed"], e.payload["agent_id"]) for e in ready} == {
        ("explore:pipeline", 0, "aman")
    }
    state = await (await env.client.get(f"/chat/session/{sid}/state")).get_json()
    assert [(m["role"], m["content"]) for m in state["messages"]] == [
        ("assistant", text) for text in HN_MESSAGES
    ]
    assert [m["event_id"] for m in state["messages"]] == [e.id for e in ready]
    assert (state["session_type"], state["agent_id"], state["message_count"]) == (
        "persistent",
        "aman",
        7,
    )
    [started] = env.recorder.of_type("session:started")
    assert started.payload == {
        "session_id": sid,
        "session_type": "persistent",
        "agent_id": "aman",
        "operator": "alice",
    }
    calls = [
        (e.source, e.payload["tool"], e.payload["session_id"])
        for e in env.recorder.of_type("tool:completed")
    ]
    assert calls == [("explore:pipeline", tool, sid) for tool in ALL_TOOLS]
    assert await env.audits() == [
        ("alice", "agent:aman", "ok", f"session={sid} source=hacker-news")
    ]


async def test_an_atom_exploration_summarizes_in_the_configured_language(boot):
    env = await boot(sources("lobsters") + 'summary_lang = "de"\n', InfoHub())
    status, out = await env.start()
    assert (status, out["source"]) == (200, "lobsters")
    assert await env.finished(out["session_id"]) == [
        "Exploring lobsters…",
        "Found 2 articles:\n- Zig comptime explained\n- A quiet week",
        "Tagged 2 articles.",
        "Scored 2 articles; 1 scored above 20.",
        "**Zig comptime explained**\n[de] Zig runs code at compile time.",
        "Exploration complete: 2 articles found, 1 summarized.",
    ]


async def test_the_source_is_picked_at_random(boot):
    names = ["hacker-news", "lobsters"]
    env = await boot(sources(*names), InfoHub())
    for seed in range(4):
        explore.RNG.seed(seed)
        status, out = await env.start()
        assert (status, out["source"]) == (200, random.Random(seed).choice(names))
        messages = await env.finished(out["session_id"])
        assert messages[0] == f"Exploring {out['source']}…"


async def test_a_failing_step_ends_the_pipeline(boot):
    env = await boot(sources("broken"), InfoHub())
    status, out = await env.start()
    assert status == 200, out
    assert await env.finished(out["session_id"]) == [
        "Exploring broken…",
        "Step info_search failed: HTTP 404 from broken",
    ]
    assert [e.payload["tool"] for e in env.recorder.of_type("tool:completed")] == []


async def test_a_tool_answering_the_wrong_shape_fails_its_step(boot):
    class Odd(InfoHub):
        name = "infohub-test"

        @hookimpl
        def register_tools(self, ctx: PluginContext) -> list[Tool]:
            tools = InfoHub.register_tools(self, ctx)
            bad = Tool(
                name="info_score_articles",
                description="x",
                handler=lambda args, tc: {"scores": [{"id": "hn-1", "total": "high"}]},
            )
            return [bad if t.name == bad.name else t for t in tools]

    env = await boot(sources("hacker-news"), Odd())
    status, out = await env.start()
    assert status == 200, out
    messages = await env.finished(out["session_id"])
    assert messages[2:] == [
        "Tagged 3 articles.",
        "Step info_score_articles failed: unexpected result "
        "(expected 'scores': a list of objects with 'id', 'total')",
    ]


async def test_checks_in_order(boot):
    env = await boot()
    assert await env.start(agent_key="ghost") == (404, {"error": "agent not found: ghost"})
    await env.client.post("/agent/aman/status", json={"status": "Disabled"})
    assert await env.start() == (409, {"error": "agent aman is disabled"})
    await env.client.post("/agent/aman/status", json={"status": "Idle"})
    assert await env.start() == (400, {"error": "no info-hub data sources configured"})
    assert await env.audits() == [
        ("api", "agent:ghost", "error", "agent not found: ghost"),
        ("api", "agent:aman", "error", "agent aman is disabled"),
        ("api", "agent:aman", "error", "no info-hub data sources configured"),
    ]


async def test_missing_tools_are_named(boot):
    env = await boot(sources("hacker-news"))
    error = (
        "explore needs the info-hub tools (missing: info_search, info_tag_articles, "
        "info_score_articles, info_summarize_articles); install an info-hub plugin"
    )
    assert await env.start() == (422, {"error": error})
    partial = await boot(sources("hacker-news"), SearchOnly())
    assert await partial.start() == (
        422,
        {
            "error": (
                "explore needs the info-hub tools (missing: info_tag_articles, info_score_articles, "
                "info_summarize_articles); install an info-hub plugin"
            )
        },
    )
    sessions = await (await partial.client.get("/chat/sessions")).get_json()
    assert sessions["items"] == []


async def test_one_exploration_per_agent_at_a_time(boot):
    hub = InfoHub()
    hub.hold.clear()
    env = await boot(sources("hacker-news") + "\n[agents.aman]\n\n[agents.bob]\n", hub)
    status, first = await env.start()
    assert status == 200, first
    assert await env.start() == (409, {"error": "an exploration is already running for agent aman"})
    status, other = await env.start(agent_key="bob")
    assert status == 200, other
    assert env.replies(first["session_id"]) in ([], ["Exploring hacker-news…"])
    hub.hold.set()
    assert await env.finished(first["session_id"]) == HN_MESSAGES
    assert await env.finished(other["session_id"]) == HN_MESSAGES
    status, again = await env.start()
    assert status == 200, again
    await env.finished(again["session_id"])
    outcomes = [(target, outcome) for _, target, outcome, _ in await env.audits()]
    assert outcomes == [
        ("agent:aman", "ok"),
        ("agent:aman", "error"),
        ("agent:bob", "ok"),
        ("agent:aman", "ok"),
    ]


async def test_the_agent_shows_its_exploration_as_its_activity_while_it_runs(boot):
    hub = InfoHub()
    hub.hold.clear()
    env = await boot(sources("hacker-news"), hub)

    async def activity() -> Any:
        return (await (await env.client.get("/agent/aman")).get_json())["activity"]

    assert await activity() is None
    status, out = await env.start()
    assert status == 200, out
    await wait_for(lambda: env.replies(out["session_id"]) == ["Exploring hacker-news…"])
    shown = await activity()
    assert {k: shown[k] for k in ("kind", "session_id")} == {"kind": "explore", "session_id": out["session_id"]}
    assert isinstance(shown["since_ms"], int)
    hub.hold.set()
    await env.finished(out["session_id"])
    assert await activity() is None


async def test_shutdown_cancels_a_running_exploration(boot):
    hub = InfoHub()
    hub.hold.clear()
    env = await boot(sources("hacker-news"), hub)
    status, out = await env.start()
    assert status == 200, out
    [task] = explore_tasks(env.kernel).values()
    await wait_for(lambda: env.replies(out["session_id"]) == ["Exploring hacker-news…"])
    resp = await env.client.post("/agent/shutdown", headers={"x-aman-confirm": "yes"})
    assert resp.status_code == 200
    await wait_for(task.done)
    assert task.cancelled()
    assert env.replies(out["session_id"]) == ["Exploring hacker-news…"]
