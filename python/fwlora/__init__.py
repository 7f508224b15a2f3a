"""Fisher-Weighted LoRA: importance-aware LoRA regularisation as a one-line optimizer change.

from fwlora import FisherAdamW
optimizer = FisherAdamW(model, warmup=500, lam=1e-4)
"""

from typing import Any

import torch

from fwlora._core import FisherCore, FisherCoreError, __version__
from fwlora.optim import (
    FisherAdamW,
    FisherOptions,
    FisherWeighting,
    adamw_param_groups,
    find_adapter_matrices,
)


def attach_fisher(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, **options: Any
) -> FisherWeighting:
    """Adds FW-LoRA to any torch optimizer over `model`'s LoRA parameters; returns the handle."""
    return FisherWeighting(model, **options).attach(optimizer)


__all__ = [
    "FisherAdamW",
    "FisherCore",
    "FisherCoreError",
    "FisherOptions",
    "FisherWeighting",
    "__version__",
    "adamw_param_groups",
    "attach_fisher",
    "find_adapter_matrices",
]
