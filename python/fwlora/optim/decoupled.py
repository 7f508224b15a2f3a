"""penalty="decoupled": AdamW's decoupled weight decay scaled by (1 - I_m) per adapter."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fwlora.optim.targets import AdapterMatrix


def has_decoupled_decay(optimizer: torch.optim.Optimizer) -> bool:
    if isinstance(optimizer, torch.optim.AdamW):
        return True
    return all(g.get("decoupled_weight_decay", False) for g in optimizer.param_groups)


@torch.no_grad()
def scale_decoupled_decay(
    optimizer: torch.optim.Optimizer,
    matrices: Sequence[AdapterMatrix],
    weights: Sequence[float],
    scale: float,
) -> None:
    """Before AdamW's step: its decay of each adapter's factors becomes wd·weight·scale.

    AdamW multiplies p by (1 - lr·wd) before its Adam update, which does not read p.
    Pre-multiplying by (1 - lr·wd·weight·scale) / (1 - lr·wd) gives exactly that decay with
    wd scaled by `weight` (= 1 - I_m) for this adapter's factors.
    """
    params: list[torch.Tensor] = []
    ratios: list[float] = []
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for matrix, weight in zip(matrices, weights):
        for p in (matrix.lora_A, matrix.lora_B):
            if p.grad is None:  # AdamW neither updates nor decays it: nothing to scale
                continue
            group = group_of[id(p)]
            lr_wd = float(group["lr"]) * float(group["weight_decay"])
            if lr_wd == 0.0:
                continue
            if lr_wd >= 1.0:
                raise ValueError(f"lr * weight_decay = {lr_wd} >= 1: decay would flip signs")
            params.append(p)
            ratios.append((1.0 - lr_wd * weight * scale) / (1.0 - lr_wd))
    if params:
        torch._foreach_mul_(params, ratios)
