"""What the launcher announced: accelerate's environment flags and its active plugin.

`accelerate launch --use_deepspeed / --use_fsdp` (and the Trainer, through accelerate) tell the
process which sharding engine will wrap the model — before the model is wrapped, so FW-LoRA
can refuse an engine it cannot support when the optimizer is built rather than at its first
step. Reading accelerate's state goes through ``sys.modules`` only: accelerate is never
imported here. Torch-free.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_TRUE = {"1", "true", "yes", "y", "on"}


def _accelerate_shared_state() -> dict[str, Any]:
    """accelerate's AcceleratorState once an Accelerator exists ({} otherwise; never imports
    accelerate)."""
    state = sys.modules.get("accelerate.state")
    shared = getattr(getattr(state, "AcceleratorState", None), "_shared_state", None)
    return shared if isinstance(shared, dict) else {}


def _accelerate_fsdp_version() -> int | None:
    """The FSDP version of accelerate's active plugin, when accelerate is in use (the Trainer
    and ``Accelerator(fsdp_plugin=...)`` announce FSDP through ACCELERATE_USE_FSDP without
    FSDP_VERSION)."""
    plugin = _accelerate_shared_state().get("fsdp_plugin")
    version = getattr(plugin, "fsdp_version", None)
    return int(version) if version is not None else None


def _accelerate_fell_back() -> bool:
    """Whether accelerate, asked for FSDP, chose another distributed type: it turns FSDP on
    only for GPU-type backends, and on CPU runs DDP (plain tensors, nothing sharded)."""
    kind = _accelerate_shared_state().get("distributed_type")
    return kind is not None and str(getattr(kind, "value", kind)) != "FSDP"


def sharding_refusal(
    *, deepspeed: bool = False, fsdp_version: int | None = None, source: str = ""
) -> str | None:
    """The one refusal of the set-ups whose flat shards hide the LoRA factors (DeepSpeed ZeRO,
    FSDP1), naming where the setting came from (`source`); None for a supported one. The
    optimizer (accelerate's launch flags) and the Trainer callback both use it."""
    where = f" ({source})" if source else ""
    if deepspeed:
        return f"DeepSpeed: not supported{where}"
    if fsdp_version is not None and fsdp_version != 2:
        return (
            f"FSDP: not supported with FSDP version {fsdp_version}{where}: FSDP1's flat "
            "parameters hide the LoRA factors; use fsdp_version 2 (the Trainer: "
            "fsdp_config={'version': 2})"
        )
    return None


def launcher_refusal() -> str | None:
    """The sharding engine accelerate announced (launcher flags, or its plugin), if refused."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").strip().lower() in _TRUE:
        return sharding_refusal(deepspeed=True, source="ACCELERATE_USE_DEEPSPEED is set")
    if os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in _TRUE:
        if _accelerate_fell_back():
            return None
        version = _accelerate_fsdp_version()
        source = "accelerate's FSDP plugin"
        if version is None:
            # `accelerate launch --use_fsdp` always sets it; accelerate's own default is 1.
            version = int(os.environ.get("FSDP_VERSION", "1").strip() or "1")
            source = "FSDP_VERSION" if "FSDP_VERSION" in os.environ else "accelerate's default"
        return sharding_refusal(
            fsdp_version=version, source=f"ACCELERATE_USE_FSDP is set, version from {source}"
        )
    return None
