"""Finding FW-LoRA behind optimizer wrappers (accelerate, the Trainer) and saving its state.

Needs neither transformers nor accelerate: works on any object exposing ``.optimizer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fwlora.optim.lookup import find_fisher
from fwlora.optim.weighting import FisherWeighting

# The one name of the importance file, wherever FW-LoRA writes one.
IMPORTANCE_FILE = "fwlora_importance.json"


def find_fisher_weighting(obj: Any) -> FisherWeighting:
    """The FisherWeighting of a FisherAdamW, of accelerate's AcceleratedOptimizer around one
    (or any wrapper exposing ``.optimizer``), or `obj` itself when it is one.

    An optimizer FW-LoRA was attached to with :func:`fwlora.attach_fisher` does not hold it:
    pass the FisherWeighting that call returned instead.
    """
    found = find_fisher(obj)
    if found is not None:
        return found
    raise ValueError(
        f"optimizer: no FW-LoRA found in {type(obj).__name__}; use fwlora.FisherAdamW, or pass "
        "the FisherWeighting that attach_fisher(...) returned"
    )


def use_accelerator_settings(
    optimizer: Any, weighting: FisherWeighting | None = None
) -> FisherWeighting:
    """Hands accelerate's settings to FW-LoRA: its fp16 GradScaler and its gradient
    accumulation steps. Call it right after ``accelerator.prepare(...)``, before training.

    * ``Accelerator(mixed_precision="fp16")`` scales the loss; FW-LoRA divides its statistic
      by the scale² only when it knows the scaler (nothing to hand over under fp32 / bf16).
    * ``Accelerator(gradient_accumulation_steps=N)`` runs N backward passes per optimizer
      step; FW-LoRA then measures the squared norm of the step's accumulated weight gradient
      (``accumulation_steps=N``), exact whatever the split.

    `optimizer`: the prepared ``AcceleratedOptimizer``. `weighting`: the handle
    :func:`fwlora.attach_fisher` returned, when FW-LoRA is attached to another optimizer;
    found in `optimizer` otherwise. Returns the FisherWeighting.
    """
    fw = weighting if weighting is not None else find_fisher_weighting(optimizer)
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None:
        fw.use_grad_scaler(scaler)
    steps = getattr(getattr(optimizer, "gradient_state", None), "num_steps", None)
    if isinstance(steps, int) and steps >= 1:
        fw.set_accumulation_steps(steps)
    return fw


def save_importances(
    optimizer: Any, directory: str | Path, filename: str = IMPORTANCE_FILE
) -> Path:
    """Writes FW-LoRA's summary (phase, step, options, F and I per matrix) to
    directory/filename and returns that path.

    `optimizer`: a FisherAdamW, an optimizer wrapper around one, or a FisherWeighting. Under
    torch.distributed call it from any one rank: it runs no collective.
    """
    return find_fisher_weighting(optimizer).export_json(Path(directory) / filename)
