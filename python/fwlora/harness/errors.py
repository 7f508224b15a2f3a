"""The one exception the harness raises for bad input: its message says what to do."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any


class HarnessError(Exception):
    """A user-facing error (bad option, missing file, offline hub...): printed without a trace."""


# OSErrors that say what is wrong with the machine (a full disk, a quota, a read-only or
# failing file system, permissions), not with fwlora: one line, not a traceback.
ENVIRONMENT_ERRNOS = frozenset(
    code
    for code in (
        errno.ENOSPC,
        getattr(errno, "EDQUOT", None),
        errno.EROFS,
        errno.EIO,
        errno.EACCES,
        errno.EPERM,
    )
    if code is not None
)


def environment_error(exc: BaseException) -> str | None:
    """'No space left on device (PATH)' for an OSError of the machine; None otherwise."""
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    text = exc.strerror or str(exc)
    return f"{text} ({exc.filename})" if exc.filename else text


def read_saved(path: Path, parse: Callable[[Path], Any], fix: str) -> Any:
    """parse(path) of a file fwlora wrote (a checkpoint, metrics, the plan); a damaged or
    truncated file (a full disk, a copy cut short) is one HarnessError line naming it and `fix`."""
    try:
        return parse(path)
    except HarnessError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise HarnessError(
            f"{path}: damaged or truncated ({type(exc).__name__}: {first}); {fix}"
        ) from None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during an experiment; `message` says truly what was kept and where."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
