"""builtin_tools: work in progress (issue 6)."""
