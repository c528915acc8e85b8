"""``aman serve`` refuses to start, with exit code 2 and a clear message (D5, D18, formats §1.1)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.server


def stderr_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def nothing_listens(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_non_loopback_bind_without_token_exits_2(run_aman, free_port, tmp_path: Path) -> None:
    port = free_port()
    code, err = run_aman("serve", "--bind", f"0.0.0.0:{port}", "--runtime-dir", str(tmp_path / "rt"))
    assert code == 2, err
    expected = f"refusing to bind 0.0.0.0:{port} without an API token (set http.token or AMAN_HTTP_TOKEN)"
    assert expected in stderr_lines(err), err
    assert nothing_listens(port)
    assert not (tmp_path / "rt").exists()  # refused before anything was created


def test_non_loopback_bind_from_environment_without_token_exits_2(run_aman, free_port, tmp_path: Path) -> None:
    port = free_port()
    code, err = run_aman(
        "serve", "--runtime-dir", str(tmp_path / "rt"), env={"AMAN_HTTP_BIND": f"0.0.0.0:{port}"}
    )
    assert code == 2, err
    assert (
        f"refusing to bind 0.0.0.0:{port} without an API token (set http.token or AMAN_HTTP_TOKEN)"
        in stderr_lines(err)
    ), err


def test_non_loopback_bind_with_token_serves(aman, free_port) -> None:
    port = free_port()
    server = aman(token="t0k", bind=f"0.0.0.0:{port}", port=port)
    with server.client() as c:
        assert c.get("/runtime/config").json()["bind_addr"] == f"0.0.0.0:{port}"
    assert server.stop() == 0


@pytest.mark.parametrize("where", ["cwd", "flag"])
def test_unknown_config_key_exits_2_naming_it(run_aman, free_port, tmp_path: Path, where: str) -> None:
    text = '[event_bus]\nmax_queue = 10\nmax_queue_size = 3\n\n[http]\nmax_body_bytes = 4096\nbogus = "x"\n'
    if where == "cwd":
        (tmp_path / "aman.toml").write_text(text)
        args: tuple[str, ...] = ()
    else:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "custom.toml").write_text(text)
        args = ("--config", str(tmp_path / "etc" / "custom.toml"))
    port = free_port()
    code, err = run_aman(
        "serve", "--bind", f"127.0.0.1:{port}", "--runtime-dir", str(tmp_path / "rt"), *args
    )
    assert code == 2, err
    lines = stderr_lines(err)
    assert "config error: unknown key 'event_bus.max_queue'" in lines, err
    assert "config error: unknown key 'http.bogus'" in lines, err
    # A wrong value is named too, in the same run (every offending key).
    assert any(line.startswith("config error: invalid value for 'event_bus.max_queue_size'") for line in lines), err
    assert not any("max_body_bytes" in line for line in lines), err
    assert nothing_listens(port)


def test_unknown_flag_exits_2_with_usage(run_aman) -> None:
    code, err = run_aman("serve", "--no-such-flag")
    assert code == 2
    assert "usage:" in err


def test_second_server_on_same_runtime_dir_exits_2(aman, run_aman, free_port, tmp_path: Path) -> None:
    first = aman()
    port = free_port()
    code, err = run_aman("serve", "--bind", f"127.0.0.1:{port}", "--runtime-dir", str(first.runtime_dir))
    assert code == 2, err
    path = first.runtime_dir.resolve()
    assert f"runtime dir {path} is in use by another aman process" in stderr_lines(err), err
    assert nothing_listens(port)
    # The first server is untouched.
    with first.client() as c:
        assert c.get("/health/ready").status_code == 200
    assert first.stop() == 0
    # Once it stopped, the directory is free again.
    second = aman(runtime_dir=first.runtime_dir)
    with second.client() as c:
        assert c.get("/runtime/status").json()["status"] == "ready"
    assert second.stop() == 0
