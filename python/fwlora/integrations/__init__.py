"""FW-LoRA in the stacks users already train with: transformers Trainer, accelerate, DDP.

* :class:`FisherCallback` — logs phase, penalty and importances to the Trainer's
  ``report_to`` loggers and writes ``fwlora_importance.json`` beside each checkpoint and the
  final adapter.
* :func:`fisher_adamw_class` — FisherAdamW for ``Trainer(optimizer_cls_and_kwargs=...)``.
* :func:`find_fisher_weighting`, :func:`use_accelerator_scaler`, :func:`save_importances` —
  reach FW-LoRA through accelerate's ``AcceleratedOptimizer`` wrapper.
"""

from fwlora.integrations.common import (
    IMPORTANCE_FILE,
    find_fisher_weighting,
    save_importances,
    use_accelerator_scaler,
)
from fwlora.integrations.trainer import FisherCallback, fisher_adamw_class

__all__ = [
    "IMPORTANCE_FILE",
    "FisherCallback",
    "find_fisher_weighting",
    "fisher_adamw_class",
    "save_importances",
    "use_accelerator_scaler",
]
