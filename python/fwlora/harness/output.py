"""The output folder of an experiment: checked before anything is written, written in a
temporary folder beside it, and moved into place.

* A folder fwlora wrote holds `MARKER`; `--overwrite` replaces only such a folder and
  `--resume` continues only such a folder. Any other non-empty folder is left alone.
* A new experiment is written into `.NAME.fwlora-XXXX` beside OUT and renamed to OUT when it
  finishes, or, when it stops early (Ctrl-C, an error), once it has something worth keeping (a
  finished run or a checkpoint) so that `--resume` can continue it; otherwise it is removed
  and OUT stays as it was. The folder `--overwrite` replaces is removed only at that moment.
* `--resume` works in OUT itself, which fwlora already wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from fwlora.harness.checkpoint import CHECKPOINT, checkpoint_epoch
from fwlora.harness.errors import HarnessError

MARKER = "fwlora-output.json"
MARKER_SCHEMA = "fwlora.output/1"


def written_by_fwlora(out_dir: Path) -> bool:
    return (out_dir / MARKER).is_file()


def check_output(out_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuses, before anything is written, an output this command may not use."""
    if overwrite and resume:
        raise HarnessError("--overwrite and --resume exclude each other")
    if out_dir.exists() and not out_dir.is_dir():
        raise HarnessError(
            f"output {out_dir}: exists and is not a directory; choose another --output"
        )
    used = out_dir.is_dir() and any(out_dir.iterdir())
    ours = written_by_fwlora(out_dir)
    if resume and not used:
        raise HarnessError(f"output {out_dir}: nothing to resume (directory missing or empty)")
    if used and not ours and (overwrite or resume):
        flag = "--overwrite" if overwrite else "--resume"
        raise HarnessError(
            f"output {out_dir}: not written by fwlora (no {MARKER}); {flag} only acts on "
            "folders fwlora wrote, and this one is left untouched: choose another --output"
        )
    if used and not (overwrite or resume):
        raise HarnessError(
            f"output {out_dir}: already exists and is not empty; pass --overwrite to replace it, "
            "--resume to continue it, or choose another --output"
        )
    _check_writable(out_dir if resume else out_dir.parent, out_dir)


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
    itself on --resume), moved into place by `commit()`."""

    def __init__(self, out_dir: Path, resume: bool) -> None:
        self.out_dir, self.resume = out_dir, resume
        self.existed = out_dir.exists()
        self._created: list[Path] = []  # parent folders made for the temporary folder
        if resume:
            self.path = out_dir
            return
        try:
            self._make_parents(out_dir.parent)
            self.path = Path(
                tempfile.mkdtemp(prefix=f".{out_dir.name}.fwlora-", dir=out_dir.parent)
            )
            marker = {
                "schema": MARKER_SCHEMA,
                "note": "written by fwlora; --overwrite may replace this folder",
            }
            (self.path / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        except OSError as exc:
            self._remove_parents()
            raise HarnessError(
                f"output {out_dir}: cannot write there ({exc.strerror or exc}); "
                "choose another --output"
            ) from None

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

    def commit(self) -> None:
        """Moves the finished (or worth-keeping) experiment into place."""
        if self.resume:
            return
        aside = None
        if self.out_dir.exists():
            aside = self.out_dir.with_name(
                f".{self.out_dir.name}.fwlora-old-{uuid.uuid4().hex[:8]}"
            )
            self.out_dir.rename(aside)
        self.path.rename(self.out_dir)
        if aside is not None:
            shutil.rmtree(aside)

    def discard(self) -> None:
        if self.resume:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        self._remove_parents()

    def kept(self) -> Kept | None:
        """After an early stop: commits what is worth keeping, removes the rest."""
        finished, checkpoints = [], {}
        for run_dir in sorted((self.path / "runs").glob("*")):
            metrics = run_dir / "metrics.json"
            if metrics.is_file() and json.loads(metrics.read_text()).get("status") == "complete":
                finished.append(run_dir.name)
            elif (run_dir / CHECKPOINT).is_file():
                checkpoints[run_dir.name] = checkpoint_epoch(run_dir) or 0
        if not finished and not checkpoints:
            self.discard()
            return None
        self.commit()
        return Kept(self.out_dir, finished, checkpoints, self.existed and not self.resume)

    def nothing_kept(self) -> str:
        """What an early stop without progress left."""
        if self.resume:
            return f"{self.out_dir} is as it was"
        if self.existed:
            return f"{self.out_dir} is unchanged"
        return f"nothing was written ({self.out_dir} was not created)"
