"""Finding FW-LoRA behind optimizer wrappers: the one walk from an optimizer (or accelerate's
AcceleratedOptimizer, the Trainer's wrappers, ...) to the FisherWeighting inside it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fwlora.optim.weighting import FisherWeighting

# Wrappers of wrappers are followed through `.optimizer`, at most this deep.
MAX_DEPTH = 8


def find_fisher(obj: Any) -> FisherWeighting | None:
    """`obj` if it is a FisherWeighting, else the one a FisherAdamW holds, looked for in `obj`
    and the optimizers it wraps; None when there is none (an optimizer FW-LoRA was attached
    to with attach_fisher holds it only as hooks: pass the FisherWeighting it returned)."""
    from fwlora.optim.weighting import FisherWeighting  # weighting imports this module's users

    current = obj
    for _ in range(MAX_DEPTH):
        if isinstance(current, FisherWeighting):
            return current
        found = getattr(current, "fisher_weighting", None)
        if isinstance(found, FisherWeighting):
            return found
        current = getattr(current, "optimizer", None)
        if current is None:
            return None
    return None
