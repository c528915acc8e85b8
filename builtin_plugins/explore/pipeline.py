"""The info-hub exploration pipeline of http-api §15: six steps, each posted to the session as
an assistant message (``agent:reply_ready`` from ``explore:pipeline``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

from sdk import CHAT, TOOLS, PluginContext

__all__ = ["NEEDED_TOOLS", "SOURCE", "Exploration", "explore"]

SOURCE = "explore:pipeline"
SEARCH, TAG, SCORE, SUMMARIZE = (
    "info_search",
    "info_tag_articles",
    "info_score_articles",
    "info_summarize_articles",
)
NEEDED_TOOLS = (SEARCH, TAG, SCORE, SUMMARIZE)
SEARCH_LIMIT = 20
ABOVE = 20  # a ``total`` above this (out of 30) gets summarized
#: What each tool must answer: the list's key and the fields every item needs (§15).
RESULTS: dict[str, tuple[str, tuple[str, ...]]] = {
    SEARCH: ("articles", ("id", "title")),
    TAG: ("articles", ("id",)),
    SCORE: ("scores", ("id", "total")),
    SUMMARIZE: ("summaries", ("id", "title", "summary")),
}


@frozen(kw_only=True)
class Exploration:
    """One run: the agent, its session, the chosen data source and the summary language."""

    agent_id: str
    session_id: str
    source: str
    lang: str


class StepFailed(Exception):
    """A tool call failed or answered something else than §15's shape; ends the pipeline."""

    def __init__(self, tool: str, error: str) -> None:
        super().__init__(f"Step {tool} failed: {error}")


async def explore(ctx: PluginContext, run: Exploration) -> None:
    """Run the pipeline; a failing step posts ``Step <tool> failed: <error>`` and ends it."""
    try:
        await _steps(ctx, run)
    except StepFailed as failed:
        await _post(ctx, run, str(failed))


async def _steps(ctx: PluginContext, run: Exploration) -> None:
    await _post(ctx, run, f"Exploring {run.source}…")
    search = {"query": "", "limit": SEARCH_LIMIT, "sources": [run.source]}
    articles = await _call(ctx, run, SEARCH, search)
    ids = [a["id"] for a in articles]
    found = [f"Found {len(articles)} articles:", *(f"- {a['title']}" for a in articles)]
    await _post(ctx, run, "\n".join(found))
    tagged = await _call(ctx, run, TAG, {"article_ids": ids})
    await _post(ctx, run, f"Tagged {len(tagged)} articles.")
    scores = await _call(ctx, run, SCORE, {"article_ids": ids})
    best = [s["id"] for s in scores if s["total"] > ABOVE]
    await _post(ctx, run, f"Scored {len(scores)} articles; {len(best)} scored above {ABOVE}.")
    wanted = {"article_ids": best, "lang": run.lang, "min_score": 1}
    summaries = await _call(ctx, run, SUMMARIZE, wanted)
    for summary in summaries:
        await _post(ctx, run, f"**{summary['title']}**\n{summary['summary']}")
    await _post(
        ctx,
        run,
        f"Exploration complete: {len(articles)} articles found, {len(summaries)} summarized.",
    )


async def _post(ctx: PluginContext, run: Exploration, text: str) -> None:
    await ctx.stash[CHAT].post_reply(run.session_id, text, source=SOURCE)


async def _call(
    ctx: PluginContext, run: Exploration, tool: str, args: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Call ``tool`` through the checks of §18 (no approval: origin ``pipeline``); answer the
    items of its result."""
    toolbox = ctx.stash.get(TOOLS)
    if toolbox is None:
        raise StepFailed(tool, "the tools plugin is not running")
    outcome = await toolbox.call(
        tool,
        args,
        origin="pipeline",
        source=SOURCE,
        agent_id=run.agent_id,
        session_id=run.session_id,
    )
    if not outcome.ok:
        raise StepFailed(tool, outcome.error)
    return _items(tool, outcome.output)


def _items(tool: str, output: Any) -> list[dict[str, Any]]:
    key, fields = RESULTS[tool]
    items = output.get(key) if isinstance(output, dict) else None
    if not isinstance(items, list) or not all(_has(item, fields) for item in items):
        shape = ", ".join(f"'{f}'" for f in fields)
        raise StepFailed(
            tool, f"unexpected result (expected '{key}': a list of objects with {shape})"
        )
    return items


def _has(item: Any, fields: tuple[str, ...]) -> bool:
    if not isinstance(item, dict) or any(f not in item for f in fields):
        return False
    total = item.get("total")  # scores: a number out of 30
    return "total" not in fields or (isinstance(total, int | float) and not isinstance(total, bool))
