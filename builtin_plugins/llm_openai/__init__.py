"""llm_openai: work in progress (issue 6)."""
