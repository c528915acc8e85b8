"""A turn's context (http-api §11.3 step 2): the session's messages as the model sees them, the
oldest dropped until they fit the budget, the newest user message always kept."""

from __future__ import annotations

from builtin_plugins.chat.store import new_message
from builtin_plugins.chat.turns import context, tokens


def said(messages):
    return [(m.role, m.content, tuple(c.name for c in m.tool_calls), m.tool_call_id)
            for m in messages]


def tool(name: str, result: str, call_id: str):
    return new_message("s", "tool", result, tool_name=name, tool_call_id=call_id,
                       tool_args='{"a": 1}')


def test_everything_fits():
    stored = [new_message("s", "user", "hi"), new_message("s", "assistant", "hello"),
              new_message("s", "system", "a notice the model never sees")]
    assert said(context(stored, 1000)) == [("user", "hi", (), None), ("assistant", "hello", (), None)]


def test_tool_results_follow_the_call_they_answer_and_consecutive_ones_share_it():
    stored = [new_message("s", "user", "do it"), tool("read", "r1", "c1"), tool("list", "r2", "c2"),
              new_message("s", "assistant", "done")]
    out = context(stored, 1000)
    assert said(out) == [
        ("user", "do it", (), None),
        ("assistant", "", ("read", "list"), None),
        ("tool", "r1", (), "c1"),
        ("tool", "r2", (), "c2"),
        ("assistant", "done", (), None),
    ]
    assert out[1].tool_calls[0].arguments == {"a": 1}


def test_the_oldest_go_first_whole_groups_at_a_time():
    old = [new_message("s", "user", "u" * 40), tool("read", "r" * 40, "c1"),
           new_message("s", "assistant", "a" * 40)]
    new = [new_message("s", "user", "v" * 8), new_message("s", "assistant", "b" * 8)]
    budget = sum(tokens(m.content) for m in new) + tokens("a" * 40)
    assert said(context(old + new, budget)) == [
        ("assistant", "a" * 40, (), None), ("user", "v" * 8, (), None), ("assistant", "b" * 8, (), None)]
    # one token less and the old answer goes too; the tool group never goes half
    assert [m.content for m in context(old + new, budget - 1)] == ["v" * 8, "b" * 8]


def test_the_newest_user_message_stays_whatever_its_size():
    stored = [new_message("s", "user", "old"), new_message("s", "assistant", "reply"),
              new_message("s", "user", "x" * 4000)]
    assert [m.content for m in context(stored, 10)] == ["x" * 4000]
