"""transformers.Trainer: an optimizer class for `optimizer_cls_and_kwargs`, and a callback.

The Trainer needs nothing else: ``Trainer(..., optimizers=(FisherAdamW(model, ...), None))``
uses FW-LoRA with the Trainer's own LR schedule, gradient accumulation, clipping, mixed
precision and checkpoints (the Fisher state travels in ``optimizer.pt``).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from fwlora.integrations.common import (
    IMPORTANCE_FILE,
    find_fisher_weighting,
    save_importances,
)
from fwlora.optim.adamw import FisherAdamW
from fwlora.optim.weighting import FisherWeighting

_PEFT_PREFIX = "base_model.model."


def fisher_adamw_class(model: nn.Module, **options: Any) -> type[FisherAdamW]:
    """FisherAdamW bound to `model`, for ``Trainer(optimizer_cls_and_kwargs=(cls, kwargs))``.

    The Trainer builds that optimizer itself, as ``cls(param_groups, **kwargs)``: its param
    groups (``args.weight_decay`` except on biases and LayerNorm weights) and only `kwargs`
    (``lr``, ``betas``, ... — not ``args.learning_rate``). FW-LoRA needs the model, which
    this binds. FW-LoRA options may go in `options` or in `kwargs` (kwargs win)::

        cls = fisher_adamw_class(model, warmup=100, lam=1e-4)
        Trainer(model=model, args=args, optimizer_cls_and_kwargs=(cls, {"lr": 2e-4}), ...)
    """

    class BoundFisherAdamW(FisherAdamW):
        def __init__(self, params: Any = None, **kwargs: Any) -> None:
            super().__init__(model, params=params, **{**options, **kwargs})

    BoundFisherAdamW.__qualname__ = BoundFisherAdamW.__name__ = "FisherAdamW"
    return BoundFisherAdamW


class FisherCallback(TrainerCallback):
    """Reports FW-LoRA through the Trainer and saves its importances beside checkpoints.

    ``trainer.add_callback(FisherCallback(trainer))``. It

    * logs, at each of the Trainer's training logs (``logging_steps``) and through
      ``trainer.log`` (so to every ``report_to`` logger: TensorBoard, W&B, ... and
      ``trainer.state.log_history``): ``fwlora/phase`` (0 warm-up, 1 frozen),
      ``fwlora/step`` and ``fwlora/penalty`` (λ·Σ (1 - I_m)·‖ΔW_m‖²_F, 0 during warm-up);
      once frozen, ``fwlora/importance/<module>`` at the first log after freezing (and after
      each refresh, when ``refresh_every`` > 0) — they are constant in between;
    * writes ``fwlora_importance.json`` (phase, step, config, F and I per matrix) into each
      ``checkpoint-N`` the Trainer saves, and into ``args.output_dir`` when training ends,
      beside the adapter ``trainer.save_model()`` writes there (world process zero only);
    * hands the Trainer's fp16 GradScaler to FW-LoRA, and refuses FSDP and DeepSpeed.

    `fisher`: the FisherWeighting, when FW-LoRA was attached to another optimizer with
    :func:`fwlora.attach_fisher`; found in ``trainer.optimizer`` otherwise.
    """

    def __init__(
        self,
        trainer: Any,
        fisher: FisherWeighting | None = None,
        *,
        log_importances: bool = True,
        filename: str = IMPORTANCE_FILE,
    ) -> None:
        self.trainer = trainer
        self.log_importances = log_importances
        self.filename = filename
        self._fisher = fisher
        self._in_log = False
        self._logged_importance: tuple[float, ...] | None = None

    @property
    def fisher(self) -> FisherWeighting:
        if self._fisher is None:
            if self.trainer.optimizer is None:
                raise ValueError("FisherCallback: the Trainer has no optimizer yet")
            self._fisher = find_fisher_weighting(self.trainer.optimizer)
        return self._fisher

    def metrics(self) -> dict[str, float]:
        """What is logged now: phase, step, penalty; importances when newly frozen."""
        fw = self.fisher
        out = {
            "fwlora/phase": 0.0 if fw.phase == "warmup" else 1.0,
            "fwlora/step": float(fw.step),
            "fwlora/penalty": float(fw.penalty_value()),
        }
        importance = fw.importance
        if self.log_importances and importance is not None:
            values = tuple(importance.values())
            if values != self._logged_importance:
                self._logged_importance = values
                for name, value in importance.items():
                    short = name[len(_PEFT_PREFIX) :] if name.startswith(_PEFT_PREFIX) else name
                    out[f"fwlora/importance/{short}"] = value
        return out

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        for flag, name in (("is_fsdp_enabled", "FSDP"), ("is_deepspeed_enabled", "DeepSpeed")):
            if getattr(trainer, flag, False):
                raise ValueError(
                    f"{name}: not supported by FW-LoRA, whose gradient hooks need unsharded "
                    "LoRA factors; train with DDP (torchrun / accelerate launch) instead"
                )
        fw = self.fisher
        scaler = getattr(getattr(trainer, "accelerator", None), "scaler", None)
        if scaler is not None:
            fw.use_grad_scaler(scaler)
        self._logged_importance = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Only the Trainer's training logs (with "loss"); not eval, not our own log below.
        if self._in_log or not logs or "loss" not in logs:
            return
        metrics = self.metrics()
        self._in_log = True
        try:
            self.trainer.log(metrics)
        finally:
            self._in_log = False

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            save_importances(self.fisher, folder, self.filename)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_importances(self.fisher, args.output_dir, self.filename)
