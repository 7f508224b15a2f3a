"""The output folder of an experiment: checked before anything is written, written in a
temporary folder beside it, and moved into place.

* A folder fwlora wrote holds `MARKER`; `--overwrite` replaces only such a folder and
  `--resume` continues only such a folder. Any other non-empty folder is left alone.
* A new experiment is written into `.NAME.fwlora-XXXX` beside OUT and renamed to OUT when it
  finishes, or, when it stops early (Ctrl-C, SIGTERM, an error), once it has something worth
  keeping (a finished run or a checkpoint) so that `--resume` can continue it; otherwise it is
  removed and OUT stays as it was. The folder `--overwrite` replaces is removed only at that
  moment.
* A run replaces only what was at OUT when it started: if OUT changed meanwhile (another run
  finished there, or a user put a file in it), OUT is left as it is and the run's results are
  moved to `NAME.fwlora-XXXX` beside it instead, and the user is told.
* While a run writes, it holds a lock on its marker file (released by the operating system
  when the process dies, even by SIGKILL). A second run to the same OUT is refused while the
  first writes; `--resume` finds a staging folder whose process died (no lock) and continues
  it.
* `--resume` works in OUT itself, which fwlora already wrote.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fwlora.harness.checkpoint import CHECKPOINT, checkpoint_epoch
from fwlora.harness.errors import HarnessError

MARKER = "fwlora-output.json"
MARKER_SCHEMA = "fwlora.output/1"
STAGING_TAG = ".fwlora-"  # .NAME.fwlora-XXXX: a staging folder of output NAME
OLD_TAG = ".fwlora-old-"  # .NAME.fwlora-old-XXXX: a replaced output on its way out


def written_by_fwlora(out_dir: Path) -> bool:
    return (out_dir / MARKER).is_file()


def _lock(folder: Path) -> IO[str] | None:
    """The marker file of `folder`, locked for this process (None: another process holds it).
    Without advisory locks (Windows) every lock succeeds."""
    handle = open(folder / MARKER)  # noqa: SIM115 - held open for the run's lifetime
    if sys.platform == "win32":  # no advisory locks: concurrent runs are caught at commit time
        return handle
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _in_use(folder: Path) -> bool:
    """True while a live fwlora process writes `folder`."""
    if not written_by_fwlora(folder):
        return False
    handle = _lock(folder)
    if handle is None:
        return True
    handle.close()
    return False


def _stagings(out_dir: Path) -> list[Path]:
    """The staging folders of OUT beside it (not replaced outputs on their way out)."""
    parent = out_dir.parent
    if not parent.is_dir():
        return []
    prefix = f".{out_dir.name}{STAGING_TAG}"
    old = f".{out_dir.name}{OLD_TAG}"
    return sorted(
        p
        for p in parent.iterdir()
        if p.name.startswith(prefix) and not p.name.startswith(old) and p.is_dir()
    )


def _worth_keeping(folder: Path) -> bool:
    runs = folder / "runs"
    return runs.is_dir() and any(
        (r / CHECKPOINT).is_file() or (r / "metrics.json").is_file() for r in runs.iterdir()
    )


def orphans(out_dir: Path) -> list[Path]:
    """Staging folders of OUT whose process died (SIGKILL, the OOM killer, a power cut) after
    a checkpoint: what `--resume` continues."""
    return [
        p
        for p in _stagings(out_dir)
        if written_by_fwlora(p) and not _in_use(p) and _worth_keeping(p)
    ]


def _refuse_unnamed(out_dir: Path) -> None:
    """`-o .`, `-o ..`, `-o /`: the output would be the working folder, one above it, or the
    root; an experiment is moved into place by renaming, which none of these can take."""
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if not resolved.name or resolved == cwd or resolved in cwd.parents:
        raise HarnessError(
            f"output {out_dir}: the current folder, a folder above it or the root cannot be "
            "an output (it is replaced when the run finishes); name a new folder, e.g. -o results"
        )


def check_output(out_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuses, before anything is written, an output this command may not use."""
    if overwrite and resume:
        raise HarnessError("--overwrite and --resume exclude each other")
    _refuse_unnamed(out_dir)
    if out_dir.is_symlink():
        # The experiment is written beside the output and moved into place (see Staging),
        # which would replace the link itself: refused before any work, naming its target.
        raise HarnessError(
            f"output {out_dir}: is a symbolic link (to {os.readlink(out_dir)}); give the "
            "folder it points to as --output"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise HarnessError(
            f"output {out_dir}: exists and is not a directory; choose another --output"
        )
    busy = [p for p in _stagings(out_dir) if _in_use(p)]
    if busy or (resume and _in_use(out_dir)):
        where = busy[0].name if busy else str(out_dir)
        raise HarnessError(
            f"output {out_dir}: another fwlora run is writing it now (in {where}); wait until "
            "it ends or choose another --output"
        )
    used = out_dir.is_dir() and any(out_dir.iterdir())
    ours = written_by_fwlora(out_dir)
    if used and not ours and (overwrite or resume):
        flag = "--overwrite" if overwrite else "--resume"
        raise HarnessError(
            f"output {out_dir}: not written by fwlora (no {MARKER}); {flag} only acts on "
            "folders fwlora wrote, and this one is left untouched: choose another --output"
        )
    if resume:
        _check_resume(out_dir, used)
    else:
        left = orphans(out_dir)
        if left:  # a run killed (SIGKILL) while writing: starting over would strand its work
            names = ", ".join(p.name for p in left)
            raise HarnessError(
                f"output {out_dir}: a killed run left its work (checkpoints) in {names}; pass "
                f"--resume to continue it, or delete {names} to start afresh"
            )
    if used and not (overwrite or resume):
        raise HarnessError(
            f"output {out_dir}: already exists and is not empty; pass --overwrite to replace it, "
            "--resume to continue it, or choose another --output"
        )
    _check_writable(out_dir.parent if not resume or not used else out_dir, out_dir)


def _check_resume(out_dir: Path, used: bool) -> None:
    """--resume: OUT itself, or the one staging folder a killed run left beside it."""
    left = orphans(out_dir)
    names = ", ".join(p.name for p in left)
    if used and left:
        raise HarnessError(
            f"output {out_dir}: a run that was killed before it could replace it left its "
            f"checkpoint in {names}; to continue that run, move {out_dir} away and --resume "
            f"again; to continue {out_dir} itself, delete {names}"
        )
    if not used and not left:
        raise HarnessError(f"output {out_dir}: nothing to resume (directory missing or empty)")
    if len(left) > 1:
        raise HarnessError(
            f"output {out_dir}: several killed runs left checkpoints beside it ({names}); "
            f"keep the one to continue (renamed to {out_dir.name}) and --resume again"
        )


def _check_writable(path: Path, out_dir: Path) -> None:
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise HarnessError(
            f"output {out_dir}: {existing} is a file, not a folder; choose another --output"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HarnessError(
            f"output {out_dir}: cannot write in {existing} (permission denied); "
            "choose another --output"
        )


def _fingerprint(path: Path) -> tuple | None:
    """What is at `path` (None: nothing): its identity and every entry's path, size and
    modification time, so that any change made during a run is seen at its end."""
    try:
        top = path.lstat()
    except FileNotFoundError:
        return None
    entries = []
    for root, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            st = os.lstat(os.path.join(root, name))
            entries.append(
                (os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns)
            )
    return (top.st_dev, top.st_ino, tuple(sorted(entries)))


class OutputChanged(HarnessError):
    """OUT changed during the run; the run's results were moved to `kept_in` instead."""

    def __init__(self, out_dir: Path, kept_in: Path) -> None:
        super().__init__(
            f"output {out_dir}: changed while this run was writing (another run or a user "
            f"wrote there), so it was left as it is; this run's results are in {kept_in} "
            "(move them where you want them)"
        )
        self.kept_in = kept_in


@dataclass
class Kept:
    """What an experiment that stopped early left in its output."""

    where: Path
    finished: list[str]
    checkpoints: dict[str, int]  # run → last checkpointed epoch
    replaced: bool  # it took the place of an earlier output (--overwrite)

    def describe(self) -> str:
        parts = []
        if self.finished:
            parts.append(f"{len(self.finished)} finished run(s)")
        parts += [f"run {r} checkpointed after epoch {e}" for r, e in self.checkpoints.items()]
        replaced = " (replacing the previous output)" if self.replaced else ""
        return f"kept in {self.where}{replaced}: {'; '.join(parts)}"


class Staging:
    """Where an experiment is written: a temporary folder beside `out_dir` (or `out_dir`
    itself on --resume), moved into place by `commit()`. Holds the folder's lock until then."""

    def __init__(self, out_dir: Path, resume: bool) -> None:
        self.out_dir, self.resume = out_dir, resume
        self.existed = out_dir.exists()
        self.before = _fingerprint(out_dir)  # what this run may replace
        self.adopted: Path | None = None  # the killed run's staging folder --resume took over
        self._created: list[Path] = []  # parent folders made for the temporary folder
        self._lock: IO[str] | None = None
        if resume:
            self.path = out_dir
            self._adopt_orphan()
            self._lock = _lock(out_dir)
            if self._lock is None:
                raise HarnessError(
                    f"output {out_dir}: another fwlora run is writing it now; wait until it "
                    "ends or choose another --output"
                )
            return
        try:
            self._make_parents(out_dir.parent)
            self.path = Path(
                tempfile.mkdtemp(prefix=f".{out_dir.name}{STAGING_TAG}", dir=out_dir.parent)
            )
            marker = {
                "schema": MARKER_SCHEMA,
                "note": "written by fwlora; --overwrite may replace this folder",
            }
            (self.path / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            self._lock = _lock(self.path)
        except OSError as exc:
            self._remove_parents()
            raise HarnessError(
                f"output {out_dir}: cannot write there ({exc.strerror or exc}); "
                "choose another --output"
            ) from None

    def _adopt_orphan(self) -> None:
        """--resume with OUT missing or empty: the killed run's staging folder becomes OUT."""
        left = orphans(self.out_dir)
        if (self.out_dir.is_dir() and any(self.out_dir.iterdir())) or not left:
            return
        if self.out_dir.is_dir():
            self.out_dir.rmdir()  # empty (check_output)
        left[0].rename(self.out_dir)
        self.adopted = left[0]
        self.existed = True

    def _make_parents(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            self._created.append(path)

    def _remove_parents(self) -> None:
        for path in reversed(self._created):
            try:
                path.rmdir()
            except OSError:
                break

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def commit(self) -> Path:
        """Moves the finished (or worth-keeping) experiment into place, replacing only what
        was at OUT when the run started. Raises OutputChanged (the results moved beside OUT)
        when OUT changed meanwhile."""
        try:
            if not self.resume:
                self._move_into_place()
        finally:
            self._release()
        return self.out_dir

    def _move_into_place(self) -> None:
        aside = None
        if self.before is not None:
            aside = self.out_dir.with_name(f".{self.out_dir.name}{OLD_TAG}{uuid.uuid4().hex[:8]}")
            try:
                self.out_dir.rename(aside)
            except FileNotFoundError:
                aside = None  # removed during the run: nothing left to replace
            if aside is not None and _fingerprint(aside) != self.before:
                self._conflict(aside)
        elif self.out_dir.exists() or self.out_dir.is_symlink():
            self._conflict(None)
        try:
            os.rename(self.path, self.out_dir)  # refuses a non-empty folder that appeared
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            self._conflict(aside)
        if aside is not None:
            shutil.rmtree(aside)

    def _conflict(self, aside: Path | None) -> None:
        """OUT changed during the run: put it back as it is, move the results beside it."""
        if aside is not None:
            # If something took OUT's place meanwhile, the old output stays in `aside`.
            with contextlib.suppress(OSError):
                os.rename(aside, self.out_dir)
        kept_in = self.path.with_name(self.path.name.lstrip("."))
        try:
            self.path.rename(kept_in)
        except OSError:
            kept_in = self.path
        self.path = kept_in
        raise OutputChanged(self.out_dir, kept_in)

    def discard(self) -> None:
        self._release()
        if self.resume:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        self._remove_parents()

    def kept(self) -> Kept | None:
        """After an early stop: commits what is worth keeping, removes the rest."""
        finished, checkpoints = [], {}
        for run_dir in sorted((self.path / "runs").glob("*")):
            if _finished(run_dir):
                finished.append(run_dir.name)
            elif (run_dir / CHECKPOINT).is_file():
                checkpoints[run_dir.name] = checkpoint_epoch(run_dir) or 0
        if not finished and not checkpoints:
            self.discard()
            return None
        try:
            where = self.commit()
        except OutputChanged as exc:
            where = exc.kept_in
        replaced = self.existed and not self.resume and where == self.out_dir
        return Kept(where, finished, checkpoints, replaced)

    def nothing_kept(self) -> str:
        """What an early stop without progress left."""
        if self.resume:
            return f"{self.out_dir} is as it was"
        if self.existed:
            return f"{self.out_dir} is unchanged"
        return f"nothing was written ({self.out_dir} was not created)"


def _finished(run_dir: Path) -> bool:
    """A run whose metrics.json says complete (a damaged file counts as unfinished here)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False
