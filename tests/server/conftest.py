"""Helpers for tests against a real ``aman serve`` process (marker ``server``).

``aman`` is a factory fixture::

    server = aman(token="t")                # started: /health/ready answered 200
    with server.client() as c:              # httpx.Client sending "Authorization: Bearer t"
        assert c.get("/runtime/status").status_code == 200
    assert server.stop() == 0               # SIGTERM; the exit code

Every process runs in its own session with ``cwd = tmp_path`` (unless told otherwise), a runtime
directory under ``tmp_path``, a free loopback port, an environment without the host's ``AMAN_*``
variables, and stderr captured to a file. Readiness is found by polling ``/health/ready`` against
a deadline. Whatever is still running at teardown is killed.

Extra arguments go to ``aman serve``; keywords choose ``env``, ``cwd``, ``runtime_dir``,
``bind``, ``pythonpath`` and ``wait`` (``wait=False`` + ``server.wait_live()`` for a runtime
that does not start by itself). ``module_aman`` is the same factory for a server shared by a
module's tests. ``run_aman(*args)``
runs a process that is expected to exit on its own (refusals) and returns its exit code and
stderr; ``spawn_aman`` starts such processes side by side. ``entry_point_plugin`` writes a
module plus a ``.dist-info`` that registers it under the ``aman.plugins`` entry point.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

START_DEADLINE_SEC = 20.0
STOP_DEADLINE_SEC = 20.0
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=2.0)


def aman_command() -> list[str]:
    """The ``aman`` console script next to the interpreter, or ``python -m kernel.cli``."""
    script = Path(sys.executable).with_name("aman")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "kernel.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(name="free_port", scope="session")
def _free_port() -> Callable[[], int]:
    """``free_port()``: a loopback TCP port nobody listens on right now."""
    return free_port


def clean_env(
    extra: Mapping[str, str] | None = None, pythonpath: Path | None = None
) -> dict[str, str]:
    """The host environment without ``AMAN_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMAN_")}
    env["PYTHONUNBUFFERED"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(pythonpath), env.get("PYTHONPATH", "")])
        )
    env.update(extra or {})
    return env


class Server:
    """One ``aman serve`` process."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        port: int,
        cwd: Path,
        runtime_dir: Path,
        stderr_path: Path,
        token: str | None,
    ) -> None:
        self.proc = proc
        self.port = port
        self.cwd = cwd
        self.runtime_dir = runtime_dir
        self.stderr_path = stderr_path
        self.token = token
        self.base_url = f"http://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def client(self, token: str | None = None, *, auth: bool = True, **kwargs: Any) -> httpx.Client:
        """An httpx client on this server; sends ``Authorization: Bearer`` with ``token`` (or the
        server's own token) unless ``auth`` is false."""
        headers = dict(kwargs.pop("headers", {}))
        token = token if token is not None else self.token
        if auth and token:
            headers.setdefault("Authorization", f"Bearer {token}")
        return httpx.Client(base_url=self.base_url, timeout=HTTP_TIMEOUT, headers=headers, **kwargs)

    def wait_ready(self, deadline_sec: float = START_DEADLINE_SEC) -> float:
        """Poll ``/health/ready`` until it is 200; the seconds it took. Fails at once if the
        process exits, or at the deadline, with its stderr."""
        started = time.monotonic()
        deadline = started + deadline_sec
        last: str = "no answer"
        with httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(1.0)) as client:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    pytest.fail(f"aman serve exited with {code} before ready:\n{self.stderr}")
                try:
                    r = client.get("/health/ready")
                    if r.status_code == 200:
                        return time.monotonic() - started
                    last = f"{r.status_code} {r.text}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.01)
        pytest.fail(f"aman serve not ready within {deadline_sec} s (last: {last}):\n{self.stderr}")

    def wait_live(self, deadline_sec: float = START_DEADLINE_SEC) -> None:
        """Poll ``/health/live`` until it answers 200 (phase 0 is enough)."""
        deadline = time.monotonic() + deadline_sec
        with httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(1.0)) as client:
            while time.monotonic() < deadline:
                if (code := self.proc.poll()) is not None:
                    pytest.fail(f"aman serve exited with {code}:\n{self.stderr}")
                try:
                    if client.get("/health/live").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        pytest.fail(f"aman serve not live within {deadline_sec} s:\n{self.stderr}")

    def wait_exit(self, timeout: float = STOP_DEADLINE_SEC) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"aman serve did not exit within {timeout} s:\n{self.stderr}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_DEADLINE_SEC) -> int:
        """Send ``sig`` (SIGTERM) and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def is_listening(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


StartServer = Callable[..., Server]


class Launcher:
    """Starts ``aman serve`` processes whose files live under ``base`` and kills them on close."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[Server] = []

    def start(
        self,
        *args: str,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        runtime_dir: Path | None = None,
        port: int | None = None,
        bind: str | None = None,
        pythonpath: Path | None = None,
        wait: bool = True,
    ) -> Server:
        """``aman serve --bind 127.0.0.1:<free port> --runtime-dir <base>/runtime [--token T]
        *args`` in ``cwd`` (default ``base``); ``bind`` replaces the bind address. Waits for
        ``/health/ready`` unless ``wait`` is false."""
        cwd = cwd or self.base
        port = port or free_port()
        rt = runtime_dir or self.base / "runtime"
        cmd = [
            *aman_command(),
            "serve",
            "--bind",
            bind or f"127.0.0.1:{port}",
            "--runtime-dir",
            str(rt),
        ]
        if token is not None:
            cmd += ["--token", token]
        cmd += list(args)
        stderr_path = self.base / f"aman-{len(self.started) + 1}.stderr"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=clean_env(env, pythonpath),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        server = Server(
            proc,
            port=port,
            cwd=cwd,
            runtime_dir=rt,
            stderr_path=stderr_path,
            token=token or (env or {}).get("AMAN_HTTP_TOKEN"),
        )
        self.started.append(server)
        if wait:
            server.wait_ready()
        return server

    def close(self) -> None:
        for server in self.started:
            server.kill()


