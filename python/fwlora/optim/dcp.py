"""torch.distributed.checkpoint (DCP) and FW-LoRA: torch's own functions carry its state.

FW-LoRA's state is an entry of the optimizer's first param group (see
:mod:`fwlora.optim.state_entry`), and ``get_optimizer_state_dict``/``set_optimizer_state_dict``
of ``torch.distributed.checkpoint.state_dict`` keep every key of a param group: call torch's
functions (accelerate and the Trainer do) — nothing FW-LoRA-specific is needed.

The two wrappers below were needed by the previous release, whose state lived in a top-level
key that torch drops; they remain for one release, deprecated, and forward to torch's. A
checkpoint written by the old wrapper (a top-level ``"fwlora"`` JSON string) still loads.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from fwlora.optim.state_entry import STATE_KEY


def _deprecated(name: str) -> None:
    warnings.warn(
        f"fwlora.optim.distributed.{name} is deprecated and will be removed in the next "
        "release: FW-LoRA's state now travels in the optimizer's param groups, so "
        f"torch.distributed.checkpoint.state_dict.{name} carries it; call torch's directly",
        DeprecationWarning,
        stacklevel=3,
    )


def get_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, options: Any = None
) -> dict[str, Any]:
    """Deprecated: ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict as _get

    _deprecated("get_optimizer_state_dict")
    return dict(_get(model, optimizer, options=options))


def set_optimizer_state_dict(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    optim_state_dict: dict[str, Any],
    *,
    options: Any = None,
) -> None:
    """Deprecated: ``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict``.

    A state dict the previous release's `get_optimizer_state_dict` wrote (FW-LoRA's entry as
    a top-level JSON string, which torch's function would drop) has its entry moved into the
    first param group, where the optimizer's load hook reads it."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict as _set

    _deprecated("set_optimizer_state_dict")
    state = dict(optim_state_dict)
    entry = state.pop(STATE_KEY, None)
    groups = state.get("param_groups")
    if entry is not None and groups:
        state["param_groups"] = [{**groups[0], STATE_KEY: entry}, *groups[1:]]
    _set(model, optimizer, state, options=options)
