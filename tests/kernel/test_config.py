"""``kernel/config.py``: loading, layering, validation, paths and ``set`` (formats §1, http-api §10)."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kernel.config import Config, check_value, is_loopback, parse_bind
from sdk import ConfigChange, ConfigError, ConfigKey, Failure, Invalid

REFUSE_ANY = (
    "refusing to bind 0.0.0.0:9090 without an API token (set http.token or AMAN_HTTP_TOKEN)"
)


def make(tmp_path: Path, text: str | None = None, **kwargs: Any) -> Config:
    """A validated Config with ``text`` as ``<tmp_path>/aman.toml`` (no file when None)."""
    if text is not None:
        (tmp_path / "aman.toml").write_text(text)
    kwargs.setdefault("env", {})
    kwargs.setdefault("cwd", tmp_path)
    config = Config(**kwargs)
    config.validate()
    return config


def read_toml(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def error_lines(text: str, **kwargs: Any) -> list[str]:
    """The lines of the ConfigError that ``validate`` raises for ``text``."""
    tmp: Path = kwargs.pop("tmp_path")
    with pytest.raises(ConfigError) as info:
        make(tmp, text, **kwargs)
    return info.value.message.splitlines()


# --- defaults and the file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "default"),
    [
        ("http.bind", "127.0.0.1:9090"),
        ("http.token", ""),
        ("http.max_body_bytes", 1_048_576),
        ("http.max_sse_clients", 256),
        ("runtime.dir", "~/.aman"),
        ("runtime.autostart", True),
        ("runtime.start_timeout_sec", 30),
        ("runtime.drain_timeout_sec", 30),
        ("storage.synchronous", "full"),
        ("event_bus.mode", "persistent"),
        ("event_bus.max_queue_size", 10_000),
        ("event_bus.dedup_window_ms", 30_000),
        ("event_bus.handler_timeout_ms", 30_000),
        ("event_bus.retry_max_attempts", 5),
        ("event_bus.retry_backoff_ms", [100, 500, 2000]),
        ("event_bus.retry_queue_max", 1000),
        ("event_bus.overflow_max_events", 100_000),
        ("event_bus.dead_letter_expired", False),
        ("event_bus.event_store_max_events", 10_000),
        ("debug.force_enable_debug_endpoints", False),
        ("plugins.dir", "plugins"),
        ("plugins.max_archive_bytes", 16_777_216),
        ("plugins.max_members", 2000),
        ("plugins.max_unpacked_bytes", 67_108_864),
        ("plugins.max_member_bytes", 16_777_216),
        ("plugins.load_timeout_sec", 30),
        ("plugins.unload_timeout_sec", 30),
        ("plugins.route_timeout_sec", 30),
        ("plugins.health_interval_sec", 30),
        ("plugins.quarantine_after_failures", 3),
        ("audit.max_records", 100_000),
    ],
)
def test_defaults_match_formats_1_2(tmp_path: Path, key: str, default: Any) -> None:
    config = make(tmp_path)

    assert config.get(key) == default


def test_without_file_there_is_no_path_and_nothing_overridden(tmp_path: Path) -> None:
    config = make(tmp_path)

    assert config.path is None
    assert config.overridden() == []


def test_get_returns_a_copy_of_list_values(tmp_path: Path) -> None:
    config = make(tmp_path)

    config.get("event_bus.retry_backoff_ms").append(1)

    assert config.get("event_bus.retry_backoff_ms") == [100, 500, 2000]


def test_unknown_key_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        make(tmp_path).get("event_bus.max_queue")


def test_reads_aman_toml_of_the_working_directory(tmp_path: Path) -> None:
    config = make(tmp_path, "[event_bus]\nmax_queue_size = 77\n[http]\ntoken = 'abc'\n")

    assert config.path == (tmp_path / "aman.toml").resolve()
    assert config.get("event_bus.max_queue_size") == 77
    assert config.get("http.token") == "abc"
    assert config.get("event_bus.mode") == "persistent"  # not in the file: default


def test_explicit_path_wins_over_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "aman.toml").write_text("[event_bus]\nmax_queue_size = 1000\n")
    other = tmp_path / "etc" / "other.toml"
    other.parent.mkdir()
    other.write_text("[event_bus]\nmax_queue_size = 2000\n")

    config = make(tmp_path, path=other)

    assert config.path == other.resolve()
    assert config.get("event_bus.max_queue_size") == 2000


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config error: file not found: "):
        Config(tmp_path / "nope.toml", env={}, cwd=tmp_path)


def test_malformed_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "aman.toml").write_text("[http\nbind = 1\n")

    with pytest.raises(ConfigError, match=r"^config error: .*aman\.toml"):
        Config(env={}, cwd=tmp_path)


def test_toml_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "aman.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")

    with pytest.raises(ConfigError, match=r"^config error: .*aman\.toml: nested too deeply$"):
        Config(env={}, cwd=tmp_path)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config error: cannot read "):
        Config(tmp_path, env={}, cwd=tmp_path)  # a directory


# --- precedence: defaults < file < env < cli ---------------------------------------------------


@pytest.mark.parametrize(
    ("file", "env", "cli", "expected"),
    [
        (False, False, False, "127.0.0.1:9090"),
        (True, False, False, "127.0.0.1:1111"),
        (True, True, False, "127.0.0.1:2222"),
        (True, True, True, "127.0.0.1:3333"),
        (False, False, True, "127.0.0.1:3333"),
        (True, False, True, "127.0.0.1:3333"),
    ],
)
def test_precedence_defaults_file_env_cli(
    tmp_path: Path, file: bool, env: bool, cli: bool, expected: str
) -> None:
    config = make(
        tmp_path,
        "[http]\nbind = '127.0.0.1:1111'\n" if file else None,
        env={"AMAN_HTTP_BIND": "127.0.0.1:2222"} if env else {},
        cli={"http.bind": "127.0.0.1:3333"} if cli else {},
    )

    assert config.get("http.bind") == expected


def test_env_values_are_parsed_to_the_key_type(tmp_path: Path) -> None:
    config = make(
        tmp_path,
        env={
            "AMAN_EVENT_BUS_MAX_QUEUE_SIZE": " 4096 ",
            "AMAN_RUNTIME_DRAIN_TIMEOUT_SEC": "7",
            "AMAN_EVENT_BUS_MODE": "in_memory",
            "AMAN_DEBUG_FORCE_ENABLE_DEBUG_ENDPOINTS": "TRUE",
        },
    )

    assert config.get("event_bus.max_queue_size") == 4096
    assert config.get("runtime.drain_timeout_sec") == 7
    assert config.get("event_bus.mode") == "in_memory"
    assert config.get("debug.force_enable_debug_endpoints") is True
    assert config.overridden() == [
        "debug.force_enable_debug_endpoints",
        "event_bus.max_queue_size",
        "event_bus.mode",
        "runtime.drain_timeout_sec",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("No", False)],
)
def test_env_booleans(tmp_path: Path, raw: str, expected: bool) -> None:
    config = make(tmp_path, env={"AMAN_DEBUG_FORCE_ENABLE_DEBUG_ENDPOINTS": raw})

    assert config.get("debug.force_enable_debug_endpoints") is expected


def test_environment_variables_unrelated_to_aman_are_ignored(tmp_path: Path) -> None:
    config = make(tmp_path, env={"HOME": "/elsewhere", "AMAN_NOT_A_KEY": "1"})

    assert config.overridden() == []


def test_api_token_alias(tmp_path: Path) -> None:
    config = make(tmp_path, env={"AMAN_API_TOKEN": "from-alias"})

    assert config.get("http.token") == "from-alias"
    assert config.overridden() == ["http.token"]


def test_http_token_variable_wins_over_the_alias(tmp_path: Path) -> None:
    config = make(tmp_path, env={"AMAN_API_TOKEN": "alias", "AMAN_HTTP_TOKEN": "primary"})

    assert config.get("http.token") == "primary"


def test_cli_and_env_together_are_both_overridden(tmp_path: Path) -> None:
    config = make(
        tmp_path,
        "[http]\ntoken = 'file'\n",
        env={"AMAN_HTTP_TOKEN": "env"},
        cli={"http.token": "cli", "runtime.dir": "rt"},
    )

    assert config.get("http.token") == "cli"
    assert config.overridden() == ["http.token", "runtime.dir"]


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("AMAN_EVENT_BUS_MAX_QUEUE_SIZE", "lots"),
        ("AMAN_EVENT_BUS_MAX_QUEUE_SIZE", "15"),  # below the minimum 16
        ("AMAN_EVENT_BUS_MAX_QUEUE_SIZE", ""),
        ("AMAN_RUNTIME_DRAIN_TIMEOUT_SEC", "601"),
        ("AMAN_EVENT_BUS_MODE", "disk"),
        ("AMAN_DEBUG_FORCE_ENABLE_DEBUG_ENDPOINTS", "maybe"),
        ("AMAN_HTTP_BIND", "no-port"),
    ],
)
def test_invalid_env_value_is_a_config_error_naming_the_variable(
    tmp_path: Path, var: str, raw: str
) -> None:
    lines = error_lines("", tmp_path=tmp_path, env={var: raw})

    assert len(lines) == 1
    assert lines[0].startswith(f"config error: invalid value for {var}: ")


def test_invalid_cli_value_is_a_config_error(tmp_path: Path) -> None:
    lines = error_lines("", tmp_path=tmp_path, cli={"http.bind": "9090"})

    assert lines == ["config error: invalid value for 'http.bind': must be HOST:PORT"]


# --- validation --------------------------------------------------------------------------------

BAD_FILE = """
[http]
bogus = 1
max_body_bytes = "big"
max_sse_clients = 0
bind = "nohost"

