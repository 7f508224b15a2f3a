"""Which matrices FW-LoRA weighs: the LoRA-adapted linear layers of a peft model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AdapterMatrix:
    """One adapted weight W_m with its LoRA factors: ΔW_m = scaling · B @ A."""

    name: str  # qualified name in model.named_modules()
    module: nn.Module  # peft's lora.Linear wrapper
    lora_A: torch.nn.Parameter  # (r, in_features)
    lora_B: torch.nn.Parameter  # (out_features, r)
    scaling: float
    in_features: int
    out_features: int

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]


def _active_adapter(module: nn.Module) -> str:
    active = module.active_adapters
    if len(active) != 1:
        raise ValueError(
            f"model: FW-LoRA needs exactly one active adapter, module has {list(active)}"
        )
    return active[0]


def find_adapter_matrices(model: nn.Module) -> list[AdapterMatrix]:
    """The LoRA-adapted linear layers of the active adapter, in `named_modules()` order.

    Raises ValueError when `model` is not a module, holds no LoRA layer, or uses a LoRA
    variant whose ΔW is not s·B·A (DoRA) or a layer type other than Linear.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(
            "model: expected a torch.nn.Module holding peft LoRA layers, "
            f"got {type(model).__name__}"
        )
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    matrices: list[AdapterMatrix] = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if type(module).__name__ in {"SVDLinear", "RankAllocator"} or hasattr(module, "lora_E"):
            raise ValueError(
                f"model: {name} is an AdaLoRA layer; FW-LoRA weighs plain LoRA adapters"
            )
        if not isinstance(module, LoraLinear):
            raise ValueError(
                f"model: FW-LoRA supports LoRA on Linear layers; {name} is {type(module).__name__}"
            )
        adapter = _active_adapter(module)
        if adapter not in module.lora_A:
            continue
        if getattr(module, "use_dora", {}).get(adapter, False):
            raise ValueError(f"model: {name} uses DoRA, whose ΔW is not scaling·B·A")
        lora_A = module.lora_A[adapter].weight
        lora_B = module.lora_B[adapter].weight
        matrices.append(
            AdapterMatrix(
                name=name,
                module=module,
                lora_A=lora_A,
                lora_B=lora_B,
                scaling=float(module.scaling[adapter]),
                in_features=lora_A.shape[1],
                out_features=lora_B.shape[0],
            )
        )
    if not matrices:
        raise ValueError(
            "model: no LoRA layers found; wrap the model with peft.get_peft_model(model, "
            "LoraConfig(...)) first"
        )
    return matrices
