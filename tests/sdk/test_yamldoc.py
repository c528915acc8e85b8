"""sdk.yamldoc: the same answer on every PyYAML build, and no document that costs unbounded work."""

import json

import pytest

from sdk.yamldoc import MAX_ALIASED_NODES, MAX_DEPTH, YamlError, load_yaml


def test_plain_documents_load_as_safe_load_gives_them():
    text = "name: s\ntags: [a, b]\nbase: &b {x: 1}\nother: *b\nwhen: 2026-11-28\n"
    data = load_yaml(text)
    assert data["tags"] == ["a", "b"] and data["other"] == {"x": 1}
    assert str(data["when"]) == "2026-11-28"
    assert load_yaml("") is None


def test_nesting_is_capped_at_the_same_depth_in_flow_and_block_style():
    assert load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(YamlError, match=f"nested deeper than {MAX_DEPTH} levels \\(line 1\\)"):
        load_yaml("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    block = "".join(" " * (2 * i) + "-\n" for i in range(MAX_DEPTH + 1))
    with pytest.raises(YamlError, match=f"\\(line {MAX_DEPTH + 1}\\)"):
        load_yaml(block)


def test_a_million_levels_is_an_error_not_a_crash():
    # Against libyaml 0.2.5 the C composer recursed without a limit here and the process died
    # with SIGSEGV; against 0.2.6 it stopped at 1,000 levels; the Python loader hit RecursionError.
    with pytest.raises(YamlError, match="nested deeper"):
        load_yaml("k: " + "[" * 1_000_000 + "]" * 1_000_000)


def test_an_alias_inside_its_own_anchor_is_refused():
    with pytest.raises(YamlError, match=r"alias \*x inside its own anchor \(line 2\)"):
        load_yaml("a: &x\n  - *x\n")


def test_aliases_that_expand_beyond_the_limit_are_refused_and_below_it_load():
    # nine levels of nine aliases: 9**6 leaves when dumped as JSON
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 6)]
    with pytest.raises(YamlError, match=f"aliases stand for more than {MAX_ALIASED_NODES} nodes"):
        load_yaml("\n".join(lines))
    small = load_yaml("\n".join(lines[:4]))  # 9**4 leaves: fine
    assert len(json.dumps(small)) > 9**4


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("name: [unclosed", "did not find expected ',' or ']'"),
        ("a: *nope", "found undefined alias"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("a: !!python/object:os.system x", "could not determine a constructor"),
    ],
)
def test_bad_documents_are_one_line_errors(text, reason):
    with pytest.raises(YamlError) as caught:
        load_yaml(text)
    assert reason in str(caught.value) and "\n" not in str(caught.value)