[event_bus]
max_queue = 5
mode = "disk"
retry_backoff_ms = []
dead_letter_expired = 1

[runtime]
autostart = "yes"

[nosuch]
x = 1
"""


def test_validate_names_every_offending_key_one_per_line(tmp_path: Path) -> None:
    lines = error_lines(BAD_FILE, tmp_path=tmp_path, env={"AMAN_EVENT_BUS_MODE": "disk"})

    assert sorted(lines) == sorted(
        [
            "config error: unknown key 'http.bogus'",
            "config error: unknown key 'event_bus.max_queue'",
            "config error: unknown key 'nosuch.x'",
            "config error: invalid value for 'http.max_body_bytes': must be an integer",
            "config error: invalid value for 'http.max_sse_clients': must be between 1 and 10000",
            "config error: invalid value for 'http.bind': must be HOST:PORT",
            "config error: invalid value for 'event_bus.mode': must be one of: persistent, in_memory",
            "config error: invalid value for 'event_bus.retry_backoff_ms': must have 1 to 20 elements",
            "config error: invalid value for 'event_bus.dead_letter_expired': must be a boolean",
            "config error: invalid value for 'runtime.autostart': must be a boolean",
            "config error: invalid value for AMAN_EVENT_BUS_MODE: must be one of: persistent, in_memory",
        ]
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("http.max_body_bytes = true", "must be an integer"),  # a bool is no integer
        ("http.max_body_bytes = 1.5", "must be an integer"),
        ("http.max_body_bytes = 1023", "must be between 1024 and 104857600"),
        ("http.max_body_bytes = 104857601", "must be between 1024 and 104857600"),
        ("http.token = 5", "must be a string"),
        ("event_bus.retry_backoff_ms = [1, 'a']", "must be an array of integers"),
        ("event_bus.retry_backoff_ms = 100", "must be an array of integers"),
        ("event_bus.retry_backoff_ms = [100, 600001]", "must be between 0 and 600000"),
        ("storage.synchronous = 'off'", "must be one of: full, normal"),
        ("plugin.hello = 3", "must be a table"),
    ],
)
def test_invalid_values(tmp_path: Path, line: str, reason: str) -> None:
    key = line.split(" = ")[0]

    lines = error_lines(line + "\n", tmp_path=tmp_path)

    assert lines == [f"config error: invalid value for '{key}': {reason}"]


@pytest.mark.parametrize(
    "line",
    [
        "http.max_body_bytes = 1024",
        "http.max_body_bytes = 104857600",
        "event_bus.dedup_window_ms = 0",
        "event_bus.retry_backoff_ms = [0]",
        "storage.synchronous = 'normal'",
        "http.bind = '[::1]:0'",
    ],
)
def test_boundary_values_are_accepted(tmp_path: Path, line: str) -> None:
    make(tmp_path, line + "\n")


def test_free_form_plugin_tables_accept_any_keys(tmp_path: Path) -> None:
    config = make(
        tmp_path,
        """
