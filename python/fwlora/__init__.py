"""Fisher-Weighted LoRA: importance-aware LoRA regularisation as a one-line optimizer change.

from fwlora import FisherAdamW
optimizer = FisherAdamW(model, warmup=500, lam=1e-4)

The torch-facing names load on first use (PEP 562), so `import fwlora` — and with it the
`fwlora` command's --version and --help — does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fwlora._core import FisherCore, FisherCoreError, __version__

if TYPE_CHECKING:  # the names below, for type checkers and IDEs
    import torch

    from fwlora.optim import (
        FisherAdamW,
        FisherOptions,
        FisherWeighting,
        adamw_param_groups,
        find_adapter_matrices,
    )

# Name → the module that defines it (imported on first access).
_LAZY = {
    "FisherAdamW": "fwlora.optim",
    "FisherOptions": "fwlora.optim",
    "FisherWeighting": "fwlora.optim",
    "adamw_param_groups": "fwlora.optim",
    "find_adapter_matrices": "fwlora.optim",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'fwlora' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def attach_fisher(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, **options: Any
) -> FisherWeighting:
    """Adds FW-LoRA to any torch optimizer over `model`'s LoRA parameters; returns the handle."""
    from fwlora.optim import FisherWeighting

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
