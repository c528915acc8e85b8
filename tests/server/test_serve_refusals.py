"""``aman serve`` refuses to start, with exit code 2 and a clear message (D5, D18, formats §1.1).

The refused processes of this module are started side by side by one fixture (start-up is mostly
imports); each test then checks one of them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.server

BAD_CONFIG = '[event_bus]\nmax_queue = 10\nmax_queue_size = 3\n\n[http]\nmax_body_bytes = 4096\nbogus = "x"\n'


def stderr_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def nothing_listens(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def refused(
    tmp_path_factory: pytest.TempPathFactory, spawn_aman: Any, free_port: Any
) -> Iterator[dict[str, tuple[Any, dict[str, Any]]]]:
    cases: dict[str, tuple[Any, dict[str, Any]]] = {}

    def case(name: str, *args: str, env: dict[str, str] | None = None, **facts: Any) -> Path:
        base = tmp_path_factory.mktemp(name)
        facts["base"] = base
        for file, text in facts.pop("files", {}).items():
            (base / file).parent.mkdir(parents=True, exist_ok=True)
            (base / file).write_text(text)
        args = tuple(a.replace("{base}", str(base)) for a in args)
        cases[name] = (spawn_aman(base, *args, env=env), facts)
        return base

    port = free_port()
    case("bind_flag", "serve", "--bind", f"0.0.0.0:{port}", "--runtime-dir", "{base}/rt", port=port)
    port = free_port()
    case(
        "bind_env",
        "serve",
        "--runtime-dir",
        "{base}/rt",
        env={"AMAN_HTTP_BIND": f"0.0.0.0:{port}"},
        port=port,
    )
    port = free_port()
    case(
        "config_cwd",
        "serve",
        "--bind",
        f"127.0.0.1:{port}",
        "--runtime-dir",
        "{base}/rt",
        files={"aman.toml": BAD_CONFIG},
        port=port,
    )
    port = free_port()
    case(
        "config_flag",
        "serve",
        "--bind",
        f"127.0.0.1:{port}",
        "--runtime-dir",
        "{base}/rt",
        "--config",
        "{base}/etc/custom.toml",
        files={"etc/custom.toml": BAD_CONFIG},
        port=port,
    )
    case("unknown_flag", "serve", "--no-such-flag")
    yield cases
    for exited, _ in cases.values():
        if exited.proc.poll() is None:
            exited.proc.kill()


@pytest.mark.parametrize("name", ["bind_flag", "bind_env"])
def test_non_loopback_bind_without_token_exits_2(refused, name: str) -> None:
    exited, facts = refused[name]
    code, err = exited.result()
    assert code == 2, err
    expected = (
        f"refusing to bind 0.0.0.0:{facts['port']} without an API token"
        " (set http.token or AMAN_HTTP_TOKEN)"
    )
    assert expected in stderr_lines(err), err
    assert nothing_listens(facts["port"])
    assert not (facts["base"] / "rt").exists()  # refused before anything was created


@pytest.mark.parametrize("name", ["config_cwd", "config_flag"])
def test_invalid_config_exits_2_naming_every_key(refused, name: str) -> None:
    exited, facts = refused[name]
    code, err = exited.result()
    assert code == 2, err
    lines = stderr_lines(err)
    assert "config error: unknown key 'event_bus.max_queue'" in lines, err
    assert "config error: unknown key 'http.bogus'" in lines, err
    assert any(
        line.startswith("config error: invalid value for 'event_bus.max_queue_size'")
        for line in lines
    ), err
    assert not any("max_body_bytes" in line for line in lines), err  # a valid key is not named
    assert nothing_listens(facts["port"])
    assert not (facts["base"] / "rt").exists()


def test_unknown_flag_exits_2_with_usage(refused) -> None:
    code, err = refused["unknown_flag"][0].result()
    assert code == 2
    assert "usage:" in err
    assert "--no-such-flag" in err


def test_second_server_on_same_runtime_dir_exits_2(aman, run_aman, free_port) -> None:
    first = aman()
    port = free_port()
    code, err = run_aman(
        "serve", "--bind", f"127.0.0.1:{port}", "--runtime-dir", str(first.runtime_dir)
    )
    assert code == 2, err
    path = first.runtime_dir.resolve()
    assert f"runtime dir {path} is in use by another aman process" in stderr_lines(err), err
    assert nothing_listens(port)
    # The first server is untouched.
    with first.client() as c:
        assert c.get("/health/ready").status_code == 200
        assert c.get("/runtime/config").json()["runtime_dir"] == str(path)
    assert first.stop() == 0
    # Once it stopped, the directory is free again.
    second = aman(runtime_dir=first.runtime_dir)
    with second.client() as c:
        assert c.get("/runtime/status").json()["status"] == "ready"
    assert second.stop() == 0