[plugin.hello]
greeting = "hi"
count = 3
list = [1, "two", 3.0]

[plugin.hello.nested.deeper]
flag = true
""",
    )

    assert config.plugin_config("hello") == {
        "greeting": "hi",
        "count": 3,
        "list": [1, "two", 3.0],
        "nested": {"deeper": {"flag": True}},
    }
    assert config.plugin_config("absent") == {}


def test_plugin_config_is_a_copy(tmp_path: Path) -> None:
    config = make(tmp_path, "[plugin.hello]\nitems = [1]\n")

    config.plugin_config("hello")["items"].append(2)

    assert config.plugin_config("hello") == {"items": [1]}


def test_plugin_declared_keys_are_validated_and_owned(tmp_path: Path) -> None:
    (tmp_path / "aman.toml").write_text("[team]\nlevel = 9\n")
    config = Config(env={}, cwd=tmp_path)
    config.declare("team", [ConfigKey(name="team.level", type=int, default=1, maximum=5)])

    with pytest.raises(ConfigError) as info:
        config.validate()

    assert info.value.message == "config error: invalid value for 'team.level': must be at most 5"
    assert config.owner("team.level") == "team"
    assert config.owner("http.bind") == "kernel"
    assert config.owner("plugin.x.y") == "kernel"
    assert config.owner("team.other") is None


def test_a_key_declared_twice_is_refused(tmp_path: Path) -> None:
    config = make(tmp_path)

    with pytest.raises(ConfigError, match=r"^config key http\.bind declared by both kernel and p$"):
        config.declare("p", [ConfigKey(name="http.bind", type=str, default="")])


def test_undeclared_keys_become_unknown(tmp_path: Path) -> None:
    (tmp_path / "aman.toml").write_text("[team]\nlevel = 2\n")
    config = Config(env={}, cwd=tmp_path)
    config.declare("team", [ConfigKey(name="team.level", type=int, default=1)])
    config.validate()
    assert config.get("team.level") == 2

    config.undeclare("team")

    with pytest.raises(ConfigError, match=r"^config error: unknown key 'team\.level'$"):
        config.validate()


# --- cross-key rules ---------------------------------------------------------------------------


def test_non_loopback_bind_without_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, "[http]\nbind = '0.0.0.0:9090'\n")

    assert info.value.message == REFUSE_ANY


def test_non_loopback_bind_from_the_cli_without_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, cli={"http.bind": "192.168.1.5:80"})

    assert info.value.message == (
        "refusing to bind 192.168.1.5:80 without an API token (set http.token or AMAN_HTTP_TOKEN)"
    )


@pytest.mark.parametrize(
    ("text", "env", "cli"),
    [
        ("[http]\nbind = '0.0.0.0:9090'\ntoken = 't'\n", {}, {}),
        ("[http]\nbind = '0.0.0.0:9090'\n", {"AMAN_HTTP_TOKEN": "t"}, {}),
        ("[http]\nbind = '0.0.0.0:9090'\n", {"AMAN_API_TOKEN": "t"}, {}),
        ("", {}, {"http.bind": "[::]:9090", "http.token": "t"}),
        ("[http]\nbind = 'localhost:9090'\n", {}, {}),
        ("[http]\nbind = '[::1]:9090'\n", {}, {}),
        ("[http]\nbind = '127.0.0.5:9090'\n", {}, {}),
    ],
)
def test_bind_rule_is_satisfied(
    tmp_path: Path, text: str, env: dict[str, str], cli: dict[str, Any]
) -> None:
    make(tmp_path, text, env=env, cli=cli)


def test_member_bytes_must_not_exceed_unpacked_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, "[plugins]\nmax_member_bytes = 4096\nmax_unpacked_bytes = 2048\n")

    assert info.value.message == (
        "plugins.max_member_bytes must not exceed plugins.max_unpacked_bytes"
    )


# --- parse_bind, is_loopback, check_value --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:0", ("localhost", 0)),
        ("example.com:65535", ("example.com", 65535)),
    ],
)
def test_parse_bind(value: str, expected: tuple[str, int]) -> None:
    assert parse_bind(value) == expected


@pytest.mark.parametrize(
    "value",
    ["9090", "127.0.0.1", ":9090", "host:", "host:65536", "host:-1", "host:http", "[::1:9090"],
)
def test_parse_bind_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        parse_bind(value)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (ConfigKey(name="a.f", type=float, default=0.0, minimum=0, maximum=2), 1, None),
        (
            ConfigKey(name="a.f", type=float, default=0.0, minimum=0, maximum=2),
            2.5,
            "must be between 0 and 2",
        ),
        (ConfigKey(name="a.f", type=float, default=0.0), "1", "must be a number"),
        (ConfigKey(name="a.f", type=float, default=0.0), True, "must be a number"),
        (ConfigKey(name="a.s", type=list[str], default=[]), ["x", "y"], None),
        (
            ConfigKey(name="a.s", type=list[str], default=[]),
            ["x", 1],
            "must be an array of strings",
        ),
        (ConfigKey(name="a.i", type=list[int], default=[]), [True], "must be an array of integers"),
        (ConfigKey(name="a.t", type=dict, default={}), {"any": [1]}, None),
        (ConfigKey(name="a.t", type=dict, default={}), [], "must be a table"),
        (ConfigKey(name="a.b", type=bool, default=False), 0, "must be a boolean"),
        (ConfigKey(name="a.p", type=Path, default="x"), 3, "must be a string"),
    ],
)
def test_check_value(key: ConfigKey, value: Any, reason: str | None) -> None:
    assert check_value(key, value) == reason


# --- paths -------------------------------------------------------------------------------------


def test_runtime_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "aman.toml"
    conf.parent.mkdir()
    conf.write_text("[runtime]\ndir = 'state'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    config = make(elsewhere, path=conf)

    assert config.resolve_path("runtime.dir") == tmp_path / "etc" / "state"


def test_plugins_dir_is_relative_to_the_runtime_dir(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "aman.toml"
    conf.parent.mkdir()
    conf.write_text("[runtime]\ndir = 'state'\n[plugins]\ndir = 'installed'\n")

    config = make(tmp_path, path=conf)

    assert config.resolve_path("plugins.dir") == tmp_path / "etc" / "state" / "installed"


def test_default_plugins_dir_follows_the_runtime_dir(tmp_path: Path) -> None:
    config = make(tmp_path, cli={"runtime.dir": str(tmp_path / "rt")})

    assert config.resolve_path("plugins.dir") == tmp_path / "rt" / "plugins"


@pytest.mark.parametrize(
    ("env", "cli"),
    [({"AMAN_RUNTIME_DIR": "rt"}, {}), ({}, {"runtime.dir": "rt"})],
)
def test_env_and_cli_paths_are_relative_to_the_working_directory(
    tmp_path: Path, env: dict[str, str], cli: dict[str, Any]
) -> None:
    conf = tmp_path / "etc" / "aman.toml"
    conf.parent.mkdir()
    conf.write_text("[runtime]\ndir = 'state'\n")
    cwd = tmp_path / "work"
    cwd.mkdir()

    config = make(cwd, path=conf, env=env, cli=cli)

    assert config.resolve_path("runtime.dir") == cwd / "rt"


def test_cli_plugins_dir_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    config = make(tmp_path, cli={"runtime.dir": "/srv/aman", "plugins.dir": "p"})

    assert config.resolve_path("plugins.dir") == tmp_path / "p"


def test_config_relative_paths_without_file_use_the_working_directory(tmp_path: Path) -> None:
    config = make(tmp_path)
    config.declare("skills", [ConfigKey(name="skills.dir", type=Path, default="skills")])

    assert config.resolve_path("skills.dir") == tmp_path / "skills"


def test_config_relative_paths_with_a_file_use_its_directory(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "aman.toml"
    conf.parent.mkdir()
    conf.write_text("[skills]\ndir = 'sk'\n")
    config = Config(conf, env={}, cwd=tmp_path)
    config.declare("skills", [ConfigKey(name="skills.dir", type=Path, default="skills")])
    config.validate()

    assert config.resolve_path("skills.dir") == tmp_path / "etc" / "sk"


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = make(tmp_path, "[plugins]\ndir = '~/plugs'\n")

    assert config.resolve_path("runtime.dir") == tmp_path / "home" / ".aman"
    assert config.resolve_path("plugins.dir") == tmp_path / "home" / "plugs"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    config = make(tmp_path, f"[runtime]\ndir = '{tmp_path / 'abs'}'\n")

    assert config.resolve_path("runtime.dir") == tmp_path / "abs"


# --- set ---------------------------------------------------------------------------------------

START = """
[http]
token = "t0"

