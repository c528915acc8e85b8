"""soul: work in progress (issue 6)."""
