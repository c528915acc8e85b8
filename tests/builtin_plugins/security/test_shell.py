"""How the ``exec`` rules read a shell line (http-api §18.2)."""

from __future__ import annotations

import pytest

from builtin_plugins.security.shell import commands

LINES = [
    ("ls -la /tmp", [("ls", ("-la", "/tmp"))]),
    ("/usr/bin/git status", [("git", ("status",))]),
    ("a; b && c || d | e & f", [(n, ()) for n in "abcdef"]),
    ("a\nb", [("a", ()), ("b", ())]),
    ("echo $(date) `id`", [("echo", ("$",)), ("date", ()), ("id", ())]),
    ("{ a; }; (b)", [("a", ()), ("b", ())]),
    ("ls > out.txt 2>&1 < in", [("ls", ("2",))]),
    ("X=1 Y=2 make all", [("make", ("all",))]),
    ("if true; then reboot; fi", [("true", ()), ("reboot", ())]),
    ("! grep x f", [("grep", ("x", "f"))]),
    ("sudo -n rm -rf /", [("sudo", ("-n", "rm", "-rf", "/")), ("rm", ("-rf", "/"))]),
    (
        "env -i A=1 nohup halt",
        [("env", ("-i", "A=1", "nohup", "halt")), ("nohup", ("halt",)), ("halt", ())],
    ),
    ("bash -lc 'ls; id'", [("bash", ("-lc", "ls; id")), ("ls", ()), ("id", ())]),
    ("eval 'a;b'", [("eval", ("a;b",)), ("a", ()), ("b", ())]),
    ("bash script.sh", [("bash", ("script.sh",))]),
    ("echo 'a; b' \"c | d\"", [("echo", ("a; b", "c | d"))]),
    ("echo 'unbalanced; reboot", [("echo", ("unbalanced",)), ("reboot", ())]),
    ("", []),
]


@pytest.mark.parametrize(("line", "expected"), LINES)
def test_commands_of_a_line(line, expected):
    assert list(commands(line)) == expected
