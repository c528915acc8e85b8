"""Python types → JSON Schema 2020-12, the schema dialect of OpenAPI 3.1 (``/openapi.json``).

The schemas say what the kernel's converter does with a type, and no more (http-api §1.5):
bodies are structured into attrs classes on the way in (``str``, ``int``, ``float``, ``bool``,
``list[...]``, ``dict[...]``, ``Literal[...]``, ``X | None``, nested classes; a field without a
default is required; ``sdk.in_range`` bounds a number), query strings into flat attrs classes
(integers are non-negative decimals, booleans ``true/false/1/0/yes/no``, anything else a string;
``clamp`` moves a value into its range instead of refusing it), and results are unstructured with
every field of an attrs class present. A type the converter has no rule for gets the empty schema
(any JSON value): it promises nothing rather than something untrue.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

import attrs

from sdk import in_range

__all__ = ["Direction", "Dump", "parameter_schema", "schema_of", "type_hints"]

#: ``in``: a request body, as the converter structures it; ``out``: a result, as it unstructures.
Direction = Literal["in", "out"]
#: The converter's ``unstructure``, for attrs defaults (tuples become arrays, classes objects).
Dump = Callable[[Any], Any]

_SCALARS: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_UNIONS = (typing.Union, types.UnionType)
_SEQUENCES = (list, tuple, set, frozenset, Sequence, typing.Sequence)
_MAPPINGS = (dict, Mapping, typing.Mapping)
#: Every closure ``in_range(low, high)`` returns shares this code object.
_IN_RANGE = in_range(0, 0).__code__  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4096)
def type_hints(obj: Any) -> dict[str, Any]:
    """``typing.get_type_hints``, or ``{}`` when an annotation cannot be resolved (a name only
    imported for type checking): an unknown type is described as any value, never guessed.

    Cached per handler and class, as the router caches handler signatures: resolving string
    annotations is most of the cost of a document. Callers only read the answer."""
    try:
        return typing.get_type_hints(obj)
    except Exception:  # noqa: BLE001 - NameError, TypeError, ...: the hints are unknown
        return {}


def schema_of(type_: Any, direction: Direction, dump: Dump) -> dict[str, Any]:
    """The JSON Schema of ``type_`` in a body (``in``) or a result (``out``)."""
    return _schema(type_, direction, dump, ())


def _schema(type_: Any, direction: Direction, dump: Dump, seen: tuple[type, ...]) -> dict[str, Any]:
    origin, args = get_origin(type_), get_args(type_)
    if type_ in _SCALARS:
        return {"type": _SCALARS[type_]}
    if type_ is type(None) or type_ is None:
        return {"type": "null"}
    if origin is Literal:
        return _enum(args)
    if origin in _UNIONS:
        return {"anyOf": [_schema(arg, direction, dump, seen) for arg in args]}
    if type_ in _SEQUENCES or origin in _SEQUENCES:
        return _array(args, direction, dump, seen)
    if type_ in _MAPPINGS or origin in _MAPPINGS:
        value = args[1] if len(args) == 2 else Any
        out: dict[str, Any] = {"type": "object"}
        if value is not Any:
            out["additionalProperties"] = _schema(value, direction, dump, seen)
        return out
    if isinstance(type_, type) and attrs.has(type_):
        return {} if type_ in seen else _object(type_, direction, dump, (*seen, type_))
    return {}


def _enum(choices: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"enum": list(choices)}
    kinds = {_SCALARS.get(type(c)) for c in choices}
    if len(kinds) == 1 and None not in kinds:  # the converter wants the choices' own type
        out["type"] = kinds.pop()
    return out


def _array(
    args: tuple[Any, ...], direction: Direction, dump: Dump, seen: tuple[type, ...]
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array"}
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        args = args[:1]
    if len(args) == 1 and args[0] is not Any:
        out["items"] = _schema(args[0], direction, dump, seen)
    elif len(args) > 1:  # tuple[X, Y]: exactly these
        out["prefixItems"] = [_schema(arg, direction, dump, seen) for arg in args]
        out["minItems"] = out["maxItems"] = len(args)
    return out


def _object(cls: type, direction: Direction, dump: Dump, seen: tuple[type, ...]) -> dict[str, Any]:
    hints = type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        if direction == "in" and not field.init:
            continue
        schema = _schema(hints.get(field.name, Any), direction, dump, seen)
        if direction == "in":
            schema |= _bounds(field)
            if field.default is attrs.NOTHING:
                required.append(field.name)
            else:
                schema |= _default(field, dump)
        else:
            required.append(field.name)
        properties[field.name] = schema
    out: dict[str, Any] = {"type": "object", "title": cls.__name__, "properties": properties}
    if required:
        out["required"] = required
    return out


def _bounds(field: attrs.Attribute[Any]) -> dict[str, Any]:
    """``minimum``/``maximum`` of an ``sdk.in_range`` validator (400 outside, http-api §1.5)."""
    validators = getattr(field.validator, "_validators", (field.validator,))
    for check in validators:
        if getattr(check, "__code__", None) is _IN_RANGE:
            cells = dict(zip(check.__code__.co_freevars, check.__closure__, strict=True))
            return {"minimum": cells["low"].cell_contents, "maximum": cells["high"].cell_contents}
    return {}


def _default(field: attrs.Attribute[Any], dump: Dump) -> dict[str, Any]:
    """The field's default as JSON, when it has one that needs no instance."""
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return {}
        default = default.factory()
    try:
        value = dump(default)
        json.dumps(value)
    except (TypeError, ValueError):
        return {}
    return {"default": value}


def parameter_schema(field: attrs.Attribute[Any], type_: Any, dump: Dump) -> dict[str, Any]:
    """The schema of a query parameter as the kernel reads it (http-api §1.5)."""
    args = [a for a in get_args(type_) if a is not type(None)]
    kind = args[0] if get_origin(type_) in _UNIONS and len(args) == 1 else type_
    schema: dict[str, Any]
    if kind is int:
        schema = {"type": "integer", "minimum": 0}
        if "clamp" in field.metadata:
            low, high = field.metadata["clamp"]
            schema["description"] = f"values outside {low}..{high} are moved into that range"
    elif kind is bool:
        schema = {"type": "boolean"}
    else:
        schema = {"type": "string"}
    if field.default is not attrs.NOTHING and field.default is not None:  # absent, not null
        schema |= _default(field, dump)
    return schema
