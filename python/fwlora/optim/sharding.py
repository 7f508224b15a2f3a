"""Sharding: which distributed layouts FW-LoRA supports, and re-adopting the LoRA factors
after FSDP2 replaced them.

Supported: single device; DistributedDataParallel (LoRA factors replicated); FSDP2
(``torch.distributed.fsdp.fully_shard``, also what accelerate and the Trainer use with
``fsdp_version: 2``), including HSDP meshes. Under FSDP2 the LoRA factors are DTensors sharded
on dim 0 (A: r × in on the rank dim, B: out × r on out). fully_shard replaces every parameter
object, so factors found before sharding are stale: `current_matrices` re-reads them at the
first step and adopts them when the optimizer updates exactly those (built after sharding, or
remapped by accelerate's ``prepare``).

Refused, with the way out: FSDP1 (``FullyShardedDataParallel``: flat parameters), DeepSpeed
ZeRO (partitions inside its own optimizer), DTensor layouts that are not FSDP2's (tensor
parallelism, meshes over part of the world), and an optimizer that updates neither the factors
FW-LoRA found nor the model's current ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fwlora.optim.collectives import is_dtensor, world_size
from fwlora.optim.launcher import launcher_refusal
from fwlora.optim.targets import AdapterMatrix

SHARDING_HINT = (
    "FW-LoRA supports single-device, DistributedDataParallel and FSDP2 training "
    "(torch.distributed.fsdp.fully_shard; accelerate / Trainer with fsdp_version 2); "
    "see docs/distributed.md"
)


def check_model(model: nn.Module) -> None:
    """ValueError when `model` is wrapped by FSDP1 or a DeepSpeed engine (before the LoRA
    layers are looked for, so the message names the engine, not a missing attribute)."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind == "FullyShardedDataParallel":
            where = f" ({name})" if name else ""
            raise ValueError(
                f"FSDP: the model is wrapped by FSDP1 (FullyShardedDataParallel{where}), whose "
                "flat parameters hide the LoRA factors; shard with FSDP2 (fully_shard). "
                f"{SHARDING_HINT}"
            )
        if kind == "DeepSpeedEngine":
            raise ValueError(
                "DeepSpeed: the model is a DeepSpeed engine, whose ZeRO partitions its own "
                f"optimizer updates. {SHARDING_HINT}"
            )


def check_sharding(matrices: Sequence[AdapterMatrix]) -> None:
    """ValueError unless the LoRA factors are plain tensors or FSDP2 shards FW-LoRA supports."""
    refusal = launcher_refusal()
    if refusal:
        raise ValueError(f"{refusal}. {SHARDING_HINT}")
    world = world_size()
    for m in matrices:
        for p in (m.lora_A, m.lora_B):
            if hasattr(p, "ds_id") or hasattr(p, "ds_numel"):
                raise ValueError(
                    f"DeepSpeed: {m.name} holds ZeRO-partitioned factors, which DeepSpeed's "
                    f"own optimizer updates. {SHARDING_HINT}"
                )
            if getattr(p, "_fsdp_flattened", False) or type(p).__name__ == "FlatParameter":
                raise ValueError(
                    f"FSDP: {m.name} is wrapped by FSDP1 (FullyShardedDataParallel), whose flat "
                    f"parameters hide the LoRA factors; shard with FSDP2 (fully_shard) instead. "
                    f"{SHARDING_HINT}"
                )
            if is_dtensor(p):
                _check_fsdp2_layout(m.name, p, world)


def _check_fsdp2_layout(name: str, p: Any, world: int) -> None:
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(p.placements)
    shards = [q for q in placements if isinstance(q, Shard)]
    fsdp_like = all(isinstance(q, (Shard, Replicate)) for q in placements) and len(shards) <= 1
    if not fsdp_like:
        raise ValueError(
            f"FSDP2: {name} has LoRA factors laid out as {placements}; FW-LoRA supports FSDP2's "
            "layouts (one Shard, Replicate on HSDP's other mesh dim), not tensor parallelism. "
            f"{SHARDING_HINT}"
        )
    size = p.device_mesh.size()
    if size != world:
        raise ValueError(
            f"FSDP2: {name}'s LoRA factors live on a device mesh of {size} of the {world} ranks "
            "(tensor or pipeline parallelism?); FW-LoRA averages its statistic over all ranks and "
            f"supports data-parallel meshes over every rank only. {SHARDING_HINT}"
        )


def _owned(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


def current_matrices(
    matrices: Sequence[AdapterMatrix], optimizer: torch.optim.Optimizer | None
) -> list[AdapterMatrix] | None:
    """At the first step: the matrices with the factors the model holds now, or None when
    they are the ones FW-LoRA found (nothing to adopt).

    fully_shard (FSDP2) replaces every parameter. When that happened after FW-LoRA was built,
    the new factors are adopted if `optimizer` updates exactly them (accelerate's ``prepare``
    remaps the optimizer to the sharded parameters); otherwise ValueError, since an optimizer
    built before fully_shard and never remapped updates orphaned tensors. Also checks the
    layout (`check_sharding`) and that the optimizer updates every factor.
    """
    check_sharding(matrices)  # FSDP1 marks the parameters it flattened, wrapped later or not
    fresh: list[AdapterMatrix] = []
    replaced = False
    for m in matrices:
        try:
            a, b = m.current_factors()
        except (AttributeError, KeyError) as exc:
            raise ValueError(
                f"model: {m.name} no longer holds its LoRA factors ({exc}); it was wrapped after "
                f"FW-LoRA was built by an engine that removes parameters (FSDP1?). {SHARDING_HINT}"
            ) from exc
        if a is m.lora_A and b is m.lora_B:
            fresh.append(m)
            continue
        replaced = True
        fresh.append(dataclasses.replace(m, lora_A=a, lora_B=b))
    check_sharding(fresh)
    if optimizer is not None:
        owned = _owned(optimizer)
        stale = [m.name for m in fresh if id(m.lora_A) not in owned or id(m.lora_B) not in owned]
        if stale and replaced:
            raise ValueError(
                f"optimizer: the model's LoRA parameters were replaced after FW-LoRA was built "
                f"(fully_shard / FSDP2 wrapping; first: {stale[0]}), and the optimizer still "
                "updates the old ones. Build the optimizer after fully_shard(model), or let "
                "accelerate's prepare() shard the model and remap the optimizer"
            )
        if stale:
            raise ValueError(
                "optimizer: no longer updates the LoRA factors FW-LoRA found in the model "
                f"({stale[0]}"
                f"{f' and {len(stale) - 1} more' if len(stale) > 1 else ''}; FSDP1 or DeepSpeed "
                f"replaced them with flat shards?). {SHARDING_HINT}"
            )
    return fresh if replaced else None
