"""explore: work in progress (issue 6)."""
