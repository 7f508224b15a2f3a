"""What FW-LoRA keeps in an optimizer's state_dict, and how a saved one is checked.

FW-LoRA's state travels inside the optimizer's own state dict, as schedule_free's does: one
entry, ``state_dict()["param_groups"][0]["fwlora"]``, added by a state-dict post-hook and
taken out again by a load pre-hook (so a live param group never holds a stale copy). torch's
``state_dict``/``load_state_dict``, ``torch.save``, the Trainer, accelerate and
torch.distributed.checkpoint (whose get_/set_optimizer_state_dict keep only ``state`` and
``param_groups``, and every key of a param group) carry it with nothing added.

The entry is plain Python of a fixed shape — the same keys and nesting in every phase — since
torch.distributed.checkpoint loads a checkpoint in place into the fresh optimizer's own state
dict and refuses keys the checkpoint lacks: the matrix names it was saved for, the core's dict
form (step counter, F, I and the core's options), the torch-side modes and λ's calibration
record. Checking never changes anything, so a refused load leaves the optimizer as it was.

The layout of the previous release (format 2: a top-level ``"fwlora"`` key plus a JSON-string
mirror of it in the first param group) still loads.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from fwlora._core import FisherCore
from fwlora.optim.options import CORE_OPTIONS, FisherOptions

STATE_KEY = "fwlora"
STATE_FORMAT = 3
# Read, never written: the previous release's layout (top-level key + JSON mirror).
OLD_FORMAT = 2
_EMPTY_CALIBRATION = {"task_sq_ema": None, "weight": None}


def fisher_state(
    names: list[str],
    core: FisherCore,
    penalty: str,
    estimator: str,
    calibration: dict[str, float] | None,
) -> dict[str, Any]:
    """The entry for a state dict (`calibration`: `Calibration.state_dict()`)."""
    return {
        "format": STATE_FORMAT,
        "matrices": list(names),
        "core": _fixed_core(core.to_dict()),
        "penalty": penalty,
        "estimator": estimator,
        "calibration": dict(calibration) if calibration is not None else dict(_EMPTY_CALIBRATION),
    }


def saved_calibration(state: dict[str, Any]) -> Any:
    """An entry's calibration record in `Calibration.state_dict()`'s form (None: empty)."""
    record = state.get("calibration")
    if isinstance(record, dict) and record == _EMPTY_CALIBRATION:
        return None
    return record


def check_fisher_state(state: Any, names: list[str]) -> FisherCore:
    """The core a saved entry holds, after checking it fits `names`. Changes nothing."""
    if not isinstance(state, dict) or state.get("format") not in (STATE_FORMAT, OLD_FORMAT):
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"state_dict: expected a FW-LoRA state (format {STATE_FORMAT}, or {OLD_FORMAT} "
            f"from the previous release), got {found!r}"
        )
    saved = state.get("matrices")
    if saved != names:
        ours, theirs = set(names), set(saved or [])
        raise ValueError(
            "state_dict: saved for other LoRA matrices "
            f"({len(theirs)} vs {len(ours)}; only in saved: {sorted(theirs - ours)[:3]}, "
            f"only in model: {sorted(ours - theirs)[:3]})"
        )
    return FisherCore.from_dict(_core_dict(state.get("core")))


def _fixed_core(core: dict[str, Any]) -> dict[str, Any]:
    """The core's dict form with the same shape in every phase: importances that do not exist
    yet are M zeros with ``importance_frozen: False`` (DCP would otherwise have to load a list
    into a None, which it cannot; zeros, not NaN, so that saved states compare equal)."""
    frozen = core["importance"] is not None
    importance = core["importance"] if frozen else [0.0] * len(core["fisher"])
    return {**core, "importance": importance, "importance_frozen": frozen}


def _core_dict(core: Any) -> Any:
    """The core's own dict form back from `_fixed_core`'s (the previous layout: unchanged)."""
    if not isinstance(core, dict) or "importance_frozen" not in core:
        return core
    rest = {k: v for k, v in core.items() if k != "importance_frozen"}
    return {**rest, "importance": core["importance"] if core["importance_frozen"] else None}


def with_entry(state_dict: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """`state_dict` (an optimizer's, whose param groups are already copies) carrying
    `entry` in its first param group."""
    groups = state_dict.get("param_groups")
    if not groups:  # pragma: no cover - an optimizer always has a param group
        raise ValueError("state_dict: the optimizer has no param group to carry FW-LoRA")
    state_dict["param_groups"] = [{**groups[0], STATE_KEY: entry}, *groups[1:]]
    return state_dict


def take_entry(state_dict: Any, owner: str) -> tuple[Any, dict[str, Any]]:
    """(FW-LoRA's entry, a shallow copy of `state_dict` without it) — so the optimizer
    loads the rest and its live param groups never adopt the entry.

    Found in a param group (this release; torch.distributed.checkpoint may reorder groups,
    so every group is looked at), or at the top level with its JSON mirror (the previous
    release's layout)."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
    rest = {k: v for k, v in state_dict.items() if k != STATE_KEY}
    entry = state_dict.get(STATE_KEY)
    groups = rest.get("param_groups")
    if isinstance(groups, list):
        kept = []
        for group in groups:
            if isinstance(group, dict) and STATE_KEY in group:
                entry = group[STATE_KEY] if entry is None else entry
                group = {k: v for k, v in group.items() if k != STATE_KEY}
            kept.append(group)
        rest["param_groups"] = kept
    if entry is None:
        raise ValueError(f"state_dict: no {STATE_KEY!r} entry; it was not saved by {owner}")
    if isinstance(entry, (bytes, str)):  # the previous release's JSON mirror
        try:
            entry = json.loads(entry)
        except ValueError as exc:
            raise ValueError(
                f"state_dict: the {STATE_KEY!r} entry is not valid JSON ({exc})"
            ) from None
    return entry, rest


def warn_adopted_options(ours: FisherOptions, saved: dict[str, Any]) -> None:
    """One UserWarning naming every saved option that differs from the constructor's."""
    differ = [
        f"{name}={saved[name]!r} (constructed with {getattr(ours, name)!r})"
        for name in saved
        # lam="auto" is saved as "auto" (see saved_options): its calibrated λ is no mismatch.
        if saved[name] != getattr(ours, name)
    ]
    if differ:
        warnings.warn(
            f"FW-LoRA: the loaded state was saved with {', '.join(differ)}; the saved values "
            "are used, as torch optimizers adopt saved param groups, so the run continues as "
            "it was started. Build the optimizer with the saved options to silence this, or "
            "start a fresh run to use new ones",
            UserWarning,
            stacklevel=4,
        )


def saved_options(state: dict[str, Any], core: FisherCore) -> dict[str, Any]:
    saved = {name: getattr(core, name) for name in CORE_OPTIONS}
    if core.target_ratio is not None:
        saved["lam"] = "auto"  # the core holds the calibrated λ (or None), not the option
    saved["penalty"] = state.get("penalty")
    saved["estimator"] = state.get("estimator")
    return saved
