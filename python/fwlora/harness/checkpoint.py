"""A run's checkpoint (after every epoch, for --resume) and its partial predictions.

`checkpoint.pt` holds the trainable parameters, the optimizer and scheduler states, the run's
progress and the random generators' states (and a method's own state, e.g. AdaLoRA's
importance EMAs: `methods.CheckpointState`); it is written to a temporary file and renamed, so
an interruption never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fwlora.harness.errors import HarnessError, read_saved

CHECKPOINT = "checkpoint.pt"
PARTIAL_PREDICTIONS = "predictions.partial.json"


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    progress: dict[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """The run's state after an epoch; `extra`: a method's own state by key (beside the
    run's, e.g. "adalora")."""
    state = {
        "trainable": _trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
    }
    state.update(extra or {})
    tmp = path.with_suffix(".tmp")
    try:
        # Through a file object: a full disk is an OSError (ENOSPC), not torch's RuntimeError.
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
    tmp.replace(path)  # atomic: an interruption never leaves a half-written checkpoint


STATE_KEYS = ("trainable", "optimizer", "scheduler", "progress", "rng")


def _load_state(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    int(state["progress"]["epoch"])
    return state


def _read_state(path: Path) -> dict[str, Any]:
    return read_saved(
        path, _load_state, f"delete it to train run {path.parent.name} again from its start"
    )


def load_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    restore: Mapping[str, Callable[[Any, Any], None]] | None = None,
) -> dict[str, Any]:
    """Puts a checkpoint's state back and returns the run's progress; `restore`: by key, how
    a method puts its own state back (called with the model and what was saved)."""
    state = _read_state(path)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value.to(params[name].device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    for key, load in (restore or {}).items():
        if key in state:
            load(model, state[key])
    return state["progress"]


def save_partial_predictions(run_dir: Path, best: np.ndarray, final: np.ndarray) -> None:
    path = run_dir / PARTIAL_PREDICTIONS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"best": best.tolist(), "final": final.tolist()}))
    tmp.replace(path)


def load_partial_predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = run_dir / PARTIAL_PREDICTIONS
    if not path.is_file():
        return None
    saved = read_saved(
        path, _load_predictions, f"delete the run folder {run_dir} to train it again"
    )
    return np.array(saved["best"]), np.array(saved["final"])


def _load_predictions(path: Path) -> dict[str, Any]:
    saved = json.loads(path.read_text())
    return {"best": saved["best"], "final": saved["final"]}


def checkpoint_epoch(run_dir: Path) -> int | None:
    """The last epoch a run's checkpoint holds (None: no checkpoint, or a damaged one)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return int(_read_state(path)["progress"]["epoch"])
    except HarnessError:
        return None
