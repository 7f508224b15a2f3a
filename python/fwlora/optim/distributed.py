"""torch.distributed: averaging the warm-up statistic over ranks, refusing sharded setups.

FW-LoRA reads and writes `lora_A/B.grad` of the very parameters it found in the model; plain
DistributedDataParallel keeps those replicated, so only the statistic needs averaging.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from fwlora.optim.targets import AdapterMatrix

_TRUE = {"1", "true", "yes", "y", "on"}
_HINT = (
    "FW-LoRA supports single-device and DistributedDataParallel training (torchrun, "
    "accelerate launch without --use_fsdp/--use_deepspeed); LoRA adapters are small, so "
    "replicate them with DDP instead"
)


def mean_over_ranks(row: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Σ over ranks / world of one step's statistics (M floats), when distributed.

    Called every observed step, inside step() where every rank is, so that reading the state
    (which the Trainer does on rank 0 only) never runs a collective.
    """
    if not (enabled and torch.distributed.is_available() and torch.distributed.is_initialized()):
        return row
    world = torch.distributed.get_world_size()
    if world == 1:
        return row
    torch.distributed.all_reduce(row)
    return row / world


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(t, DTensor)


def refuse_sharding(
    matrices: Sequence[AdapterMatrix], optimizer: torch.optim.Optimizer | None = None
) -> None:
    """ValueError under FSDP or DeepSpeed, whose sharded parameters the hooks cannot see."""
    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            raise ValueError(f"{name}: not supported ({var} is set). {_HINT}")
    for m in matrices:
        for p in (m.lora_A, m.lora_B):
            if _is_dtensor(p):
                raise ValueError(f"FSDP: {m.name} holds sharded (DTensor) LoRA factors. {_HINT}")
            if hasattr(p, "ds_id") or hasattr(p, "ds_numel"):
                raise ValueError(f"DeepSpeed: {m.name} holds ZeRO-partitioned factors. {_HINT}")
    if optimizer is not None:
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if any(id(m.lora_A) not in owned or id(m.lora_B) not in owned for m in matrices):
            raise ValueError(
                "optimizer: no longer updates the LoRA factors FW-LoRA found in the model "
                "(FSDP or DeepSpeed replaced them with flat shards?). " + _HINT
            )
