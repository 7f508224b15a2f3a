"""Fisher-Weighted LoRA: importance-aware LoRA regularisation as a one-line optimizer change.

from fwlora import FisherAdamW
optimizer = FisherAdamW(model, warmup=500, lam=1e-4)
"""

from fwlora._core import FisherCore, FisherCoreError, __version__
from fwlora.optim import FisherAdamW, FisherWeighting, adamw_param_groups, find_adapter_matrices


def attach_fisher(optimizer, model, **options) -> FisherWeighting:
    """Adds FW-LoRA to any torch optimizer over `model`'s LoRA parameters; returns the handle."""
    return FisherWeighting(model, **options).attach(optimizer)


__all__ = [
    "FisherAdamW",
    "FisherCore",
    "FisherCoreError",
    "FisherWeighting",
    "__version__",
    "adamw_param_groups",
    "attach_fisher",
    "find_adapter_matrices",
]
