"""What FW-LoRA keeps in an optimizer's state_dict, and how a saved one is checked.

The entry (``state_dict()["fwlora"]``) is plain Python: the matrix names it was saved for, the
core's dict form (which holds the step counter, F, I and the core's options) and the torch-side
modes. Checking never changes anything, so a refused load leaves the optimizer as it was.
"""

from __future__ import annotations

import json
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


def with_entry(state_dict: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """`state_dict` carrying FW-LoRA's `entry` at the top level and, as one JSON string, in
    its first param group.

    torch.distributed.checkpoint's get_/set_optimizer_state_dict (what accelerate and the
    Trainer use under FSDP2) keep only ``state`` and ``param_groups``, and keep every key of
    a param group: the mirror lets such a checkpoint resume. A string is one leaf for DCP."""
    state_dict[STATE_KEY] = entry
    groups = state_dict.get("param_groups")
    if groups:
        groups[0] = {**groups[0], STATE_KEY: json.dumps(entry)}
    return state_dict


def without_entry(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of `state_dict` without FW-LoRA's entry and its param-group mirror (so
    the optimizer does not adopt the mirror into its live param groups)."""
    rest = {k: v for k, v in state_dict.items() if k != STATE_KEY}
    groups = rest.get("param_groups")
    if groups and STATE_KEY in groups[0]:
        first = {k: v for k, v in groups[0].items() if k != STATE_KEY}
        rest["param_groups"] = [first, *groups[1:]]
    return rest


def require_entry(state_dict: dict, owner: str) -> Any:
    """The FW-LoRA entry of an optimizer state dict: the top-level one, else the mirror in the
    first param group (all that is left after torch.distributed.checkpoint)."""
    if STATE_KEY in state_dict:
        return state_dict[STATE_KEY]
    groups = state_dict.get("param_groups") or [{}]
    mirrored = groups[0].get(STATE_KEY) if isinstance(groups[0], dict) else None
    if mirrored is None:
        raise ValueError(f"state_dict: no {STATE_KEY!r} entry; it was not saved by {owner}")
    if isinstance(mirrored, (bytes, str)):
        try:
            return json.loads(mirrored)
        except ValueError as exc:
            raise ValueError(
                f"state_dict: the {STATE_KEY!r} entry is not valid JSON ({exc})"
            ) from None
    return mirrored
