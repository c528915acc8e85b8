"""The file tools ``read``, ``list``, ``find``, ``grep``, ``write``, ``edit`` (http-api §18.1)."""

from __future__ import annotations

import os
import re
import stat

import pytest

from builtin_plugins.builtin_tools import files
from sdk import ToolError


def tree(root, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


# --- read --------------------------------------------------------------------------------------


async def test_read_whole_file_relative_to_the_workspace(run, workspace):
    tree(workspace, {"notes/a.txt": "héllo\nworld\n"})
    out = await run("read", path="notes/a.txt")
    assert out == {
        "path": str(workspace / "notes/a.txt"),
        "content": "héllo\nworld\n",
        "size": 13,
        "truncated": False,
    }


async def test_read_offset_and_limit_report_truncation(run, workspace):
    tree(workspace, {"a.txt": "0123456789"})
    assert await run("read", path="a.txt", offset=2, limit=3) == {
        "path": str(workspace / "a.txt"),
        "content": "234",
        "size": 10,
        "truncated": True,
    }
    tail = await run("read", path="a.txt", offset=7, limit=3)
    assert (tail["content"], tail["truncated"]) == ("789", False)
    past = await run("read", path="a.txt", offset=50)
    assert (past["content"], past["truncated"]) == ("", False)


async def test_read_replaces_invalid_utf8(run, workspace):
    tree(workspace, {"bin.dat": b"ok\xff\xfeend"})
    out = await run("read", path="bin.dat")
    assert out["content"] == "ok\ufffd\ufffdend" and out["size"] == 7


async def test_read_absolute_path_is_used_as_given(run, tmp_path):
    tree(tmp_path, {"outside.txt": "out there"})
    out = await run("read", path=str(tmp_path / "outside.txt"))
    assert out["content"] == "out there" and out["path"] == str(tmp_path / "outside.txt")


async def test_read_missing_file_or_directory_is_an_error(run, workspace):
    with pytest.raises(
        ToolError, match=f"^file not found: {re.escape(str(workspace / 'nope.txt'))}$"
    ):
        await run("read", path="nope.txt")
    (workspace / "d").mkdir()
    with pytest.raises(ToolError, match=r"^is a directory: "):
        await run("read", path="d")


# --- list --------------------------------------------------------------------------------------


async def test_list_is_sorted_with_types_and_sizes(run, workspace):
    tree(workspace, {"b.txt": "bb", "a.txt": "a", "sub/c.txt": "ccc"})
    out = await run("list")
    assert out == {
        "path": str(workspace),
        "entries": [
            {"name": "a.txt", "type": "file", "size": 1},
            {"name": "b.txt", "type": "file", "size": 2},
            {"name": "sub", "type": "dir", "size": 0},
        ],
        "truncated": False,
    }


async def test_list_recursive_depth_first_and_max_entries(run, workspace):
    tree(workspace, {"sub/z.txt": "", "sub/deep/y.txt": "", "a.txt": ""})
    out = await run("list", recursive=True)
    assert [e["name"] for e in out["entries"]] == [
        "a.txt",
        "sub",
        "sub/deep",
        "sub/deep/y.txt",
        "sub/z.txt",
    ]
    cut = await run("list", path="sub", recursive=True, max_entries=2)
    assert [e["name"] for e in cut["entries"]] == ["deep", "deep/y.txt"]
    assert cut["truncated"] is True
    exact = await run("list", path="sub", recursive=True, max_entries=3)
    assert exact["truncated"] is False


async def test_list_does_not_follow_directory_symlinks(run, workspace):
    (workspace / "real").mkdir()
    (workspace / "real" / "f").write_text("x")
    (workspace / "loop").symlink_to(workspace)
    out = await run("list", recursive=True)
    assert [(e["name"], e["type"]) for e in out["entries"]] == [
        ("loop", "dir"),
        ("real", "dir"),
        ("real/f", "file"),
    ]


async def test_list_missing_directory_or_a_file_is_an_error(run, workspace):
    with pytest.raises(ToolError, match=r"^directory not found: "):
        await run("list", path="nope")
    tree(workspace, {"f.txt": ""})
    with pytest.raises(ToolError, match=r"^not a directory: "):
        await run("list", path="f.txt")


# --- find --------------------------------------------------------------------------------------


async def test_find_matches_names_and_joins_the_search_path(run, workspace):
    tree(workspace, {"src/a.py": "", "src/pkg/b.py": "", "src/pkg/c.txt": "", "top.py": ""})
    assert await run("find", pattern="*.py") == {
        "matches": ["src/a.py", "src/pkg/b.py", "top.py"],
        "truncated": False,
    }
    assert (await run("find", pattern="*.py", path="src"))["matches"] == [
        "src/a.py",
        "src/pkg/b.py",
    ]
    assert (await run("find", pattern="pkg"))["matches"] == ["src/pkg"]  # directories too
    assert (await run("find", pattern="pkg/*.txt", path="src"))["matches"] == ["src/pkg/c.txt"]


async def test_find_max_results_sets_truncated(run, workspace):
    tree(workspace, {f"f{i}.txt": "" for i in range(5)})
    out = await run("find", pattern="*.txt", max_results=3)
    assert out == {"matches": ["f0.txt", "f1.txt", "f2.txt"], "truncated": True}


# --- grep --------------------------------------------------------------------------------------


async def test_grep_reports_path_line_and_text(run, workspace):
    tree(
        workspace,
        {
            "a.py": "import os\nprint('TODO later')\n",
            "b.txt": "nothing\r\ntodo: one\r\n",
            "sub/c.py": "# TODO\n",
        },
    )
    out = await run("grep", pattern="TODO")
    assert out == {
        "matches": [
            {"path": "a.py", "line": 2, "text": "print('TODO later')"},
            {"path": "sub/c.py", "line": 1, "text": "# TODO"},
        ],
        "truncated": False,
    }
    folded = await run("grep", pattern="todo", ignore_case=True, glob="*.txt")
    assert folded["matches"] == [{"path": "b.txt", "line": 2, "text": "todo: one"}]
    single = await run("grep", pattern="^import", path="a.py")
    assert single["matches"] == [{"path": "a.py", "line": 1, "text": "import os"}]


async def test_grep_skips_binary_and_unreadable_files(run, workspace):
    tree(workspace, {"bin.dat": b"needle\x00\x01", "text.txt": "needle\n"})
    os.mkfifo(workspace / "pipe")  # reading it would block: not a regular file, skipped
    (workspace / "dangling").symlink_to(workspace / "gone")
    out = await run("grep", pattern="needle")
    assert out["matches"] == [{"path": "text.txt", "line": 1, "text": "needle"}]


async def test_grep_does_not_follow_symlinks_out_of_its_walk(run, workspace, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET\n")
    tree(workspace, {"mine.txt": "TOPSECRET too\n"})
    (workspace / "link.txt").symlink_to(secret)
    out = await run("grep", pattern="TOPSECRET")
    assert out["matches"] == [{"path": "mine.txt", "line": 1, "text": "TOPSECRET too"}]


async def test_grep_reads_a_huge_line_in_bounded_pieces(run, workspace, monkeypatch):
    monkeypatch.setattr(files, "LINE_READ_MAX", 64)
    tree(workspace, {"long.txt": "needle" + "x" * 1000 + "needle-late\nneedle 2\nend"})
    out = await run("grep", pattern="needle")
    assert [(m["line"], m["text"][:8]) for m in out["matches"]] == [(1, "needlexx"), (2, "needle 2")]
    assert (await run("grep", pattern="^end$"))["matches"][0]["line"] == 3


async def test_grep_max_results_and_bad_regex(run, workspace):
    tree(workspace, {"a.txt": "x\nx\nx\n"})
    out = await run("grep", pattern="x", max_results=2)
    assert [m["line"] for m in out["matches"]] == [1, 2] and out["truncated"] is True
    with pytest.raises(ToolError, match=r"^invalid regex: "):
        await run("grep", pattern="(unclosed")
    with pytest.raises(ToolError, match=r"^path not found: "):
        await run("grep", pattern="x", path="nope")


# --- write -------------------------------------------------------------------------------------


async def test_write_creates_dirs_and_counts_utf8_bytes(run, workspace):
    out = await run("write", path="new/deep/f.txt", content="é!")
    target = workspace / "new/deep/f.txt"
    assert out == {"path": str(target), "bytes_written": 3}
    assert target.read_text(encoding="utf-8") == "é!"
    assert sorted(os.listdir(target.parent)) == ["f.txt"]  # no temporary file left


async def test_write_replaces_keeping_the_mode_or_appends(run, workspace):
    tree(workspace, {"run.sh": "old"})
    (workspace / "run.sh").chmod(0o750)
    await run("write", path="run.sh", content="new")
    assert (workspace / "run.sh").read_text() == "new"
    assert stat.S_IMODE((workspace / "run.sh").stat().st_mode) == 0o750
    out = await run("write", path="run.sh", content="+more", append=True)
    assert out["bytes_written"] == 5 and (workspace / "run.sh").read_text() == "new+more"


async def test_write_through_a_symlink_replaces_its_target(run, workspace):
    tree(workspace, {"real.txt": "old"})
    (workspace / "link.txt").symlink_to(workspace / "real.txt")
    await run("write", path="link.txt", content="new")
    assert (workspace / "link.txt").is_symlink()
    assert (workspace / "real.txt").read_text() == "new"


async def test_write_without_create_dirs_or_onto_a_directory_fails(run, workspace):
    with pytest.raises(
        ToolError, match=f"^directory not found: {re.escape(str(workspace / 'missing'))}$"
    ):
        await run("write", path="missing/f.txt", content="x", create_dirs=False)
    with pytest.raises(ToolError, match=r"^directory not found: "):
        await run("write", path="missing/f.txt", content="x", create_dirs=False, append=True)
    (workspace / "d").mkdir()
    with pytest.raises(ToolError, match=r"^is a directory: "):
        await run("write", path="d", content="x")


# --- edit --------------------------------------------------------------------------------------


async def test_edit_replaces_the_first_or_every_occurrence(run, workspace):
    tree(workspace, {"f.txt": "a-a-a"})
    out = await run("edit", path="f.txt", old_text="a", new_text="b")
    assert out == {"path": str(workspace / "f.txt"), "replacements": 1}
    assert (workspace / "f.txt").read_text() == "b-a-a"
    out = await run("edit", path="f.txt", old_text="a", new_text="cc", replace_all=True)
    assert out["replacements"] == 2 and (workspace / "f.txt").read_text() == "b-cc-cc"
    assert os.listdir(workspace) == ["f.txt"]


async def test_edit_keeps_other_bytes_and_line_ends(run, workspace):
    tree(workspace, {"f.txt": b"\xff keep\r\nold\r\n"})
    await run("edit", path="f.txt", old_text="old", new_text="new")
    assert (workspace / "f.txt").read_bytes() == b"\xff keep\r\nnew\r\n"


async def test_edit_without_a_match_or_file_fails(run, workspace):
    tree(workspace, {"f.txt": "abc"})
    with pytest.raises(
        ToolError, match=f"^old_text not found in {re.escape(str(workspace / 'f.txt'))}$"
    ):
        await run("edit", path="f.txt", old_text="zzz", new_text="y")
    assert (workspace / "f.txt").read_text() == "abc"
    with pytest.raises(ToolError, match=r"^file not found: "):
        await run("edit", path="nope.txt", old_text="a", new_text="b")


async def test_walks_give_up_after_the_time_limit(run_within, workspace):
    tree(workspace, {"a.txt": "x\n"})
    for name, args in (("list", {}), ("find", {"pattern": "*"}), ("grep", {"pattern": "x"})):
        with pytest.raises(ToolError, match=r"^gave up after 0 s$"):
            await run_within(0, name, **args)


async def test_a_fifo_fails_at_once_instead_of_blocking(run, workspace):
    os.mkfifo(workspace / "pipe")
    with pytest.raises(ToolError, match=r"^cannot access "):
        await run("read", path="pipe")
    with pytest.raises(ToolError, match=r"^old_text not found in "):  # read as empty
        await run("edit", path="pipe", old_text="a", new_text="b")
    with pytest.raises(ToolError, match=r"^cannot access "):
        await run("write", path="pipe", content="x", append=True)
