"""tools: work in progress (issue 6)."""