[event_bus]
max_queue_size = 100

[plugin.hello]
greeting = "hi"
"""


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Config:
    return make(tmp_path, START)


@pytest.fixture(name="calls")
def _calls(config: Config) -> list[tuple[ConfigChange, dict[str, tuple[Any, Any]], str]]:
    calls: list[tuple[ConfigChange, dict[str, tuple[Any, Any]], str]] = []

    async def on_change(result: ConfigChange, values: dict[str, tuple[Any, Any]], op: str) -> None:
        calls.append((result, values, op))

    config.on_change = on_change
    return calls


async def test_set_live_key_takes_effect_at_once_and_is_persisted(
    config: Config, tmp_path: Path
) -> None:
    result = await config.set({"event_bus.max_queue_size": 500}, operator="alice")

    assert result == ConfigChange(
        applied=["event_bus.max_queue_size"], restart_required=[], overridden=[]
    )
    assert config.get("event_bus.max_queue_size") == 500
    assert read_toml(tmp_path / "aman.toml") == {
        "http": {"token": "t0"},
        "event_bus": {"max_queue_size": 500},
        "plugin": {"hello": {"greeting": "hi"}},
    }


async def test_set_restart_key_keeps_the_running_value(config: Config, tmp_path: Path) -> None:
    result = await config.set(
        {"http.bind": "127.0.0.1:7000", "runtime.autostart": False}, operator="alice"
    )

    assert result.restart_required == ["http.bind", "runtime.autostart"]
    assert result.applied == result.overridden == []
    assert config.get("http.bind") == "127.0.0.1:9090"
    assert config.get("runtime.autostart") is True
    assert read_toml(tmp_path / "aman.toml")["http"] == {"token": "t0", "bind": "127.0.0.1:7000"}
    restarted = make(tmp_path)
    assert restarted.get("http.bind") == "127.0.0.1:7000"
    assert restarted.get("runtime.autostart") is False


async def test_restart_key_from_the_file_keeps_its_boot_value(tmp_path: Path) -> None:
    config = make(tmp_path, "[http]\nbind = '127.0.0.1:1111'\n")

    await config.set({"http.bind": "127.0.0.1:2222"}, operator="op")
    await config.set({"http.bind": None}, operator="op")

    assert config.get("http.bind") == "127.0.0.1:1111"
    assert "http" not in read_toml(tmp_path / "aman.toml")


async def test_set_env_or_cli_shadowed_keys_are_overridden(tmp_path: Path) -> None:
    config = make(
        tmp_path,
        START,
        env={"AMAN_EVENT_BUS_MAX_QUEUE_SIZE": "300"},
        cli={"http.token": "cli-token"},
    )

    result = await config.set(
        {"event_bus.max_queue_size": 500, "http.token": "new", "http.max_sse_clients": 9},
        operator="op",
    )

    assert result == ConfigChange(
        applied=["http.max_sse_clients"],
        restart_required=[],
        overridden=["event_bus.max_queue_size", "http.token"],
    )
    assert config.get("event_bus.max_queue_size") == 300
    assert config.get("http.token") == "cli-token"
    assert config.get("http.max_sse_clients") == 9
    saved = read_toml(tmp_path / "aman.toml")
    assert saved["event_bus"]["max_queue_size"] == 500
    assert saved["http"]["token"] == "new"


async def test_set_the_current_value_is_accepted_and_listed(config: Config) -> None:
    result = await config.set({"event_bus.max_queue_size": 100}, operator="op")

    assert result.applied == ["event_bus.max_queue_size"]


async def test_set_none_removes_the_key_and_empty_tables(config: Config, tmp_path: Path) -> None:
    result = await config.set({"event_bus.max_queue_size": None}, operator="op")

    assert result.applied == ["event_bus.max_queue_size"]
    assert config.get("event_bus.max_queue_size") == 10_000
    assert "event_bus" not in read_toml(tmp_path / "aman.toml")


async def test_set_none_for_a_key_not_in_the_file_is_harmless(
    config: Config, tmp_path: Path
) -> None:
    before = read_toml(tmp_path / "aman.toml")

    await config.set({"plugins.max_members": None}, operator="op")

    assert read_toml(tmp_path / "aman.toml") == before


async def test_set_plugin_table_fields(config: Config, tmp_path: Path) -> None:
    result = await config.set(
        {
            "plugin.hello.greeting": "hey",
            "plugin.hello.extra.depth": [1, 2],
            "plugin.new": {"a": 1},
        },
        operator="op",
    )

    assert result.applied == ["plugin.hello.extra.depth", "plugin.hello.greeting", "plugin.new"]
    assert config.plugin_config("hello") == {"greeting": "hey", "extra": {"depth": [1, 2]}}
    assert config.plugin_config("new") == {"a": 1}
    assert read_toml(tmp_path / "aman.toml")["plugin"] == {
        "hello": {"greeting": "hey", "extra": {"depth": [1, 2]}},
        "new": {"a": 1},
    }


@pytest.mark.parametrize(
    "key", ["event_bus.max_queue", "http", "plugin.*", "nosuch.key", "http.bind.x"]
)
async def test_set_unknown_key(config: Config, key: str) -> None:
    with pytest.raises(Invalid) as info:
        await config.set({key: 1}, operator="op")

    assert info.value.message == f"unknown config key: {key}"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("http.max_sse_clients", 0, "must be between 1 and 10000"),
        ("http.max_sse_clients", "5", "must be an integer"),
        ("runtime.autostart", "yes", "must be a boolean"),
        ("event_bus.mode", "disk", "must be one of: persistent, in_memory"),
        ("http.bind", "nope", "must be HOST:PORT"),
        ("plugin.hello", "text", "must be a table"),
        ("plugin.hello.greeting.x", 1, "plugin.hello.greeting is not a table"),
    ],
)
async def test_set_invalid_value(config: Config, key: str, value: Any, reason: str) -> None:
    with pytest.raises(Invalid) as info:
        await config.set({key: value}, operator="op")

    assert info.value.message == f"invalid value for {key}: {reason}"


async def test_set_is_all_or_nothing(config: Config, tmp_path: Path, calls: list[Any]) -> None:
    before = (tmp_path / "aman.toml").read_bytes()

    with pytest.raises(Invalid):
        await config.set(
            {"event_bus.max_queue_size": 500, "http.token": "t1", "http.max_sse_clients": -1},
            operator="op",
        )

    assert (tmp_path / "aman.toml").read_bytes() == before
    assert config.get("event_bus.max_queue_size") == 100
    assert config.get("http.token") == "t0"
    assert calls == []


async def test_set_cross_rule_bind_without_token(tmp_path: Path) -> None:
    config = make(tmp_path)

    with pytest.raises(Invalid) as info:
        await config.set({"http.bind": "0.0.0.0:9090"}, operator="op")

    assert info.value.message == f"invalid configuration: {REFUSE_ANY}"
    assert config.path is None
    assert not (tmp_path / "aman.toml").exists()


async def test_set_cross_rule_removing_the_token_of_a_public_bind(tmp_path: Path) -> None:
    config = make(tmp_path)
    result = await config.set({"http.bind": "0.0.0.0:9090", "http.token": "s"}, operator="op")
    assert result == ConfigChange(
        applied=["http.token"], restart_required=["http.bind"], overridden=[]
    )
    before = (tmp_path / "aman.toml").read_bytes()

    with pytest.raises(Invalid) as info:
        await config.set({"http.token": None}, operator="op")

    assert info.value.message == f"invalid configuration: {REFUSE_ANY}"
    assert (tmp_path / "aman.toml").read_bytes() == before
    assert config.get("http.token") == "s"


async def test_set_cross_rule_between_two_live_keys(config: Config) -> None:
    with pytest.raises(Invalid) as info:
        await config.set({"plugins.max_member_bytes": 128 * 1024 * 1024}, operator="op")

    assert info.value.message == (
        "invalid configuration: plugins.max_member_bytes must not exceed plugins.max_unpacked_bytes"
    )


async def test_set_creates_aman_toml_in_the_working_directory(tmp_path: Path) -> None:
    config = make(tmp_path)

    result = await config.set({"event_bus.dedup_window_ms": 0}, operator="op")

    assert result.applied == ["event_bus.dedup_window_ms"]
    assert config.path == tmp_path / "aman.toml"
    assert read_toml(tmp_path / "aman.toml") == {"event_bus": {"dedup_window_ms": 0}}
    assert config.get("event_bus.dedup_window_ms") == 0


async def test_set_writes_the_config_file_in_place(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "custom.toml"
    conf.parent.mkdir()
    conf.write_text("# a comment\n[event_bus]\nmax_queue_size = 100\n")
    config = make(tmp_path, path=conf)

    await config.set({"event_bus.retry_backoff_ms": [1, 2]}, operator="op")

    assert read_toml(conf) == {"event_bus": {"max_queue_size": 100, "retry_backoff_ms": [1, 2]}}
    assert not (tmp_path / "aman.toml").exists()
    assert sorted(p.name for p in conf.parent.iterdir()) == ["custom.toml"]  # no temporary left


async def test_set_write_failure_changes_nothing(tmp_path: Path) -> None:
    config = make(tmp_path)
    calls: list[str] = []

    async def on_change(*args: Any) -> None:
        calls.append("called")

    config.on_change = on_change
    (tmp_path / "aman.toml").mkdir()  # the file to create is in the way

    with pytest.raises(Failure) as info:
        await config.set({"event_bus.max_queue_size": 500}, operator="op")

    assert info.value.message.startswith(f"cannot write {tmp_path / 'aman.toml'}: ")
    assert config.get("event_bus.max_queue_size") == 10_000
    assert config.path is None
    assert [p.name for p in tmp_path.iterdir()] == ["aman.toml"]  # no temporary left
    assert list((tmp_path / "aman.toml").iterdir()) == []
    assert calls == []


async def test_on_change_receives_result_old_and_new_values_and_operator(
    config: Config, calls: list[Any]
) -> None:
    result = await config.set(
        {"event_bus.max_queue_size": 200, "http.max_sse_clients": 3, "http.token": None},
        operator="alice",
    )

    assert calls == [
        (
            result,
            {
                "event_bus.max_queue_size": (100, 200),
                "http.max_sse_clients": (None, 3),
                "http.token": ("t0", None),
            },
            "alice",
        )
    ]


async def test_concurrent_sets_both_persist(config: Config, tmp_path: Path) -> None:
    await asyncio.gather(
        config.set({"http.max_sse_clients": 7}, operator="a"),
        config.set({"event_bus.retry_max_attempts": 2}, operator="b"),
    )

    saved = read_toml(tmp_path / "aman.toml")
    assert saved["http"]["max_sse_clients"] == 7
    assert saved["event_bus"]["retry_max_attempts"] == 2


# --- effective_tree ----------------------------------------------------------------------------


def test_effective_tree_has_every_key_nested_with_defaults(tmp_path: Path) -> None:
    tree = make(tmp_path, "[plugin.hello]\ngreeting = 'hi'\n").effective_tree()

    assert tree["http"] == {
        "bind": "127.0.0.1:9090",
        "token": "",
        "max_body_bytes": 1_048_576,
        "max_sse_clients": 256,
    }
    assert tree["event_bus"]["retry_backoff_ms"] == [100, 500, 2000]
    assert tree["audit"] == {"max_records": 100_000}
    assert tree["plugin"] == {"hello": {"greeting": "hi"}}


def test_effective_tree_shows_the_values_in_effect(tmp_path: Path) -> None:
    config = make(tmp_path, "[event_bus]\nmax_queue_size = 64\n", cli={"http.bind": "127.0.0.1:1"})

    tree = config.effective_tree()

    assert tree["event_bus"]["max_queue_size"] == 64
    assert tree["http"]["bind"] == "127.0.0.1:1"


def test_effective_tree_redacts_secrets_when_set(tmp_path: Path) -> None:
    config = make(
        tmp_path,
        "[http]\ntoken = 'sekrit'\n[plugin.hello]\napi_key = 'k'\nauth_token = 'x'\nname = 'n'\n",
    )

    tree = config.effective_tree()

    assert tree["http"]["token"] == "[REDACTED]"
    assert tree["plugin"]["hello"] == {
        "api_key": "[REDACTED]",
        "auth_token": "[REDACTED]",
        "name": "n",
    }
    assert "sekrit" not in repr(tree)
    assert config.effective_tree(redact=False)["http"]["token"] == "sekrit"


@pytest.mark.parametrize("value", ["[]:9090", "::1:9090", "host]:80", "[::1:9090"])
def test_parse_bind_refuses_ambiguous_ipv6(value):
    with pytest.raises(ValueError):
        parse_bind(value)


async def test_set_refuses_null_inside_a_table(tmp_path):
    config = Config(None, env={}, cwd=tmp_path)
    config.validate()
    with pytest.raises(Invalid, match="null only removes a whole key"):
        await config.set({"plugin.x": {"a": None}}, operator="t")
    assert not (tmp_path / "aman.toml").exists()


# --- plugins' keys, hand edits and overlaps -------------------------------------------------------


def test_a_key_that_would_cover_or_enter_another_is_refused(tmp_path: Path) -> None:
    config = make(tmp_path)

    with pytest.raises(ConfigError, match=r"^config key event_bus of shadow overlaps event_bus\.mode of kernel$"):
        config.declare("shadow", [ConfigKey(name="event_bus", type=dict, default={})])
    with pytest.raises(ConfigError, match=r"^config key plugin\.hello\.greeting of p overlaps plugin\.\* of kernel$"):
        config.declare("p", [ConfigKey(name="plugin.hello.greeting", type=int, default=1)])
    with pytest.raises(ConfigError, match=r"overlaps http\.bind of kernel$"):
        config.declare("p", [ConfigKey(name="http.bind.port", type=int, default=1)])
    config.declare("p", [ConfigKey(name="p.level", type=int, default=1)])  # its own namespace
    assert config.get("p.level") == 1


async def test_overlapping_keys_in_one_change_are_refused_and_nothing_is_written(config: Config, tmp_path: Path) -> None:
    before = (tmp_path / "aman.toml").read_text()
    for changes in ({"plugin.foo": {"a": 1}, "plugin.foo.b": 2}, {"plugin.foo.b": 2, "plugin.foo": {"a": 1}}):
        with pytest.raises(Invalid, match=r"^overlapping config keys: plugin\.foo and plugin\.foo\.b$"):
            await config.set(changes, operator="op")
    assert (tmp_path / "aman.toml").read_text() == before


async def test_set_keeps_what_was_edited_by_hand_in_the_file(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "aman.toml"
    path.write_text(path.read_text() + "\n[audit]\nmax_records = 5000\n")  # while running

    await config.set({"event_bus.max_queue_size": 500}, operator="op")

    assert read_toml(path)["audit"] == {"max_records": 5000}
    assert read_toml(path)["event_bus"] == {"max_queue_size": 500}
    assert config.get("audit.max_records") != 5000  # a hand edit takes effect at the next start


async def test_set_refuses_to_overwrite_a_file_edited_into_invalid_toml(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "aman.toml"
    path.write_text("[http\n")
    with pytest.raises(Invalid, match=r"^the config file on disk is not valid, fix it first: "):
        await config.set({"event_bus.max_queue_size": 500}, operator="op")
    assert path.read_text() == "[http\n"


async def test_a_failing_change_listener_does_not_undo_an_applied_change(config: Config, tmp_path: Path) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("the bus is gone")

    config.on_change = broken
    result = await config.set({"event_bus.max_queue_size": 500}, operator="op")
    assert result.applied == ["event_bus.max_queue_size"]
    assert config.get("event_bus.max_queue_size") == 500


async def test_keys_of_installed_plugins_wait_for_them_and_leftovers_can_be_removed(tmp_path: Path) -> None:
    (tmp_path / "aman.toml").write_text("[cfgp]\nlevel = 7\n[gone]\nx = 1\n")
    config = Config(env={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key 'gone\.x'"):
        config.validate(installed=["cfgp"])  # a namespace no installed plugin has: a typo

    config.validate(installed=["cfgp", "gone"])
    config.declare("cfgp", [ConfigKey(name="cfgp.level", type=int, default=1)])  # phase 2
    config.claim()  # "gone" declares nothing any more: a warning, not a failed start
    assert config.get("cfgp.level") == 7
    await config.set({"gone.x": None}, operator="op")  # null removes a leftover key
    assert read_toml(tmp_path / "aman.toml") == {"cfgp": {"level": 7}}
    with pytest.raises(Invalid, match=r"^unknown config key: gone\.y$"):
        await config.set({"gone.y": None}, operator="op")


def test_a_wrong_value_of_an_installed_plugins_key_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "aman.toml").write_text("[cfgp]\nlevel = 70\n")
    config = Config(env={}, cwd=tmp_path)
    config.validate(installed=["cfgp"])
    config.declare("cfgp", [ConfigKey(name="cfgp.level", type=int, default=1, maximum=9)])
    with pytest.raises(ConfigError, match=r"^config error: invalid value for 'cfgp\.level': must be at most 9$"):
        config.claim()
