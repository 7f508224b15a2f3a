"""Collectives FW-LoRA runs under torch.distributed (DDP, FSDP2), and nothing else.

* `mean_over_ranks`: one step's warm-up statistic (M floats) averaged over ranks, inside
  step(), where every rank is — so that reading the state never runs a collective;
* `sq_norm_sum` / `sharded_sum`: Σ‖t‖² over whole tensors when FSDP2 shards them (one
  all-reduce of a scalar per distinct layout).

Single-process training runs none of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


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


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


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
