"""Static checks run with the tests: mypy strict on the kernel and the SDK, ruff everywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_mypy_strict_on_kernel_and_sdk():
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff():
    folders = [d for d in ("kernel", "sdk", "builtin_plugins", "tests", "bench", "examples") if (ROOT / d).is_dir()]
    result = run("ruff", "check", *folders)
    assert result.returncode == 0, result.stdout + result.stderr
