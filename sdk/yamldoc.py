"""YAML documents read safely: the same result on every build of PyYAML, and bounded in work.

PyYAML's safe loaders build plain data, but what they do with hostile nesting depends on the
build. Against libyaml 0.2.6 and later, libyaml stops at 1,000 levels; against libyaml 0.2.5
(still in wheels and distributions) the C composer recurses without a limit and a file of a
million ``[`` crashes the process; the pure-Python loader raises ``RecursionError``. Aliases
are shared, not copied, so ``&a [*a]`` loads as a list holding itself and a few lines of
aliases to aliases (a "billion laughs") load quickly and then explode wherever the data is
walked or dumped as JSON.

:func:`load_yaml` reads the event stream first (an iterative pass in every build), rejecting a
document nested deeper than :data:`MAX_DEPTH`, an alias to a node that encloses it, or aliases
that stand for more than :data:`MAX_ALIASED_NODES` nodes in all; only then does it load.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_ALIASED_NODES", "MAX_DEPTH", "YamlError", "load_yaml"]

#: Collections (sequences and mappings) nested deeper than this are refused.
MAX_DEPTH = 64
#: The most nodes that the aliases of one stream may stand for, all counted as if copied.
MAX_ALIASED_NODES = 100_000

#: A safe loader: libyaml's when present (faster), the pure-Python one otherwise.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STARTS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_ENDS = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class YamlError(ValueError):
    """The text is not a YAML document :func:`load_yaml` accepts; the message says why, on one
    line."""


def load_yaml(text: str) -> Any:
    """The data of the single YAML document in ``text`` (``None`` for an empty one), as
    ``yaml.safe_load`` gives it, or :class:`YamlError`."""
    try:
        _check(text)
        return yaml.load(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        if exc.problem == "exceeded maximum nesting depth" and exc.problem_mark is not None:
            # libyaml 0.2.6's own limit (1,000 levels), met while it reads ahead: the same answer
            line = exc.problem_mark.line + 1
            raise YamlError(f"nested deeper than {MAX_DEPTH} levels (line {line})") from None
        raise YamlError(" ".join(str(exc).split())) from None
    except yaml.YAMLError as exc:
        raise YamlError(" ".join(str(exc).split())) from None


def _check(text: str) -> None:
    # One frame per open collection: [anchor, nodes inside it so far (aliases counted as copies)].
    frames: list[list[Any]] = []
    sizes: dict[str, int] = {}  # anchor -> its node's size, once the node is complete
    aliased = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, _STARTS):
            if len(frames) >= MAX_DEPTH:
                raise YamlError(f"nested deeper than {MAX_DEPTH} levels (line {_line(event)})")
            frames.append([event.anchor, 1])
            continue
        if isinstance(event, _ENDS):
            anchor, size = frames.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor = None
            if event.anchor in sizes:
                size = sizes[event.anchor]
            elif any(frame[0] == event.anchor for frame in frames):
                raise YamlError(
                    f"alias *{event.anchor} inside its own anchor (line {_line(event)})"
                )
            else:
                continue  # undefined: the loader reports it
            aliased += size
            if aliased > MAX_ALIASED_NODES:
                raise YamlError(
                    f"aliases stand for more than {MAX_ALIASED_NODES} nodes (line {_line(event)})"
                )
        else:  # stream and document boundaries
            continue
        if anchor is not None:
            sizes[anchor] = size
        if frames:
            frames[-1][1] += size


def _line(event: Any) -> int:
    return int(event.start_mark.line) + 1 if event.start_mark is not None else 0
