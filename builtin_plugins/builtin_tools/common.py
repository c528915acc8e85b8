"""What the built-in tools share: paths against the workspace, OS errors as tool errors and a
deadline for sync handlers (http-api §18.1)."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from attrs import frozen

from sdk import ToolError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from sdk import ToolContext

__all__ = ["Deadline", "os_errors", "resolve"]


def resolve(tc: ToolContext, path: str) -> Path:
    """``path`` against the workspace when relative, as given when absolute (http-api §18.1).

    Symlinks are not resolved: the allowlist guard (§18.2) confines the result when it is on.
    """
    return tc.workspace / path


@frozen
class Deadline:
    """The call's time limit, for sync handlers: the ``tools`` plugin stops waiting after
    ``tc.timeout_sec`` but cannot stop a worker thread, so long loops check this and give up."""

    at: float
    seconds: float

    @classmethod
    def of(cls, tc: ToolContext) -> Deadline:
        return cls(time.monotonic() + tc.timeout_sec, tc.timeout_sec)

    @property
    def passed(self) -> bool:
        return time.monotonic() > self.at

    def check(self) -> None:
        if self.passed:
            raise ToolError(f"gave up after {self.seconds:g} s")


@contextlib.contextmanager
def os_errors(subject: object, missing: str) -> Iterator[None]:
    """Turn the OS errors of touching ``subject`` (a path or a program) into :class:`ToolError`
    with a clear message; ``missing`` names what was expected (``file not found: <path>``)."""
    try:
        yield
    except FileNotFoundError:
        raise ToolError(f"{missing} not found: {subject}") from None
    except IsADirectoryError:
        raise ToolError(f"is a directory: {subject}") from None
    except NotADirectoryError:
        raise ToolError(f"not a directory: {subject}") from None
    except PermissionError:
        raise ToolError(f"permission denied: {subject}") from None
    except OSError as exc:
        raise ToolError(f"cannot access {subject}: {exc.strerror or exc}") from None
