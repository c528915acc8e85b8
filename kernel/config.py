"""``aman.toml``: load, validate, read, change live and persist (contract D2, D10; formats §1).

Layers, lowest first: key defaults < the file < environment variables < command-line flags.
Plugins declare the keys they own (``register_config``); the kernel declares its own below.
A *restart* key keeps the value it had at start until the next start, whatever the file says
now; a *live* key follows the file at once.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
import tomllib
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from sdk import ConfigChange, ConfigError, ConfigKey, ConfigRule, Failure, Invalid
from sdk.files import write_atomic

__all__ = ["KERNEL_KEYS", "Config", "is_loopback", "parse_bind"]

log = logging.getLogger("aman.config")

_K = ConfigKey
MiB = 1024 * 1024

KERNEL_KEYS: list[ConfigKey] = [
    _K(name="http.bind", type=str, default="127.0.0.1:9090", restart=True, env="AMAN_HTTP_BIND"),
    _K(name="http.token", type=str, default="", env="AMAN_HTTP_TOKEN"),
    _K(name="http.max_body_bytes", type=int, default=MiB, minimum=1024, maximum=100 * MiB),
    _K(name="http.max_sse_clients", type=int, default=256, minimum=1, maximum=10_000),
    _K(name="runtime.dir", type=Path, default="~/.aman", restart=True, env="AMAN_RUNTIME_DIR"),
    _K(name="runtime.autostart", type=bool, default=True, restart=True),
    _K(
        name="runtime.start_timeout_sec", type=int, default=30, restart=True, minimum=1, maximum=600
    ),
    _K(
        name="runtime.drain_timeout_sec",
        type=int,
        default=30,
        minimum=1,
        maximum=600,
        env="AMAN_RUNTIME_DRAIN_TIMEOUT_SEC",
    ),
    _K(
        name="storage.synchronous",
        type=str,
        default="full",
        restart=True,
        choices=("full", "normal"),
    ),
    _K(
        name="storage.max_db_bytes",
        type=int,
        default=0,
        minimum=0,
        maximum=2**48,
        doc="Cap on the database file in bytes (0: none); a write past it answers 503.",
    ),
    _K(
        name="event_bus.mode",
        type=str,
        default="persistent",
        restart=True,
        choices=("persistent", "in_memory"),
        env="AMAN_EVENT_BUS_MODE",
    ),
    _K(
        name="event_bus.max_queue_size",
        type=int,
        default=10_000,
        minimum=16,
        maximum=10_000_000,
        env="AMAN_EVENT_BUS_MAX_QUEUE_SIZE",
    ),
    _K(name="event_bus.dedup_window_ms", type=int, default=30_000, minimum=0, maximum=86_400_000),
    _K(
        name="event_bus.handler_timeout_ms",
        type=int,
        default=30_000,
        minimum=100,
        maximum=3_600_000,
    ),
    _K(name="event_bus.retry_max_attempts", type=int, default=5, minimum=1, maximum=20),
    _K(
        name="event_bus.retry_backoff_ms",
        type=list[int],
        default=[100, 500, 2000],
        minimum=0,
        maximum=600_000,
        length=(1, 20),
    ),
    _K(name="event_bus.retry_queue_max", type=int, default=1000, minimum=1, maximum=1_000_000),
    _K(
        name="event_bus.overflow_max_events",
        type=int,
        default=100_000,
        minimum=0,
        maximum=10_000_000,
    ),
    _K(name="event_bus.dead_letter_expired", type=bool, default=False),
    _K(
        name="event_bus.event_store_max_events",
        type=int,
        default=10_000,
        minimum=100,
        maximum=10_000_000,
    ),
    _K(
        name="debug.force_enable_debug_endpoints",
        type=bool,
        default=False,
        env="AMAN_DEBUG_FORCE_ENABLE_DEBUG_ENDPOINTS",
    ),
    _K(name="plugins.dir", type=Path, default="plugins", restart=True),
    _K(
        name="plugins.max_archive_bytes",
        type=int,
        default=16 * MiB,
        minimum=1024,
        maximum=1024 * MiB,
    ),
    _K(name="plugins.max_members", type=int, default=2000, minimum=1, maximum=100_000),
    _K(name="plugins.max_unpacked_bytes", type=int, default=64 * MiB, minimum=1024, maximum=2**40),
    _K(name="plugins.max_member_bytes", type=int, default=16 * MiB, minimum=1024, maximum=2**40),
    _K(name="plugins.load_timeout_sec", type=int, default=30, minimum=1, maximum=600),
    _K(name="plugins.unload_timeout_sec", type=int, default=30, minimum=1, maximum=600),
    _K(name="plugins.route_timeout_sec", type=int, default=30, minimum=1, maximum=3600),
    _K(name="plugins.health_interval_sec", type=int, default=30, minimum=5, maximum=3600),
    _K(name="plugins.quarantine_after_failures", type=int, default=3, minimum=1, maximum=100),
    _K(name="dlq.ttl_days", type=int, default=30, minimum=1, maximum=3650),
    _K(name="dlq.max_manual_retries", type=int, default=5, minimum=0, maximum=100),
    _K(
        name="dlq.expiry_alert_days",
        type=list[int],
        default=[7, 3, 1],
        minimum=1,
        maximum=3650,
        length=(0, 10),
    ),
    _K(name="audit.max_records", type=int, default=100_000, minimum=1000, maximum=100_000_000),
    _K(name="plugin.*", type=dict, default={}, doc="Free-form table of plugin <name>."),
]

# Keys read relative to the config file's directory (D18); other paths are relative to runtime.dir.
_CONFIG_RELATIVE = ("runtime.dir", "skills.dir", "soul.path")
_ENV_ALIASES = {"AMAN_API_TOKEN": "http.token"}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_bind(value: str) -> tuple[str, int]:
    """``127.0.0.1:9090`` or ``[::1]:9090`` → (host, port); ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or "[" in host or "]" in host:
            raise ValueError("must be HOST:PORT")
    elif any(c in host for c in "[]:"):
        raise ValueError("must be HOST:PORT (IPv6 as [::1]:9090)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_secret(key: str) -> bool:
    return key == "http.token" or "api_key" in key or "token" in key.rsplit(".", 1)[-1]


def _matches(pattern: str, key: str) -> bool:
    p, k = pattern.split("."), key.split(".")
    return len(p) == len(k) and all(a in ("*", b) for a, b in zip(p, k, strict=True))


def _check_disjoint(changes: Mapping[str, Any]) -> None:
    """JSON objects have no order: a key and a key inside it in one change is ambiguous."""
    for name in changes:
        parts = name.split(".")
        for cut in range(1, len(parts)):
            if (outer := ".".join(parts[:cut])) in changes:
                raise Invalid(f"overlapping config keys: {outer} and {name}")


def _nested(outer: str, inner: str) -> bool:
    """Whether key ``inner`` lies inside key ``outer`` (a ``*`` segment matches any name)."""
    o, i = outer.split("."), inner.split(".")
    return len(o) < len(i) and all(
        a == "*" or b == "*" or a == b for a, b in zip(o, i[: len(o)], strict=True)
    )


def _dig(tree: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _put(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = tree
    for depth, part in enumerate(parents, 1):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{'.'.join(parents[:depth])} is not a table")
    if value is None:
        node.pop(last, None)
        _prune_empty(tree, parents)
    else:
        node[last] = value


def _prune_empty(tree: dict[str, Any], parents: list[str]) -> None:
    for depth in range(len(parents), 0, -1):
        found, node = _dig(tree, ".".join(parents[:depth]))
        if found and node == {}:
            parent = _dig(tree, ".".join(parents[: depth - 1]))[1] if depth > 1 else tree
            del parent[parents[depth - 1]]


def check_value(key: ConfigKey, value: Any) -> str | None:
    """Why ``value`` does not fit ``key``, or None."""
    kind = key.type
    if kind is bool:
        return None if isinstance(value, bool) else "must be a boolean"
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            return "must be an integer" if kind is int else "must be a number"
        return _range(key, value)
    if kind in (str, Path):
        if not isinstance(value, str):
            return "must be a string"
        if key.choices and value not in key.choices:
            return f"must be one of: {', '.join(key.choices)}"
        if key.name == "http.bind":
            try:
                parse_bind(value)
            except ValueError as exc:
                return str(exc)
        return None
    if kind is dict:
        return None if isinstance(value, dict) else "must be a table"
    if kind in (list[int], list[str]):
        item = int if kind == list[int] else str
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, item) for v in value
        ):
            return f"must be an array of {'integers' if item is int else 'strings'}"
        if key.length and not key.length[0] <= len(value) <= key.length[1]:
            return f"must have {key.length[0]} to {key.length[1]} elements"
        if item is str:
            return None
        return next((r for r in (_range(key, v) for v in value) if r), None)
    return None


def _range(key: ConfigKey, value: float) -> str | None:
    low = key.minimum if key.minimum is not None else float("-inf")
    high = key.maximum if key.maximum is not None else float("inf")
    if low <= value <= high:
        return None
    if key.minimum is None:
        return f"must be at most {key.maximum}"
    if key.maximum is None:
        return f"must be at least {key.minimum}"
    return f"must be between {key.minimum} and {key.maximum}"


def _holds_null(value: Any) -> bool:
    """TOML has no null: only a whole key may be set to null (removed)."""
    if isinstance(value, dict):
        return any(v is None or _holds_null(v) for v in value.values())
    if isinstance(value, list):
        return any(v is None or _holds_null(v) for v in value)
    return False


def _parse_env(key: ConfigKey, raw: str) -> Any:
    if key.type is bool:
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        raise ValueError("must be true or false")
    if key.type is int:
        return int(raw.strip())
    if key.type is float:
        return float(raw.strip())
    return raw


# The rules that span keys (formats §1.3). Each returns a reason or None; ``get`` reads the
# candidate configuration.
class _View:
    """The candidate configuration a rule checks: ``get(key)`` and ``table(prefix)``."""

    def __init__(self, get: Callable[[str], Any], tree: Mapping[str, Any]) -> None:
        self.get = get
        self._tree = tree

    def table(self, prefix: str) -> dict[str, Any]:
        found, value = _dig(self._tree, prefix)
        return copy.deepcopy(value) if found and isinstance(value, dict) else {}


def _bind_needs_token(view: _View) -> str | None:
    host, _ = parse_bind(view.get("http.bind"))
    if not is_loopback(host) and not view.get("http.token"):
        return (
            f"refusing to bind {view.get('http.bind')} without an API token"
            " (set http.token or AMAN_HTTP_TOKEN)"
        )
    return None


def _member_within_unpacked(view: _View) -> str | None:
    get = view.get
    if get("plugins.max_member_bytes") > get("plugins.max_unpacked_bytes"):
        return "plugins.max_member_bytes must not exceed plugins.max_unpacked_bytes"
    return None


KERNEL_RULES = [ConfigRule(check=_bind_needs_token), ConfigRule(check=_member_within_unpacked)]


class Config:
    """The :class:`sdk.Settings` of the kernel.

    :param path: the ``--config`` file, or None to look for ``./aman.toml``.
    :param cli: overrides from command-line flags, by dotted key.
    :param env: the environment to read overrides from (``os.environ`` by default).
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        cli: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self._cwd = cwd or Path.cwd()
        if path is None and (self._cwd / "aman.toml").is_file():
            path = self._cwd / "aman.toml"
        self._path = path.resolve() if path else None
        self._file: dict[str, Any] = self._read(self._path) if self._path else {}
        self._boot: dict[str, Any] = copy.deepcopy(self._file)
        self._cli = dict(cli or {})
        self._env_source = dict(os.environ if env is None else env)
        self._env: dict[str, Any] = {}
        self._keys: dict[str, tuple[ConfigKey, str]] = {}
        self._cache: dict[str, Any] = {}
        #: Keys of the file no built-in declares, checked once installed plugins are loaded.
        self.unclaimed: list[str] = []
        self._rules: list[tuple[ConfigRule, str]] = []
        #: Called after a successful ``set`` with the result, ``{key: (old, new)}`` as written to
        #: the file, and the operator.
        self.on_change: (
            Callable[[ConfigChange, dict[str, tuple[Any, Any]], str], Awaitable[None]] | None
        ) = None
        self.declare("kernel", [*KERNEL_KEYS, *KERNEL_RULES])

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            with open(path, "rb") as fh:
                return tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config error: file not found: {path}") from None
        except OSError as exc:  # a directory, no permission
            raise ConfigError(f"config error: cannot read {path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config error: {path}: {exc}") from None
        except RecursionError:  # tomllib recurses once per level of nesting
            raise ConfigError(f"config error: {path}: nested too deeply") from None

    # --- declaration and validation --------------------------------------------------------

    def declare(self, owner: str, items: list[ConfigKey | ConfigRule]) -> None:
        """Add a plugin's keys and rules (what its ``register_config`` returned)."""
        self._cache.clear()
        for item in items:
            if isinstance(item, ConfigRule):
                self._rules.append((item, owner))
                continue
            key = item
            for name, (_, other) in self._keys.items():
                if name == key.name:
                    raise ConfigError(f"config key {key.name} declared by both {other} and {owner}")
                if _nested(name, key.name) or _nested(key.name, name):
                    # one would hide the other: a table type covers the keys inside it
                    raise ConfigError(
                        f"config key {key.name} of {owner} overlaps {name} of {other}"
                    )
            self._keys[key.name] = (key, owner)

    def declared_by(self, owner: str) -> list[str]:
        """The names of the keys ``owner`` declared."""
        return [name for name, (_, o) in self._keys.items() if o == owner]

    def in_file(self, name: str) -> bool:
        """Whether the config file (as loaded or last set) holds key ``name``."""
        return _dig(self._file, name)[0]

    def undeclare(self, owner: str) -> None:
        self._cache.clear()
        self._keys = {k: v for k, v in self._keys.items() if v[1] != owner}
        self._rules = [(rule, o) for rule, o in self._rules if o != owner]

    def owner(self, name: str) -> str | None:
        found = self._lookup(name)
        return found[1] if found else None

    def _lookup(self, name: str) -> tuple[ConfigKey, str] | None:
        if name in self._keys:
            return self._keys[name]
        for pattern, entry in self._keys.items():
            if "*" in pattern and _matches(pattern, name):
                return entry
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # inside a free-form table
            found = self._lookup(".".join(parts[:cut]))
            if found and found[0].type is dict:
                return ConfigKey(name=name, type=object, default=None), found[1]
        return None

    def _leaves(self, tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
        for name, value in tree.items():
            full = f"{prefix}{name}"
            found = self._lookup(full)
            if found is not None and (found[0].type is not object or not isinstance(value, dict)):
                yield full, value
            elif isinstance(value, dict):
                yield from self._leaves(value, full + ".")
            else:
                yield full, value

    def validate(self, installed: Collection[str] = ()) -> None:
        """Check the file, the environment and the flags against every declared key (start-up).
        Keys under the name of an ``installed`` plugin (``<name>.``) wait for :meth:`claim`:
        that plugin declares its keys when it is loaded, in phase 2.

        Raises :class:`sdk.ConfigError` naming every offending key, one per line.
        """
        errors = []
        self.unclaimed = []
        for name, value in self._leaves(self._file):
            found = self._lookup(name)
            if found is None and name.split(".", 1)[0] in installed:
                self.unclaimed.append(name)
            elif found is None:
                errors.append(f"config error: unknown key '{name}'")
            elif reason := check_value(found[0], value):
                errors.append(f"config error: invalid value for '{name}': {reason}")
        self._env = {}
        self._cache.clear()
        for key, _owner in self._keys.values():
            names = [key.env] + [a for a, k in _ENV_ALIASES.items() if k == key.name]
            for var in filter(None, names):
                if var in self._env_source and key.name not in self._env:
                    try:
                        value = _parse_env(key, self._env_source[var])
                        if reason := check_value(key, value):
                            raise ValueError(reason)
                    except ValueError as exc:
                        errors.append(f"config error: invalid value for {var}: {exc}")
                        continue
                    self._env[key.name] = value
        for name, value in self._cli.items():
            found = self._lookup(name)
            if found and (reason := check_value(found[0], value)):
                errors.append(f"config error: invalid value for '{name}': {reason}")
        if not errors:
            errors = self._broken_rules(_View(self.get, self._file), startup=True)
        if errors:
            raise ConfigError("\n".join(errors))

    def claim(self) -> None:
        """After the installed plugins are loaded (phase 2): check their keys in the file. A
        wrong value stops the start; a key the plugin does not declare (any more) is ignored
        with a warning (``/config/set`` with ``null`` removes it)."""
        errors = []
        for name in self.unclaimed:
            found = self._lookup(name)
            if found is None:
                log.warning("config: unknown key '%s' ignored (no plugin declares it)", name)
            elif reason := check_value(found[0], _dig(self._file, name)[1]):
                errors.append(f"config error: invalid value for '{name}': {reason}")
        self.unclaimed = []
        if errors:
            raise ConfigError("\n".join(errors))

    def _broken_rules(self, view: _View, *, startup: bool = False) -> list[str]:
        return [
            reason
            for rule, _owner in self._rules
            if (rule.startup or not startup) and (reason := rule.check(view))
        ]

    # --- reading ---------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self._path

    def _value(self, name: str, tree: Mapping[str, Any], *, boot: bool) -> Any:
        if name in self._cli:
            return self._cli[name]
        if name in self._env:
            return self._env[name]
        found = self._lookup(name)
        if found is None:
            raise KeyError(name)
        key = found[0]
        present, value = _dig(self._boot if boot and key.restart else tree, name)
        return copy.deepcopy(value if present else key.default)

    def get(self, key: str) -> Any:
        """The value in effect now (a restart key keeps its value from start-up).

        Values are cached until the configuration changes (hot paths read keys per event);
        lists and tables are copied, so a caller can never change the configuration by
        mutating what it got."""
        try:
            value = self._cache[key]
        except KeyError:
            value = self._cache[key] = self._value(key, self._file, boot=True)
        return copy.deepcopy(value) if isinstance(value, (list, dict)) else value

    def resolve_path(self, key: str) -> Path:
        raw = Path(str(self.get(key))).expanduser()
        if raw.is_absolute():
            return raw
        if key in self._cli or key in self._env:
            return (self._cwd / raw).resolve()
        if key in _CONFIG_RELATIVE:
            base = self._path.parent if self._path else self._cwd
            return (base / raw).resolve()
        return (self.resolve_path("runtime.dir") / raw).resolve()

    def plugin_config(self, plugin: str) -> Mapping[str, Any]:
        return self.table(f"plugin.{plugin}")

    def table(self, prefix: str) -> dict[str, Any]:
        """The file's table at ``prefix`` as it is now (``llm.providers``), or ``{}``."""
        return _View(self.get, self._file).table(prefix)

    def overridden(self) -> list[str]:
        return sorted(set(self._cli) | set(self._env))

    def effective_tree(self, *, redact: bool = True) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for name in sorted(self._keys):
            if "*" not in name:
                _put(tree, name, self._redact(name, self.get(name)) if redact else self.get(name))
        for name, value in self._leaves(self._file):
            if "*" not in name and name not in self._keys and self._lookup(name):
                _put(tree, name, self._redact(name, value) if redact else value)
        return tree

    @staticmethod
    def _redact(name: str, value: Any) -> Any:
        if isinstance(value, dict):  # a free-form table: its own secret keys too
            return {k: Config._redact(f"{name}.{k}", v) for k, v in value.items()}
        return "[REDACTED]" if value and _is_secret(name) else value

    # --- changing --------------------------------------------------------------------------

    async def set(self, changes: Mapping[str, Any], *, operator: str) -> ConfigChange:
        """Validate, persist atomically and apply ``changes`` (``None`` removes a key); all or
        nothing (http-api §10)."""
        _check_disjoint(changes)
        path = self._path or self._cwd / "aman.toml"
        # The file is rewritten from what is on disk now, so that hand edits made while the
        # runtime runs are kept (they take effect at the next start, as before).
        on_disk = self._on_disk(path)
        candidate = copy.deepcopy(self._file)
        values = {name: (_dig(self._file, name)[1], value) for name, value in changes.items()}
        for name, value in changes.items():
            found = self._lookup(name)
            if "*" in name or (found is None and not (value is None and _dig(on_disk, name)[0])):
                raise Invalid(f"unknown config key: {name}")  # null still removes a leftover
            if value is not None and _holds_null(value):
                raise Invalid(f"invalid value for {name}: null only removes a whole key")
            if found and value is not None and (reason := check_value(found[0], value)):
                raise Invalid(f"invalid value for {name}: {reason}")
            try:
                _put(candidate, name, value)
                _put(on_disk, name, copy.deepcopy(value))
            except ValueError as exc:
                raise Invalid(f"invalid value for {name}: {exc}") from None
        broken = self._broken_rules(
            _View(lambda n: self._value(n, candidate, boot=False), candidate)
        )
        if broken:
            raise Invalid(f"invalid configuration: {broken[0]}")
        _write_atomic(path, on_disk)
        self._path, self._file = path, candidate
        self._cache.clear()
        lists: dict[str, list[str]] = {"applied": [], "restart_required": [], "overridden": []}
        for name in sorted(changes):
            lists[self._effect(name)].append(name)
        result = ConfigChange(**lists)
        if self.on_change is not None:
            try:
                await self.on_change(result, values, operator)
            except Exception:  # applied and saved: the answer stands
                log.exception("config change applied, but telling the runtime about it failed")
        return result

    def _on_disk(self, path: Path) -> dict[str, Any]:
        """The config file as it is now (the in-memory copy when there is none); one that no
        longer parses is not overwritten."""
        if not path.is_file():
            return copy.deepcopy(self._file)
        try:
            return self._read(path)
        except ConfigError as exc:
            raise Invalid(f"the config file on disk is not valid, fix it first: {exc}") from None

    def reread(self, prefix: str) -> None:
        """Take the table ``prefix`` (``agents.bob``) from the config file as it is on disk now,
        edited by hand maybe; the rest keeps its values. All or nothing: an unreadable file, an
        unknown key or a wrong value is :class:`sdk.Invalid` and changes nothing."""
        if self._path is None or not self._path.is_file():
            return
        try:
            on_disk = self._read(self._path)
        except ConfigError as exc:
            raise Invalid(f"invalid configuration: {exc}") from None
        _, section = _dig(on_disk, prefix)
        candidate = copy.deepcopy(self._file)
        try:
            _put(candidate, prefix, copy.deepcopy(section))
        except ValueError as exc:
            raise Invalid(f"invalid configuration: {exc}") from None
        leaves = self._leaves(section, prefix + ".") if isinstance(section, dict) else []
        for name, value in leaves:
            found = self._lookup(name)
            if found is None:
                raise Invalid(f"invalid configuration: unknown key '{name}'")
            if reason := check_value(found[0], value):
                raise Invalid(f"invalid configuration: invalid value for '{name}': {reason}")
        broken = self._broken_rules(
            _View(lambda n: self._value(n, candidate, boot=False), candidate)
        )
        if broken:
            raise Invalid(f"invalid configuration: {broken[0]}")
        self._file = candidate
        self._cache.clear()

    def _effect(self, name: str) -> str:
        if name in self._cli or name in self._env:
            return "overridden"
        found = self._lookup(name)
        return "restart_required" if found and found[0].restart else "applied"


def _write_atomic(path: Path, tree: Mapping[str, Any]) -> None:
    """Write the TOML file whole (``sdk.files.write_atomic``), so readers see old or new."""
    try:
        write_atomic(path, tomli_w.dumps(tree).encode())
    except (OSError, TypeError, ValueError) as exc:
        raise Failure(f"cannot write {path}: {exc}") from None
