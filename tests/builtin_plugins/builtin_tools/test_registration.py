"""The nine tools as ``register_tools`` contributes them: sensitivities, schemas, defaults
(http-api §18.1), and the kernel collecting them."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from builtin_plugins.builtin_tools import register_tools, with_defaults

TOOLS = {tool.name: tool for tool in register_tools(ctx=None)}
SENSITIVITY = {
    "read": "low",
    "list": "low",
    "find": "low",
    "grep": "low",
    "write": "medium",
    "edit": "medium",
    "http": "medium",
    "exec": "high",
    "db": "high",
}
GOOD = [
    ("read", {"path": "a.txt"}),
    ("read", {"path": "/etc/hostname", "offset": 10, "limit": 1_048_576}),
    ("list", {}),
    ("list", {"path": "src", "recursive": True, "max_entries": 5}),
    ("find", {"pattern": "*.py", "path": "."}),
    ("grep", {"pattern": "TODO", "glob": "*.md", "ignore_case": True, "max_results": 1}),
    ("write", {"path": "a.txt", "content": "", "append": True, "create_dirs": False}),
    ("edit", {"path": "a.txt", "old_text": "a", "new_text": "", "replace_all": True}),
    ("http", {"url": "https://example.org", "method": "POST", "headers": {"A": "b"}, "body": "x"}),
    ("exec", {"command": "ls", "args": ["-l"], "cwd": "sub", "timeout_ms": 1, "detach": False}),
    ("db", {"db_path": "a.db", "sql": "SELECT ?", "params": [1, "x", None, 2.5, True]}),
    ("db", {"db_path": "a.db", "sql": "DELETE FROM t WHERE id = 1", "operation": "execute"}),
]
BAD = [
    ("read", {}),  # path required
    ("read", {"path": "a", "limit": 1_048_577}),
    ("read", {"path": "a", "offset": -1}),
    ("read", {"path": "a", "extra": 1}),
    ("list", {"recursive": "yes"}),
    ("list", {"max_entries": 0}),
    ("find", {"pattern": ""}),
    ("grep", {"pattern": "x", "max_results": 1.5}),
    ("write", {"path": "a.txt"}),  # content required
    ("edit", {"path": "a.txt", "old_text": "", "new_text": "b"}),
    ("http", {"url": "ftp://example.org"}),
    ("http", {"url": "http://x", "method": "BREW"}),
    ("http", {"url": "http://x", "headers": {"A": 1}}),
    ("exec", {"command": "ls", "args": "-l"}),
    ("exec", {"command": "ls", "timeout_ms": 0}),
    ("db", {"db_path": "a.db", "sql": "SELECT 1", "operation": "drop"}),
    ("db", {"db_path": "a.db", "sql": "SELECT ?", "params": [[1]]}),
]


def test_the_nine_tools_with_their_sensitivities_and_descriptions():
    assert {name: tool.sensitivity for name, tool in TOOLS.items()} == SENSITIVITY
    for tool in TOOLS.values():
        assert tool.description and "\n" not in tool.description
        assert tool.spec.parameters is tool.parameters


@pytest.mark.parametrize("name", sorted(SENSITIVITY))
def test_schema_is_a_closed_draft_2020_12_object(name):
    schema = TOOLS[name].parameters
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])


@pytest.mark.parametrize(("name", "args"), GOOD)
def test_good_arguments_pass(name, args):
    assert list(Draft202012Validator(TOOLS[name].parameters).iter_errors(args)) == []


@pytest.mark.parametrize(("name", "args"), BAD)
def test_bad_arguments_fail(name, args):
    assert list(Draft202012Validator(TOOLS[name].parameters).iter_errors(args)) != []


def test_defaults_come_from_the_schema():
    assert with_defaults(TOOLS["read"].parameters, {"path": "a"}) == {
        "path": "a",
        "offset": 0,
        "limit": 1_048_576,
    }
    assert with_defaults(TOOLS["grep"].parameters, {"pattern": "x", "max_results": 3.0}) == {
        "pattern": "x",
        "path": ".",
        "glob": "*",
        "ignore_case": False,
        "max_results": 3,
    }
    exec_args = with_defaults(TOOLS["exec"].parameters, {"command": "ls"})
    assert exec_args == {"command": "ls", "args": [], "timeout_ms": 5000, "detach": False}
    exec_args["args"].append("mutated")  # a default is a copy, never the schema's own value
    assert TOOLS["exec"].parameters["properties"]["args"]["default"] == []
    assert (
        with_defaults(TOOLS["db"].parameters, {"db_path": "a", "sql": "s"})["operation"] == "query"
    )
    assert with_defaults(TOOLS["http"].parameters, {"url": "http://x"}) == {
        "url": "http://x",
        "method": "GET",
        "headers": {},
        "timeout_ms": 5000,
    }


async def test_a_kernel_collects_the_nine_tools_from_builtin_tools(kernel, client):
    ours = {
        c.item.name: c.item.sensitivity
        for c in kernel.plugins.contributions("register_tools")
        if c.plugin == "builtin-tools"
    }
    assert ours == SENSITIVITY
