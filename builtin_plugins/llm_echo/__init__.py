"""LLM echo: the offline, deterministic provider type echo, the default (D15)."""

from __future__ import annotations

from sdk import PluginContext, ProviderConfig, ProviderType, hookimpl


@hookimpl
def register_llm_providers(ctx: PluginContext) -> list[ProviderType]:
    return [ProviderType(type="echo", factory=EchoProvider, default_model="echo")]


class EchoProvider:
    """Answers without a network or a key, so the runtime works anywhere."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    async def probe(self) -> None:
        """Always able to serve."""
