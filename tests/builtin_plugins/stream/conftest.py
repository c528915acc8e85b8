"""The real-server fixtures of ``tests/server/conftest.py`` (``aman``, ``module_aman``), for the
stream tests that need a real socket."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "aman_server_fixtures", Path(__file__).resolve().parents[2] / "server" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_server)

aman = _server.aman
module_aman = _server.module_aman
