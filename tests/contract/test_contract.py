"""Contract meta-tests: the SDK, the docs and the built-ins keep their promises."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import sdk.hookspecs
from kernel.app import create_kernel
from kernel.config import Config
from kernel.hooks import hook_names, new_manager
from kernel.plugins import BUILTINS

ROOT = Path(__file__).resolve().parents[2]
HOOKS = hook_names()


def signature(name: str) -> str:
    params = inspect.signature(getattr(sdk.hookspecs, name)).parameters
    return f"{name}({', '.join(params)})"


def test_every_hook_is_documented_with_its_signature():
    docs = (ROOT / "docs" / "hooks.md").read_text()
    titles = re.findall(r"^## `(.+)`$", docs, flags=re.M)
    assert titles == [signature(name) for name in HOOKS]


def test_every_hookspec_has_a_docstring_with_versionadded():
    for name in HOOKS:
        doc = inspect.getdoc(getattr(sdk.hookspecs, name)) or ""
        assert ":param ctx:" in doc and "versionadded" in doc, name


def test_every_hook_has_a_test():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = [name for name in HOOKS if f"def test_hook_{name}(" not in sources]
    assert missing == []


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "builtin_plugins").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_builtins_import_only_the_sdk(path):
    assert not _imports(path) & {"kernel", "builtin_plugins"}


@pytest.mark.parametrize("path", sorted((ROOT / "sdk").rglob("*.py")), ids=lambda p: p.name)
def test_sdk_never_imports_the_kernel(path):
    assert "kernel" not in _imports(path)
    if path.name == "testing.py":  # it reaches the kernel only inside fixtures, by name
        assert "kernel" not in path.read_text().split("__all__")[0].split('"""', 2)[2]


@pytest.mark.parametrize(("name", "module", "essential"), BUILTINS)
def test_each_builtin_loads_alone_and_passes_check_pending(name, module, essential):
    import importlib

    pm = new_manager()
    pm.register(importlib.import_module(module), name=name)
    pm.check_pending()


def test_builtins_compose(tmp_path):
    create_kernel(config=Config(cli={"runtime.dir": str(tmp_path)}, env={}, cwd=tmp_path))


