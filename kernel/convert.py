"""The one cattrs converter of the kernel, strict on the way in (http-api §1.5).

JSON bodies are structured into a route's input class, query strings into its query class, and
results unstructured on the way out. Every failure becomes an :class:`sdk.Invalid` whose message
is the exact text of http-api §1.5, naming the field.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

import attrs
from cattrs import ClassValidationError, IterableValidationError
from cattrs.cols import is_sequence, list_structure_factory
from cattrs.gen import make_dict_structure_fn
from cattrs.preconf.json import JsonConverter, make_converter

from sdk import INT_MAX, Invalid
from sdk.models import OutOfRange

__all__ = ["converter", "describe", "structure_body", "structure_query"]


INT_MIN = -INT_MAX - 1
TOO_BIG = "must fit in a signed 64-bit integer"


class _WrongType(TypeError):
    pass


class _BadChoice(ValueError):
    def __init__(self, value: Any, choices: tuple[Any, ...]) -> None:
        super().__init__(value)
        self.value, self.choices = value, choices


def _strict(kind: type, accept: typing.Callable[[Any], bool]) -> typing.Callable[[Any, Any], Any]:
    def structure(value: Any, _type: Any) -> Any:
        if not accept(value):
            raise _WrongType(kind)
        return value

    return structure


def _make() -> JsonConverter:
    conv = make_converter(forbid_extra_keys=False)
    conv.register_structure_hook(str, _strict(str, lambda v: isinstance(v, str)))
    conv.register_structure_hook(bool, _strict(bool, lambda v: isinstance(v, bool)))
    strict_int = _strict(int, lambda v: isinstance(v, int) and not isinstance(v, bool))

    def int_hook(value: Any, type_: Any) -> int:
        value = strict_int(value, type_)
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(TOO_BIG)
        return int(value)

    conv.register_structure_hook(int, int_hook)

    def float_hook(value: Any, _type: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _WrongType(float)
        return float(value)

    conv.register_structure_hook(float, float_hook)

    def literal_hook(value: Any, type_: Any) -> Any:
        choices = get_args(type_)
        if value not in choices or type(value) is not type(choices[0]):
            raise _BadChoice(value, choices)
        return value

    conv.register_structure_hook_func(
        lambda t: get_origin(t) is Literal,  # type: ignore[comparison-overlap]
        literal_hook,
    )

    def dict_hook(value: Any, type_: Any) -> Any:
        if not isinstance(value, dict):
            raise _WrongType(dict)
        return value

    conv.register_structure_hook_func(
        lambda t: t in (dict, Mapping) or get_origin(t) in (dict, Mapping),  # type: ignore[comparison-overlap]
        dict_hook,
    )

    def attrs_factory(cls: type) -> typing.Callable[[Any, Any], Any]:
        inner: typing.Callable[[Any, Any], Any] = make_dict_structure_fn(cls, conv)

        def structure(value: Any, type_: Any) -> Any:
            if not isinstance(value, dict):
                raise _WrongType(dict)
            return inner(value, type_)

        return structure

    conv.register_structure_hook_factory(attrs.has, attrs_factory)

    def list_factory(type_: Any) -> typing.Callable[[Any, Any], Any]:
        inner = list_structure_factory(type_, conv)

        def structure(value: Any, t: Any) -> Any:
            if not isinstance(value, list):
                raise _WrongType(list)
            return inner(value, t)

        return structure

    conv.register_structure_hook_factory(is_sequence, list_factory)
    return conv


#: The converter of the kernel; plugins get it as ``ctx.converter``.
converter: JsonConverter = _make()


def describe(type_: Any) -> str:
    """``str`` → ``a string``, ``list[str]`` → ``an array of strings`` (http-api §1.5 wording)."""
    args = [a for a in get_args(type_) if a is not type(None)]
    if get_origin(type_) in (typing.Union, types.UnionType) and len(args) == 1:
        return describe(args[0])
    if get_origin(type_) in (list, tuple, typing.Sequence) or type_ in (list, tuple):
        inner = describe(args[0]) if args else "a value"
        return "an array of " + inner.split(" ", 1)[1] + "s"
    names = {str: "a string", int: "an integer", bool: "a boolean", float: "a number"}
    if type_ in names:
        return names[type_]
    if type_ in (dict, Mapping) or get_origin(type_) in (dict, Mapping) or attrs.has(type_):
        return "an object"
    return "a valid value"


def _field_types(cls: type) -> dict[str, Any]:
    attrs.resolve_types(cls)
    return {a.name: a.type for a in attrs.fields(cls)}


def _message(exc: BaseException, cls: type, path: list[str]) -> str:
    """Walk a cattrs error down to its first leaf and word it as http-api §1.5 does."""
    if isinstance(exc, ClassValidationError):
        sub = exc.exceptions[0]
        name = next((n.name for n in getattr(sub, "__notes__", []) if hasattr(n, "name")), "?")
        field_type = _field_types(cls).get(name)
        inner = _unwrap(field_type)
        if isinstance(sub, ClassValidationError) and inner is not None and attrs.has(inner):
            return _message(sub, inner, [*path, name])
        return _leaf(sub, ".".join([*path, name]), field_type)
    return _leaf(exc, ".".join(path) or "body", cls)


def _unwrap(type_: Any) -> Any:
    args = [a for a in get_args(type_) if a is not type(None)]
    if get_origin(type_) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return type_


def _leaf(exc: BaseException, name: str, field_type: Any) -> str:
    if isinstance(exc, KeyError):
        return f"missing required field '{name}'"
    if isinstance(exc, _BadChoice):
        expected = ", ".join(str(c) for c in exc.choices)
        return f"invalid value for '{name}': '{exc.value}' (expected one of: {expected})"
    if isinstance(exc, OutOfRange):
        return str(exc)
    if isinstance(exc, ValueError) and not isinstance(exc, IterableValidationError) and str(exc):
        return f"field '{name}' {exc}"
    return f"field '{name}' must be {describe(field_type)}"


def structure_body(data: Any, cls: type) -> Any:
    """Structure a parsed JSON body into ``cls`` or raise :class:`sdk.Invalid`."""
    if not isinstance(data, dict):
        raise Invalid("request body must be a JSON object")
    try:
        return converter.structure(data, cls)
    except ClassValidationError as exc:
        raise Invalid(_message(exc, cls, [])) from None
    except (OutOfRange, _BadChoice, _WrongType) as exc:  # a validator on the class itself
        raise Invalid(_leaf(exc, "body", cls)) from None


_UINT = re.compile(r"[0-9]+")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def structure_query(args: Mapping[str, str], cls: type) -> Any:
    """Structure query parameters into ``cls`` (fields of ``int``, ``bool`` or ``str``, optional).

    A field whose metadata has ``clamp=(low, high)`` is raised or lowered into that range
    (http-api §1.5: a ``limit`` above its cap is lowered to the cap).
    """
    values: dict[str, Any] = {}
    for a in attrs.fields(cls):
        if a.name not in args:
            continue
        raw, kind = args[a.name], _unwrap(_field_types(cls)[a.name])
        if kind is int:
            if not _UINT.fullmatch(raw):
                raise Invalid(
                    f"invalid query parameter '{a.name}': expected a non-negative integer"
                )
            value: Any = int(raw)
            if "clamp" in a.metadata:
                low, high = a.metadata["clamp"]
                value = min(max(value, low), high)
            elif value > INT_MAX:
                raise Invalid(f"invalid query parameter '{a.name}': {TOO_BIG}")
        elif kind is bool:
            if raw.lower() not in _BOOLS:
                raise Invalid(f"invalid query parameter '{a.name}': expected a boolean")
            value = _BOOLS[raw.lower()]
        else:
            value = raw
        values[a.name] = value
    return cls(**values)
