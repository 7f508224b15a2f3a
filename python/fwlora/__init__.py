"""Fisher-Weighted LoRA: importance-aware LoRA regularisation as a one-line optimizer change.

    from fwlora import FisherAdamW
    optimizer = FisherAdamW(model, warmup=500, lam=1e-4)
"""

from fwlora._core import FisherCore, FisherCoreError, __version__

__all__ = ["FisherCore", "FisherCoreError", "__version__"]