# The endpoints of http-api Appendix A that exist so far: method, path, public, confirm,
# availability, audit action. The table is the spec's; the test reads the live route table.
ENDPOINTS = [
    ("GET", "/health/live", True, False, "always", None),
    ("GET", "/health/ready", True, False, "always", None),
    ("GET", "/health", True, False, "always", None),
    ("GET", "/health/llm", True, False, "always", None),
    ("POST", "/agent/start", False, False, "always", "agent.start"),
    ("POST", "/agent/shutdown", False, True, "always", "agent.shutdown"),
    ("GET", "/runtime/status", False, False, "always", None),
    ("GET", "/runtime/config", False, False, "always", None),
    ("POST", "/inject-event", False, False, "ready", "event.inject"),
    ("POST", "/events/push", False, False, "ready", "event.push"),
    ("GET", "/events/trace/{trace_id}", False, False, "ready", None),
    ("GET", "/events/dump/{id}", False, False, "ready", None),
    ("GET", "/events/recent", False, False, "ready", None),
    ("GET", "/events/types", False, False, "ready", None),
    ("GET", "/events/stream", True, False, "always", None),
    ("GET", "/plugins", False, False, "ready", None),
    ("POST", "/plugin/{name}/enable", False, False, "ready", "plugin.enable"),
    ("POST", "/plugin/{name}/disable", False, True, "ready", "plugin.disable"),
    ("POST", "/plugin/install", False, False, "ready", "plugin.install"),
    ("POST", "/plugin/{name}/uninstall", False, False, "ready", "plugin.uninstall"),
    ("GET", "/dlq", False, False, "ready", None),
    ("GET", "/dlq/depth", False, False, "ready", None),
    ("POST", "/debug/dlq/enqueue", False, False, "ready", "dlq.enqueue"),
    ("POST", "/dlq/{id}/retry", False, True, "ready", "dlq.retry"),
    ("POST", "/dlq/{id}/discard", False, False, "ready", "dlq.discard"),
    ("POST", "/config/set", False, True, "ready", "config.set"),
    ("GET", "/config", False, False, "ready", None),
    ("GET", "/audit-log", False, False, "always", None),
    ("GET", "/debug/metrics", False, False, "always", None),
    ("GET", "/metrics", True, False, "always", None),
    ("GET", "/cron", False, False, "ready", None),
    ("POST", "/cron/add", False, False, "ready", "cron.add"),
    ("POST", "/cron/{job_id}/update", False, False, "ready", "cron.update"),
    ("POST", "/cron/{job_id}/remove", False, False, "ready", "cron.remove"),
    ("GET", "/capabilities", False, False, "ready", None),
    ("GET", "/workflows", False, False, "ready", None),
    ("GET", "/workflow/{name}", False, False, "ready", None),
    ("POST", "/workflow/{name}/create", False, False, "ready", "workflow.create"),
    ("GET", "/workflow-instances", False, False, "ready", None),
    ("GET", "/workflow-instance/{instance_id}", False, False, "ready", None),
    ("POST", "/workflow-instance/{instance_id}/event", False, False, "ready", "workflow.event"),
    ("POST", "/workflow-instance/{instance_id}/retry", False, True, "ready", "workflow.retry"),
    ("POST", "/workflow-instance/{instance_id}/cancel", False, True, "ready", "workflow.cancel"),
    ("GET", "/event-sources", False, False, "ready", None),
    ("POST", "/event-source/{source_id}/pause", False, False, "ready", "source.pause"),
    ("POST", "/source/{source_id}/pause", False, False, "ready", "source.pause"),
    ("POST", "/event-source/{source_id}/resume", False, False, "ready", "source.resume"),
    ("POST", "/source/{source_id}/resume", False, False, "ready", "source.resume"),
    ("PUT", "/event-source/{source_id}/config", False, False, "ready", "source.config"),
    ("PUT", "/source/{source_id}/config", False, False, "ready", "source.config"),
    ("POST", "/im-channel/{platform}/{instance}/reload", False, False, "ready", "im_channel.reload"),
    ("POST", "/webhook/{name}", False, False, "ready", "webhook.receive"),
    ("GET", "/skills", False, False, "ready", None),
    ("GET", "/llm-skills", False, False, "ready", None),
    ("GET", "/skills/search", False, False, "ready", None),
    ("GET", "/skill/{name}", False, False, "ready", None),
    ("GET", "/skill/{name}/content", False, False, "ready", None),
    ("POST", "/skill/{name}/enable", False, False, "ready", "skill.enable"),
    ("POST", "/skill/{name}/disable", False, False, "ready", "skill.disable"),
    ("GET", "/skill/{name}/versions", False, False, "ready", None),
    ("POST", "/skill/{name}/rollback", False, True, "ready", "skill.rollback"),
    ("POST", "/skills/reload", False, False, "ready", "skills.reload"),
    ("GET", "/notifications", False, False, "ready", None),
    ("GET", "/notifications/unread-count", False, False, "ready", None),
    ("POST", "/notifications/{id}/dismiss", False, False, "ready", None),
    ("POST", "/notifications/{id}/ack", False, False, "ready", None),
    ("POST", "/notifications/dismiss-all", False, False, "ready", None),
    ("POST", "/notifications/test", False, False, "ready", None),
    ("POST", "/notifications/send", False, False, "ready", None),
    ("GET", "/ui/pages", True, False, "always", None),
    ("GET", "/tools", False, False, "ready", None),
    ("POST", "/tools/{name}/execute", False, False, "ready", "tool.execute"),
    ("GET", "/tool-auth/pending", False, False, "ready", None),
    ("POST", "/tool-auth/respond", False, False, "ready", "tool_auth.respond"),
    ("GET", "/soul/info", False, False, "ready", None),
    ("GET", "/soul/raw", False, False, "ready", None),
    ("POST", "/soul/update", False, False, "ready", "soul.update"),
    ("GET", "/chat/sessions", False, False, "ready", None),
    ("POST", "/chat/session/create", False, False, "ready", "chat.session.create"),
    ("GET", "/chat/session/{id}/state", False, False, "ready", None),
    ("GET", "/chat/session/{id}/history", False, False, "ready", None),
    ("POST", "/chat/session/{id}/send", False, False, "ready", "chat.send_message"),
    ("POST", "/chat/session/{id}/close", False, False, "ready", "chat.session.close"),
    ("POST", "/chat/session/{id}/stop", False, False, "ready", "chat.session.stop"),
    ("POST", "/chat/session/{id}/kill", False, False, "ready", "chat.session.kill"),
    ("POST", "/chat/session/{id}/retry", False, False, "ready", "chat.session.retry"),
    ("POST", "/chat/session/{id}/edit", False, False, "ready", "chat.session.edit"),
    ("DELETE", "/chat/session/{id}", False, False, "ready", "chat.session.delete"),
    ("GET", "/agents", False, False, "ready", None),
    ("GET", "/agents/idle-availability", False, False, "ready", None),
    ("GET", "/agent/{agent_id}", False, False, "ready", None),
    ("POST", "/agent/{agent_id}/status", False, False, "ready", "agent.status"),
    ("POST", "/agent/{agent_id}/reload", False, False, "ready", "agent.reload"),
    ("GET", "/soul/system-prompt", False, False, "ready", None),
    ("GET", "/system-prompt", False, False, "ready", None),
    ("POST", "/idle-run", False, False, "ready", "idle.run"),
    ("POST", "/explore/start", False, False, "ready", "explore.start"),
    ("GET", "/openapi.json", False, False, "always", None),  # * issue 7
]


def test_routes_match_the_endpoint_index(tmp_path):
    kernel = create_kernel(config=Config(cli={"runtime.dir": str(tmp_path)}, env={}, cwd=tmp_path))
    served = {
        (ep.route.method, ep.path): (ep.public, ep.route.confirm, ep.route.availability, ep.route.audit)
        for ep in kernel.router.endpoints()
    }
    for method, path, public, confirm, availability, audit in ENDPOINTS:
        assert served.pop((method, path)) == (public, confirm, availability, audit), (method, path)
    assert served == {}, "a route that the index does not list"
