"""security: work in progress (issue 6)."""
