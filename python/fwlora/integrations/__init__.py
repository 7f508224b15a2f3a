"""FW-LoRA in the stacks users already train with: transformers Trainer, accelerate, DDP.

* :class:`FisherCallback` — logs phase, penalty, penalty-gradient ratio and importances to the
  Trainer's ``report_to`` loggers and writes ``fwlora_importance.json`` beside each checkpoint
  and the final adapter.
* :func:`fisher_adamw_class` — FisherAdamW for ``Trainer(optimizer_cls_and_kwargs=...)``.
* :func:`find_fisher_weighting`, :func:`use_accelerator_settings` (fp16 scaler, gradient
  accumulation), :func:`save_importances` — reach FW-LoRA through accelerate's
  ``AcceleratedOptimizer`` wrapper.

The Trainer parts import transformers' Trainer machinery on first use only, so
``from fwlora.integrations import save_importances`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fwlora.integrations.common import (
    IMPORTANCE_FILE,
    find_fisher_weighting,
    save_importances,
    use_accelerator_settings,
)

if TYPE_CHECKING:
    from fwlora.integrations.trainer import FisherCallback, fisher_adamw_class

_TRAINER_NAMES = ("FisherCallback", "fisher_adamw_class")


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        from fwlora.integrations import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "IMPORTANCE_FILE",
    "FisherCallback",
    "find_fisher_weighting",
    "fisher_adamw_class",
    "save_importances",
    "use_accelerator_settings",
]
