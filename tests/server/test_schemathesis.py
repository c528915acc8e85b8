"""Schemathesis against the live ``/openapi.json`` of a real ``aman serve`` (issue 7, part 2).

The server runs with a token, the debug endpoints enabled (so ``/inject-event`` and
``/debug/dlq/enqueue`` are exercised past their gate) and the ``notes`` example installed (so a
third-party plugin's routes and page files are in the document). Schemathesis runs every phase
(examples, coverage, fuzzing, stateful) with every check, derandomized, with a bounded number of
test cases per operation. The nightly run (``docs/operations.md``, "Fuzz the API") is this test
with ``AMAN_FUZZ_EXAMPLES`` raised and ``AMAN_FUZZ_SEED`` set (new inputs each night, and the
seed to reproduce them).

What is left out, and why, is written next to each setting: ``EXCLUDED_PATHS`` (operations not
called) and ``CHECKS`` (checks switched off or told the API's own statuses).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from kernel.authoring import pack

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fuzz-token"
#: Test cases per operation in the fuzzing and stateful phases (the coverage phase derives its
#: own from the schemas). 3 keeps the CI run well under a minute on 2 cores.
EXAMPLES = int(os.environ.get("AMAN_FUZZ_EXAMPLES", "3"))
#: Unset: derandomized (the same cases every run); a number: random cases from that seed.
SEED = os.environ.get("AMAN_FUZZ_SEED")
#: A generous bound: a run takes about 25 s plus 4 s per example on 2 cores.
RUN_DEADLINE_SEC = 120 + 10 * EXAMPLES

#: Operations not called at all.
EXCLUDED_PATHS = (
    # Stops the server under test; tests/server/test_serve_shutdown.py covers it.
    "/agent/shutdown",
    # A Server-Sent Events stream never ends, so no response can be checked;
    # tests/server/test_serve_events.py covers it.
    "/events/stream",
)

#: Check settings (schemathesis.toml ``[checks]``): every check runs, these with settings.
CHECKS: dict[str, Any] = {
    "enabled": True,
    # Request schemas describe types (the attrs classes the kernel structures), not the value
    # rules handlers apply after that: non-empty strings, id formats, cross-field rules, known
    # enum values of plain ``str`` fields, state (no info-hub sources configured). http-api lists
    # those 400s per endpoint, so a schema-valid request may rightly be refused.
    "positive_data_acceptance": {"enabled": False},
    # A missing x-aman-confirm is 409 "confirmation required" (http-api §1.3, D6).
    "missing_required_header": {"expected-statuses": [409]},
}
#: Per-operation overrides (schemathesis.toml ``[[operations]]``).
OPERATIONS: list[dict[str, Any]] = []


#: Phase settings (schemathesis.toml ``[phases]``).
PHASES: dict[str, Any] = {
    # The coverage phase calls each operation with the methods it does not have: OPTIONS checks
    # the Allow header, PATCH (which no built-in uses) the 405. The others (GET, POST, PUT,
    # DELETE, TRACE, QUERY) make the run a third longer for answers the router gives alike;
    # tests/kernel/test_router.py and tests/server/test_serve_basics.py cover 405 and Allow,
    # the static path that a parameter route also matches (GET /agent/shutdown) included.
    "coverage": {"unexpected-methods": ["OPTIONS", "PATCH"]},
}


def schemathesis_config(path: Path) -> Path:
    path.write_text(tomli_w.dumps({"checks": CHECKS, "phases": PHASES, "operations": OPERATIONS}))
    return path


def st_command(url: str, config: Path) -> list[str]:
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", url),
        *("--header", f"Authorization: Bearer {TOKEN}"),
        *("--max-examples", str(EXAMPLES)),
        *(("--seed", SEED) if SEED else ("--generation-deterministic",)),
        *("--workers", "1"),  # threads trip a CPython 3.11 ast bug inside hypothesis
        *("--request-timeout", "10"),
        "--no-color",
    ]
    for path in EXCLUDED_PATHS:
        command += ["--exclude-path", path]
    return command


def failures(output: str) -> str:
    """The report from its errors and failures on (the rest is progress)."""
    for marker in ("= ERRORS =", "= FAILURES ="):
        if marker in output:
            return output[output.index(marker) - 40 :][:20_000]
    return output[-5_000:]


def test_schemathesis_finds_nothing(aman, tmp_path):
    config = tmp_path / "aman.toml"
    config.write_text("[debug]\nforce_enable_debug_endpoints = true\n")
    server = aman("--config", str(config), token=TOKEN)
    archive, _ = pack(ROOT / "examples" / "notes", tmp_path / "notes.tar.gz")
    with server.client() as client:
        installed = client.post(
            "/plugin/install",
            content=archive.read_bytes(),
            headers={"content-type": "application/gzip"},
        )
        assert installed.status_code == 200, installed.text
        paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/notes/items" in paths
    skipped = {*EXCLUDED_PATHS, "/openapi.json"}  # schemathesis never calls the schema it reads
    tested = sum(len(item) for path, item in paths.items() if path not in skipped)

    run = subprocess.run(
        st_command(f"{server.base_url}/openapi.json", schemathesis_config(tmp_path / "st.toml")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE_SEC,
    )

    assert run.returncode == 0, failures(run.stdout + run.stderr)
    assert f"Tested: {tested}\n" in run.stdout, run.stdout[-3_000:]  # every operation was called
    assert server.stop() == 0, server.stderr[-3_000:]  # and the server is still well
