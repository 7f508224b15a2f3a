"""torch.distributed: DDP and FSDP2 support, averaging over ranks, and the refusals.

Supported: single device; DistributedDataParallel (LoRA factors replicated); FSDP2
(``torch.distributed.fsdp.fully_shard``, also what accelerate and the Trainer use with
``fsdp_version: 2``), including HSDP meshes. Under FSDP2 the LoRA factors are DTensors sharded
on dim 0 (A: r × in on the rank dim, B: out × r on out); what FW-LoRA needs of them:

* the warm-up statistic comes from the layer's activations, which are local to each rank as
  under DDP, and is averaged over ranks the same way (`mean_over_ranks`: M floats per step),
  so every rank freezes the same importances;
* the penalty needs only r × r Gram matrices (see :mod:`fwlora.optim.penalty`);
* fully_shard replaces every parameter object, so factors found before sharding are stale:
  `current_matrices` re-reads them at the first step and adopts them when the optimizer
  updates exactly those (built after sharding, or remapped by accelerate's ``prepare``).

Refused, with the way out: FSDP1 (``FullyShardedDataParallel``: flat parameters), DeepSpeed
ZeRO (partitions inside its own optimizer), DTensor layouts that are not FSDP2's (tensor
parallelism, meshes over part of the world), and an optimizer that updates neither the factors
FW-LoRA found nor the model's current ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from fwlora.optim.checkpoint import STATE_KEY
from fwlora.optim.lookup import find_fisher
from fwlora.optim.targets import AdapterMatrix

_TRUE = {"1", "true", "yes", "y", "on"}
SHARDING_HINT = (
    "FW-LoRA supports single-device, DistributedDataParallel and FSDP2 training "
    "(torch.distributed.fsdp.fully_shard; accelerate / Trainer with fsdp_version 2); "
    "see docs/distributed.md"
)


def mean_over_ranks(row: torch.Tensor) -> torch.Tensor:
    """Σ over ranks / world of one step's statistics (M floats), when distributed.

    Called every observed step, inside step() where every rank is, so that reading the state
    (which the Trainer does on rank 0 only) never runs a collective. The same under DDP and
    FSDP2: the statistic comes from activations, which are per rank in both.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return row
    world = torch.distributed.get_world_size()
    if world == 1:
        return row
    torch.distributed.all_reduce(row)
    return row / world


