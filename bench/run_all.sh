#!/usr/bin/env bash
# Run every benchmark in bench/, one after the other, with the interpreter that has aman
# installed ($PYTHON, default python3). Extra arguments go to every benchmark (e.g. --quick).
# The benchmarks are reports: they print PASS/FAIL per target and exit 0; this script fails only
# if a benchmark could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# Every benchmark, in order. (bare_quart.py, sse_quart.py and bare_upload.py are the anchor apps of
# http_overhead.py, sse_lag.py and plugin_install.py, not benchmarks.) The soak comes last: 5
# minutes by default (--minutes 5), 1 minute with --quick; the 2-hour soak is
# `bench/soak.py --minutes 120` on its own (docs/operations.md, "Soak runs").
BENCHMARKS=(
  bench/http_overhead.py
  bench/bus_dispatch.py
  bench/durable_publish.py
  bench/sse_lag.py
  bench/skills.py
  bench/plugin_install.py
  bench/chat_turns.py
  bench/soak.py
)

status=0
for bench in "${BENCHMARKS[@]}"; do
  echo "=== $bench"
  "$PYTHON" "$bench" "$@" || status=1
  echo
done
exit "$status"
