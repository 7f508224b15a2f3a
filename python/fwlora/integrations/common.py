"""Finding FW-LoRA behind optimizer wrappers (accelerate, the Trainer) and saving its state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fwlora.optim.weighting import FisherWeighting

IMPORTANCE_FILE = "fwlora_importance.json"


def find_fisher_weighting(obj: Any) -> FisherWeighting:
    """The FisherWeighting of a FisherAdamW, of accelerate's AcceleratedOptimizer around one
    (or any wrapper exposing ``.optimizer``), or `obj` itself when it is one.

    An optimizer FW-LoRA was attached to with :func:`fwlora.attach_fisher` does not hold it:
    pass the FisherWeighting that call returned instead.
    """
    current = obj
    for _ in range(8):  # wrappers of wrappers, bounded
        if isinstance(current, FisherWeighting):
            return current
        found = getattr(current, "fisher_weighting", None)
        if isinstance(found, FisherWeighting):
            return found
        current = getattr(current, "optimizer", None)
        if current is None:
            break
    raise ValueError(
        f"optimizer: no FW-LoRA found in {type(obj).__name__}; use fwlora.FisherAdamW, or pass "
        "the FisherWeighting that attach_fisher(...) returned"
    )


def use_accelerator_scaler(
    optimizer: Any, fisher: FisherWeighting | None = None
) -> FisherWeighting:
    """Hands the fp16 GradScaler of an accelerate-prepared optimizer to FW-LoRA.

    ``Accelerator(mixed_precision="fp16")`` scales the loss; FW-LoRA divides its statistic by
    the scale² only when it knows the scaler. No-op without a scaler (fp32, bf16). Returns the
    FisherWeighting.
    """
    fw = fisher if fisher is not None else find_fisher_weighting(optimizer)
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None:
        fw.use_grad_scaler(scaler)
    return fw


def save_importances(fisher: Any, directory: str | Path, filename: str = IMPORTANCE_FILE) -> Path:
    """Writes FW-LoRA's summary (phase, step, config, F and I per matrix) to directory/filename.

    `fisher`: a FisherWeighting, a FisherAdamW, or an optimizer wrapper around one. Under
    torch.distributed call it from any one rank: it runs no collective.
    """
    return find_fisher_weighting(fisher).export_json(Path(directory) / filename)