@pytest.fixture
def aman(tmp_path: Path) -> Iterator[StartServer]:
    """Factory of servers for one test: see :meth:`Launcher.start`. Leftovers are killed."""
    launcher = Launcher(tmp_path)
    yield launcher.start
    launcher.close()


@pytest.fixture(scope="module")
def module_aman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """As ``aman``, for a server shared by the tests of a module (under a module temp dir)."""
    launcher = Launcher(tmp_path_factory.mktemp("aman-module"))
    yield launcher.start
    launcher.close()


class Exited:
    """An ``aman`` process expected to exit by itself; ``result()`` → (exit code, stderr)."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path

    def result(self, timeout: float = STOP_DEADLINE_SEC) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"aman did not exit within {timeout} s:\n{self.stderr_path.read_text()}")
        return code, self.stderr_path.read_text(errors="replace")


def spawn_aman(
    base: Path, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Exited:
    """Start ``aman <args>`` in ``cwd`` (default ``base``) without waiting; several can run at
    once (start-up is mostly imports, so running the refusals side by side saves time)."""
    stderr_path = base / f"exited-{time.monotonic_ns()}.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [*aman_command(), *args],
            cwd=cwd or base,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    return Exited(proc, stderr_path)


@pytest.fixture(name="spawn_aman", scope="session")
def _spawn_aman() -> Callable[..., Exited]:
    """``spawn_aman(base, *args, env=None, cwd=None)``: see :func:`spawn_aman`; the caller
    kills what is left."""
    return spawn_aman


@pytest.fixture
def run_aman(tmp_path: Path) -> Iterator[Callable[..., tuple[int, str]]]:
    """``run_aman(*args, env=None, cwd=None)``: run ``aman`` expecting it to exit by itself;
    returns ``(exit code, stderr)``."""
    spawned: list[Exited] = []

    def run(
        *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> tuple[int, str]:
        spawned.append(spawn_aman(tmp_path, *args, env=env, cwd=cwd))
        return spawned[-1].result()

    yield run
    for item in spawned:
        if item.proc.poll() is None:
            item.proc.kill()


@pytest.fixture
def entry_point_plugin() -> Callable[..., None]:
    """``entry_point_plugin(root, module, name, source)``: see :func:`write_entry_point_plugin`."""
    return write_entry_point_plugin


def write_entry_point_plugin(
    root: Path, module: str, name: str, source: str, version: str = "0.1.0"
) -> None:
    """A module ``<root>/<module>.py`` and a ``<module>-<version>.dist-info`` registering it under
    the ``aman.plugins`` entry point ``name``: what ``pip install`` of a plugin leaves behind."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{module}-{version}.dist-info"
    if info.exists():
        shutil.rmtree(info)
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\nSummary: {name} test plugin\n"
    )
    (info / "entry_points.txt").write_text(f"[aman.plugins]\n{name} = {module}\n")
