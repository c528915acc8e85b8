"""The hardline rules and their allowed examples (http-api §18.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builtin_plugins.security.hardline import check
from sdk import ToolDenial, ToolRequest

ROOT_DELETE = "recursive root filesystem deletion is blocked"
FORK_BOMB = "fork bomb is blocked"
MKFS = "filesystem formatting is blocked"
RAW_DISK = "raw disk write is blocked"
KILL_ALL = "killing all processes is blocked"
POWER = "system power commands are blocked"
CHMOD_ROOT = "chmod of the root filesystem is blocked"
SENSITIVE = "write to sensitive path is blocked"
DESTRUCTIVE_SQL = "destructive SQL (DROP/TRUNCATE) is blocked"
DELETE_ALL = "DELETE without WHERE clause is blocked"
DEVICE = "reading device files is blocked"

WORKSPACE = Path("/srv/aman/workspace")


def guard(tool: str, workspace: Path = WORKSPACE, origin: str = "agent", **args: Any):
    return check(ToolRequest(tool=tool, args=args, workspace=workspace, origin=origin))


def run(line: str, *args: str):
    return guard("exec", command=line, args=list(args))


# --- exec ------------------------------------------------------------------------------------

BLOCKED_COMMANDS = [
    ("rm -rf /", ROOT_DELETE),
    ("rm -fr /", ROOT_DELETE),
    ("rm -r -f /", ROOT_DELETE),
    ("sudo rm -rf /", ROOT_DELETE),
    ("rm -rf / ", ROOT_DELETE),
    ("rm --recursive --force /", ROOT_DELETE),
    ("rm -rf /*", ROOT_DELETE),
    ("rm -rf --no-preserve-root /", ROOT_DELETE),
    ("rm /", ROOT_DELETE),
    ("/bin/rm -rf '/'", ROOT_DELETE),
    ("cd /tmp && rm -rf /", ROOT_DELETE),
    ('bash -c "rm -rf /"', ROOT_DELETE),
    ("X=1 rm -rf /srv /", ROOT_DELETE),
    (":(){ :|:& };:", FORK_BOMB),
    (":(){:|:&};:", FORK_BOMB),
    ("bomb() { bomb | bomb & }; bomb", FORK_BOMB),
    ("f ( ) {  f|f &  } ; f", FORK_BOMB),
    ("function boom { boom|boom& }; boom", FORK_BOMB),
    ("f() ( f|f & ); f", FORK_BOMB),  # a subshell body
    ("f() ( f|f & ); echo defined, not called", FORK_BOMB),
    ("function f { f & f; }; f", FORK_BOMB),  # no pipe
    ("echo x #\nchmod 755 /; echo after", CHMOD_ROOT),  # a comment ends at its newline
    ("mkfs /dev/sdb1", MKFS),
    ("mkfs.ext4 /dev/sdb1", MKFS),
    ("sudo mkfs.vfat -F 32 /dev/sdc", MKFS),
    ("dd if=/dev/zero of=/dev/sda", RAW_DISK),
    ("dd of=/dev/nvme0n1 if=image.iso bs=4M", RAW_DISK),
    ("dd if=x of=/dev/hda", RAW_DISK),
    ("dd if=x of=/dev/loop0", RAW_DISK),
    ("dd if=x of=/dev/dm-1", RAW_DISK),
    ("dd if=x of=/dev/rdisk2", RAW_DISK),
    ("kill -1", KILL_ALL),
    ("kill -9 -1", KILL_ALL),
    ("sudo kill -s KILL -1", KILL_ALL),
    ("shutdown -h now", POWER),
    ("sudo reboot", POWER),
    ("halt", POWER),
    ("poweroff", POWER),
    ("/sbin/shutdown -r now", POWER),
    ("make && sudo reboot", POWER),
    ("echo done; poweroff", POWER),
    ("true || halt", POWER),
    ("echo $(reboot)", POWER),
    ("echo `reboot`", POWER),
    ("nohup shutdown now", POWER),
    ("chmod -R 777 /", CHMOD_ROOT),
    ("chmod 777 /", CHMOD_ROOT),
    ("sudo chmod -R a+rwx /", CHMOD_ROOT),
]


@pytest.mark.parametrize(("line", "reason"), BLOCKED_COMMANDS)
def test_blocked_commands(line, reason):
    assert run(line) == ToolDenial(block_type="hardline", reason=reason)


@pytest.mark.parametrize(
    ("command", "args", "reason"),
    [
        ("rm", ["-rf", "/"], ROOT_DELETE),
        ("sh", ["-c", "rm -rf /"], ROOT_DELETE),
        ("bash", ["-lc", "ls; reboot"], POWER),
        ("sh", ["-c", ":(){ :|:& };:"], FORK_BOMB),
        ("kill", ["-9", "-1"], KILL_ALL),
        ("dd", ["if=/dev/zero", "of=/dev/sda"], RAW_DISK),
        ("chmod", ["777", "/"], CHMOD_ROOT),
        # Args run as they are, no shell: quotes in them are text, not quoting.
        ("chmod", ["755", "x'", "/", "'"], CHMOD_ROOT),
        ("kill", ["x'", "-1", "'"], KILL_ALL),
        ("rm", ["-rf", '"', "/", '"'], ROOT_DELETE),
    ],
)
def test_command_and_args_are_read_together(command, args, reason):
    assert run(command, *args) == ToolDenial(block_type="hardline", reason=reason)


ALLOWED_COMMANDS = [
    "rm -rf /srv/cache",
    "ls /",
    "rm -rf ./build",
    "rm -rf ~/tmp/x",
    "mkdir /tmp/mkfs",
    "echo mkfs",
    "dd if=/dev/zero of=disk.img bs=1M count=1",
    "kill -9 1234",
    "kill -HUP 42",
    "grep reboot /var/log/syslog",
    "echo shutdown",
    "systemctl status",
    "chmod -R 755 /srv/app",
    "chmod 644 file",
    "echo ':(){ x }'",
    "ls -la",
    "echo hi # chmod 755 / (a comment to the end of the line)",
    "f() { echo f; }; f; f",
    "grep -r 'f|f&' .",
]


@pytest.mark.parametrize("line", ALLOWED_COMMANDS)
def test_allowed_commands(line):
    assert run(line) is None


def test_unbalanced_quotes_are_still_read():
    assert run('rm -rf "/').reason == ROOT_DELETE
    assert run("echo 'unterminated") is None


# --- db ----------------------------------------------------------------------------------------

BLOCKED_SQL = [
    ("DROP TABLE users", DESTRUCTIVE_SQL),
    ("drop table if exists users", DESTRUCTIVE_SQL),
    ("Drop Database main", DESTRUCTIVE_SQL),
    ("DROP  INDEX idx_users", DESTRUCTIVE_SQL),
    ("TRUNCATE users", DESTRUCTIVE_SQL),
    ("truncate table users", DESTRUCTIVE_SQL),
    ("DELETE FROM users", DELETE_ALL),
    ("delete from users;", DELETE_ALL),
    ("DELETE FROM a; SELECT * FROM b WHERE x = 1", DELETE_ALL),
    ("DELETE FROM a WHERE id = 1; DELETE FROM b", DELETE_ALL),
    # Comments and quoted names do not hide what runs.
    ("DROP/**/TABLE t", DESTRUCTIVE_SQL),
    ("DROP\nTABLE t", DESTRUCTIVE_SQL),
    ("DELETE FROM t -- WHERE a = 1", DELETE_ALL),
    ("DELETE FROM t /* WHERE a = 1 */", DELETE_ALL),
    ('DELETE FROM "WHERE"', DELETE_ALL),
    ("DELETE FROM [t] ; SELECT 1", DELETE_ALL),
]


@pytest.mark.parametrize(("sql", "reason"), BLOCKED_SQL)
def test_blocked_sql(sql, reason):
    assert guard("db", sql=sql, db_path="app.db") == ToolDenial(
        block_type="hardline", reason=reason
    )


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM users WHERE id=1",
        "delete from users where name = 'x'",
        "SELECT 1",
        "SELECT * FROM dropped_tables",
        "CREATE TABLE t (x)",
        "DROP VIEW v",
        "INSERT INTO log (msg) VALUES ('deleted')",
        "INSERT INTO log (msg) VALUES ('DROP TABLE x')",  # a keyword in a string is text
        "DELETE FROM t WHERE a = '--'",
        "DELETE FROM t WHERE a = ';'",
        "DELETE FROM t WHERE a = 'it''s' -- a note",
    ],
)
def test_allowed_sql(sql):
    assert guard("db", sql=sql) is None


# --- write, edit, read -------------------------------------------------------------------------

SENSITIVE_PATHS = [
    "/home/u/.ssh/authorized_keys",
    "/root/.ssh/id_rsa",
    "/root/.ssh/id_rsa.pub",
    "/home/u/.ssh/id_ed25519",
    "/home/u/.ssh/config",
    "/home/u/.bashrc",
    "/home/u/.zshrc",
    "/home/u/.profile",
    "/home/u/.bash_profile",
    ".env",
    "app/.env.local",
    "/home/u/.netrc",
    "/home/u/.pgpass",
    "/home/u/.npmrc",
    "/home/u/.pypirc",
    "/etc/sudoers",
    "/etc/sudoers.d/aman",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/x/../passwd",
]


@pytest.mark.parametrize("tool", ["write", "edit"])
@pytest.mark.parametrize("path", SENSITIVE_PATHS)
def test_sensitive_write_paths(tool, path):
    assert guard(tool, path=path, content="x") == ToolDenial(
        block_type="hardline", reason=SENSITIVE
    )


@pytest.mark.parametrize("tool", ["write", "edit"])
@pytest.mark.parametrize(
    "path", ["notes/todo.md", "/srv/app/config.toml", "/etc/hosts", "ssh/config"]
)
def test_ordinary_write_paths(tool, path):
    assert guard(tool, path=path, content="x") is None


def test_sensitive_write_through_a_symlink(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# rc\n")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").symlink_to(home / ".bashrc")
    assert guard("write", workspace=workspace, path="notes.txt").reason == SENSITIVE
    assert guard("write", workspace=workspace, path="other.txt") is None


def test_sensitive_paths_are_not_refused_to_read():
    assert guard("read", path="/home/u/.bashrc") is None


@pytest.mark.parametrize(
    "path", ["/dev/sda", "/dev/zero", "/dev/random", "/dev/stdin", "/dev/../dev/mem", "/dev/null/x"]
)
def test_device_reads(path):
    assert guard("read", path=path) == ToolDenial(block_type="hardline", reason=DEVICE)


@pytest.mark.parametrize("path", ["/dev/null", "dev/sda", "/srv/devices.txt", "/device"])
def test_allowed_reads(path):
    assert guard("read", path=path) is None


def test_device_read_through_a_symlink(tmp_path):
    (tmp_path / "disk").symlink_to("/dev/zero")
    assert guard("read", workspace=tmp_path, path="disk").reason == DEVICE
    (tmp_path / "void").symlink_to("/dev/null")
    assert guard("read", workspace=tmp_path, path="void") is None


# --- every origin, other tools -------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["agent", "api", "pipeline"])
def test_hardline_applies_to_every_origin(origin):
    assert guard("exec", origin=origin, command="reboot").reason == POWER


def test_rules_apply_to_their_tools_only():
    assert guard("write", path="x.txt", content="rm -rf /") is None
    assert guard("exec", command="cat", args=["/dev/sda"]) is None
    assert guard("list", path="/dev") is None
    assert guard("http", url="http://x/DROP TABLE") is None
