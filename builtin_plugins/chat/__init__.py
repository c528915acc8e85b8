"""chat: work in progress (issue 6)."""
