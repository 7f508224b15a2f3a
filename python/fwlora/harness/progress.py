"""Progress: tqdm bars on a terminal; plain periodic lines when stderr is a file or a pipe.

Bars redraw themselves with carriage returns and escape codes, which turn a log file into
noise; so bars appear only when stderr is a TTY. Elsewhere a line such as
``run epoch 1/3: 40/120 steps (33%), loss 0.4812`` is written every `PLAIN_INTERVAL_SEC`
seconds. Messages (`say`) go to stdout either way.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
PLAIN_INTERVAL_SEC = 30.0  # between two plain progress lines


def interactive() -> bool:
    """True when progress bars can redraw (stderr is a terminal)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class _PlainProgress(Generic[T]):
    """Iterates like tqdm, printing `desc: i/n unit (p%)` lines at most every interval."""

    def __init__(self, items: Sequence[T], desc: str, unit: str) -> None:
        self.items, self.desc, self.unit = items, desc, unit
        self.postfix = ""

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def __iter__(self) -> Iterator[T]:
        total = len(self.items)
        last = time.monotonic()
        for i, item in enumerate(self.items, start=1):
            yield item
            now = time.monotonic()
            if now - last >= PLAIN_INTERVAL_SEC and i < total:
                last = now
                extra = f", {self.postfix}" if self.postfix else ""
                line = f"{self.desc}: {i}/{total} {self.unit}s ({100 * i / total:.0f}%){extra}"
                write_line(line, "stderr")


class _Silent(Generic[T]):
    def __init__(self, items: Iterable[T]) -> None:
        self.items = items

    def set_postfix(self, **values: Any) -> None:
        pass

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)


def steps(items: Sequence[T], desc: str, quiet: bool, unit: str = "step") -> Any:
    """An iterable over `items` that shows progress (a bar, plain lines, or nothing when quiet);
    it has `set_postfix(**values)` like tqdm."""
    if quiet:
        return _Silent(items)
    if interactive():
        return tqdm(items, desc=desc, leave=False, unit=unit)
    return _PlainProgress(items, desc, unit)


def say(message: str, quiet: bool = False) -> None:
    """One line on stdout (above any progress bar)."""
    if quiet:
        return
    if interactive():
        tqdm.write(message)
    else:
        write_line(message, "stdout")


def write_line(message: str, stream: str) -> None:
    """One line on sys.stdout or sys.stderr. When the reader has gone (`fwlora ... | head`),
    later lines go nowhere and the run goes on: output is not what a run is for."""
    try:
        print(message, file=getattr(sys, stream), flush=True)
    except BrokenPipeError:
        detach(stream)


def detach(stream: str) -> None:
    """Points a stream whose reader has gone at the null device (also for the interpreter's
    last flush at exit, which would otherwise print 'Exception ignored ... BrokenPipeError')."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, getattr(sys, stream).fileno())
    except (OSError, ValueError):  # not a real file (a test's capture): replace the object
        setattr(sys, stream, open(os.devnull, "w"))  # noqa: SIM115 - lives as long as sys
    finally:
        os.close(null)


def library_bars_off() -> None:
    """Download bars of the Hugging Face hub and `datasets` off unless stderr is a terminal
    (they too redraw with carriage returns)."""
    if interactive():
        return
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    datasets = sys.modules.get("datasets")
    if datasets is not None:
        datasets.disable_progress_bars()
