"""What FW-LoRA keeps in an optimizer's state_dict, and how a saved one is checked.

The entry (``state_dict()["fwlora"]``) is plain Python: the matrix names it was saved for, the
core's dict form (which holds the step counter, F, I and the core's options) and the torch-side
modes. Checking never changes anything, so a refused load leaves the optimizer as it was.
"""

from __future__ import annotations

from typing import Any

from fwlora._core import FisherCore

STATE_KEY = "fwlora"
STATE_FORMAT = 2


def fisher_state(names: list[str], core: FisherCore, penalty: str, estimator: str) -> dict:
    return {
        "format": STATE_FORMAT,
        "matrices": list(names),
        "core": core.to_dict(),
        "penalty": penalty,
        "estimator": estimator,
    }


def check_fisher_state(state: Any, names: list[str]) -> FisherCore:
    """The core a saved entry holds, after checking it fits `names`. Changes nothing."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"state_dict: expected a FW-LoRA state (format {STATE_FORMAT}), got {found!r}"
        )
    saved = state.get("matrices")
    if saved != names:
        ours, theirs = set(names), set(saved or [])
        raise ValueError(
            "state_dict: saved for other LoRA matrices "
            f"({len(theirs)} vs {len(ours)}; only in saved: {sorted(theirs - ours)[:3]}, "
            f"only in model: {sorted(ours - theirs)[:3]})"
        )
    return FisherCore.from_dict(state.get("core"))


def require_entry(state_dict: dict, owner: str) -> Any:
    if STATE_KEY not in state_dict:
        raise ValueError(f"state_dict: no {STATE_KEY!r} entry; it was not saved by {owner}")
    return state_dict[STATE_KEY]