def is_dtensor(t: Any) -> bool:
    """Whether `t` is a torch.distributed.tensor.DTensor (FSDP2's sharded parameters)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(t, DTensor)


def current_factors(matrix: AdapterMatrix) -> tuple[nn.Parameter, nn.Parameter]:
    """The LoRA factors `matrix.module` holds now (FSDP2 replaces them when it shards, and
    swaps in unsharded ones for the duration of forward and backward)."""
    return matrix.current_factors()


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


def _env_engine() -> str | None:
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
    refusal = _env_engine()
    if refusal:
        raise ValueError(f"{refusal}. {SHARDING_HINT}")
    world = _world_size()
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


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


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
            a, b = current_factors(m)
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


def sq_norm_sum(tensors: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """Σ ‖t‖² over `tensors` as a float64 0-d tensor, None when there are none.

    Plain tensors: a local sum. FSDP2 shards (DTensors): the sum over the whole tensors, the
    same on every rank (one all-reduce of a scalar per distinct layout; a collective, so every
    rank must call it).
    """
    plain: list[torch.Tensor] = []
    sharded: list[tuple[torch.Tensor, Any]] = []
    for t in tensors:
        if is_dtensor(t):
            local = t.to_local()  # type: ignore[attr-defined]
            sharded.append((torch.linalg.vector_norm(local, dtype=torch.float64).square(), t))
        else:
            plain.append(t)
    parts = [_sq_sum(plain)] if plain else []
    if sharded:
        parts.append(sharded_sum(sharded))
    if not parts:
        return None
    return torch.stack([p.to(parts[0].device) for p in parts]).sum()


def _sq_sum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    norms = torch._foreach_norm(list(tensors))
    return torch.stack([n.to(torch.float64) for n in norms]).square().sum()


def sharded_sum(values: Sequence[tuple[torch.Tensor, Any]]) -> torch.Tensor:
    """Σ of per-rank partial sums over whole sharded tensors: `values` pairs a local 0-d sum
    over this rank's shard of a DTensor with that DTensor. Summed over the ranks that hold
    different shards (not over HSDP's replicas): one all-reduce per distinct layout."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    by_layout: dict[tuple, list[torch.Tensor]] = {}
    likes: dict[tuple, Any] = {}
    for value, like in values:
        kinds = tuple(isinstance(q, Shard) for q in like.placements)
        key = (id(like.device_mesh), kinds)
        by_layout.setdefault(key, []).append(value.to(torch.float64))
        likes[key] = like
    totals = []
    for key, parts in by_layout.items():
        like = likes[key]
        local = torch.stack([v.to(parts[0].device) for v in parts]).sum()
        placements = [Partial() if shard else Replicate() for shard in key[1]]
        totals.append(DTensor.from_local(local, like.device_mesh, placements).full_tensor())
    return torch.stack([t.to(totals[0].device) for t in totals]).sum()


# ------------------------------------------------------------------ checkpoints
def _fisher_entry(optimizer: Any) -> dict[str, Any]:
    fw = find_fisher(optimizer)
    if fw is not None:
        return fw.state_dict()
    entry = optimizer.state_dict().get(STATE_KEY)
    if entry is None:
        raise ValueError(
            f"optimizer: no FW-LoRA in {type(optimizer).__name__}; use FisherAdamW or an "
            "optimizer FW-LoRA was attached to"
        )
    return entry


def get_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, options: Any = None
) -> dict[str, Any]:
    """``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` plus FW-LoRA's entry.

    torch's function keeps only ``state`` and ``param_groups``; FW-LoRA's state (tiny, the same
    on every rank) is added under ``"fwlora"`` as one JSON string, a single leaf that
    ``torch.distributed.checkpoint.save``/``load`` store whatever phase it was saved in.
    Every rank must call it (as torch's).
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict as _get

    state: dict[str, Any] = dict(_get(model, optimizer, options=options))
    state[STATE_KEY] = json.dumps(_fisher_entry(optimizer))
    return state


def set_optimizer_state_dict(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    optim_state_dict: dict[str, Any],
    *,
    options: Any = None,
) -> None:
    """``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict`` with FW-LoRA's entry.

    `optim_state_dict` is what `get_optimizer_state_dict` returned (after a DCP round trip):
    its ``"fwlora"`` entry (JSON string or dict) is checked first and handed to the optimizer's
    ``load_state_dict``, which torch's function calls without it. A missing or mismatched entry
    raises ValueError before anything is loaded.
    """
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict as _set

    if STATE_KEY not in optim_state_dict:
        raise ValueError(
            f"optim_state_dict: no {STATE_KEY!r} entry; save it with "
            "fwlora.optim.distributed.get_optimizer_state_dict"
        )
    entry = optim_state_dict[STATE_KEY]
    if isinstance(entry, (bytes, str)):
        entry = json.loads(entry)
    fw = find_fisher(optimizer)
    if fw is not None:
        fw.validate_state_dict(entry)  # refuse before torch changes anything
    rest = {k: v for k, v in optim_state_dict.items() if k != STATE_KEY}
    # torch's function rebuilds the dict it passes to optimizer.load_state_dict (dropping
    # unknown keys): hand the entry back in on the way, for that one call.
    target = optimizer
    inner = target.load_state_dict

    def load_with_entry(state_dict: dict[str, Any]) -> Any:
        return inner({**state_dict, STATE_KEY: entry})

    target.load_state_dict = load_with_entry  # type: ignore[method-assign]
    try:
        _set(model, optimizer, rest, options=options)
    finally:
        del target.load_state_dict
