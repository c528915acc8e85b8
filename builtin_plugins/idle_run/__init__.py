"""idle_run: work in progress (issue 6)."""
