"""The keys of ``[sources.timer.<name>]`` and ``[sources.watch.<name>]`` (formats §1.4), declared
once and used three ways: as configuration keys, as the cross-key rules, and to validate the
bodies of ``PUT /event-source/{id}/config`` (http-api §6) with the messages of http-api §1.5.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, Literal

from attrs import frozen

from sdk import ConfigKey, ConfigRule, Invalid

__all__ = ["FIELDS", "NAME", "Field", "config_items", "merge", "settings_of"]

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@frozen(kw_only=True)
class Field:
    """One reconfigurable key of a source kind."""

    name: str
    type: Literal["int", "bool", "choice", "table", "strings"]
    default: Any = None  # None: required
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    length: tuple[int, int] | None = None

    def config_key(self, prefix: str) -> ConfigKey:
        kind = {"int": int, "bool": bool, "choice": str, "table": dict, "strings": list[str]}
        return ConfigKey(
            name=prefix + self.name,
            type=kind[self.type],
            default=self.default,
            minimum=self.minimum,
            maximum=self.maximum,
            choices=self.choices,
            length=self.length,
        )

    def check(self, value: Any) -> None:
        """Raise :class:`~sdk.Invalid` with the http-api §1.5 message when ``value`` does not fit."""
        name = self.name
        if self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise Invalid(f"field '{name}' must be an integer")
            assert self.minimum is not None and self.maximum is not None
            if not self.minimum <= value <= self.maximum:
                raise Invalid(f"field '{name}' must be between {self.minimum} and {self.maximum}")
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise Invalid(f"field '{name}' must be a boolean")
        elif self.type == "choice":
            if not isinstance(value, str):
                raise Invalid(f"field '{name}' must be a string")
            if value not in self.choices:
                expected = ", ".join(self.choices)
                raise Invalid(
                    f"invalid value for '{name}': '{value}' (expected one of: {expected})"
                )
        elif self.type == "table":
            if not isinstance(value, dict):
                raise Invalid(f"field '{name}' must be an object")
            if _holds_null(value):
                raise Invalid(f"field '{name}' must not contain null (TOML has no null)")
        else:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise Invalid(f"field '{name}' must be an array of strings")
            assert self.length is not None
            low, high = self.length
            if not low <= len(value) <= high:
                raise Invalid(f"field '{name}' must have {low} to {high} elements")


def _holds_null(value: Any) -> bool:
    if isinstance(value, dict):
        return any(v is None or _holds_null(v) for v in value.values())
    if isinstance(value, list):
        return any(v is None or _holds_null(v) for v in value)
    return False


FIELDS: dict[str, tuple[Field, ...]] = {
    "timer": (
        Field(name="interval_ms", type="int", minimum=100, maximum=86_400_000),
        Field(
            name="event_type",
            type="choice",
            default="timer_tick",
            choices=("timer_tick", "heartbeat"),
        ),
        Field(name="payload", type="table", default={}),
    ),
    "watch": (
        Field(name="paths", type="strings", length=(1, 100)),
        Field(name="recursive", type="bool", default=True),
        Field(name="patterns", type="strings", default=["*"], length=(1, 100)),
        Field(name="debounce_ms", type="int", default=500, minimum=0, maximum=60_000),
        Field(name="max_stable_wait_ms", type="int", default=5000, minimum=0, maximum=600_000),
    ),
}


def config_items() -> list[ConfigKey | ConfigRule]:
    """The keys and rules the ``timers`` plugin declares (``register_config``)."""
    items: list[ConfigKey | ConfigRule] = []
    for kind, fields in FIELDS.items():
        prefix = f"sources.{kind}.*."
        items += [f.config_key(prefix) for f in fields]
        items.append(ConfigKey(name=prefix + "enabled", type=bool, default=True))
    items.append(ConfigRule(check=_tables_complete))
    return items


def _tables_complete(view: Any) -> str | None:
    """Source names follow formats §1.4 and every table has its required keys."""
    for kind, fields in FIELDS.items():
        for name, table in sorted(view.table(f"sources.{kind}").items()):
            if not NAME.fullmatch(name):
                return f"invalid source name sources.{kind}.{name}: 1-64 characters of A-Za-z0-9_.-"
            for field in fields:
                if field.default is None and field.name not in table:
                    return f"sources.{kind}.{name}.{field.name} is required"
    return None


def settings_of(kind: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """A source's settings from its configuration table, defaults filled in."""
    return {f.name: copy.deepcopy(table.get(f.name, f.default)) for f in FIELDS[kind]}


def merge(
    source_id: str, kind: str, current: Mapping[str, Any], changes: Mapping[str, Any]
) -> dict[str, Any]:
    """``current`` with ``changes`` applied, after checking every change (http-api §6)."""
    fields = {f.name: f for f in FIELDS[kind]}
    for key, value in changes.items():
        field = fields.get(key)
        if field is None:
            raise Invalid(f"unknown config key for source {source_id}: {key}")
        field.check(value)
    return {**copy.deepcopy(dict(current)), **copy.deepcopy(dict(changes))}
