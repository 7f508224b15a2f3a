"""transformers.Trainer: an optimizer class for `optimizer_cls_and_kwargs`, and a callback.

The Trainer needs nothing else: ``Trainer(..., optimizers=(FisherAdamW(model, ...), None))``
uses FW-LoRA with the Trainer's own LR schedule, gradient accumulation, clipping, mixed
precision and checkpoints (the Fisher state travels in ``optimizer.pt``).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from fwlora.integrations.common import (
    IMPORTANCE_FILE,
    find_fisher_weighting,
    save_importances,
)
from fwlora.optim.adamw import FisherAdamW
from fwlora.optim.launcher import sharding_refusal
from fwlora.optim.sharding import SHARDING_HINT
from fwlora.optim.weighting import FisherWeighting

_PEFT_PREFIX = "base_model.model."
# `fwlora/phase` as a number loggers can plot.
PHASE_CODES = {"warmup": 0.0, "frozen": 1.0, "refreshing": 2.0}


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


def _output_dir(args: TrainingArguments) -> str:
    if args.output_dir is None:  # TrainingArguments fills it in; a hand-built one may not
        raise ValueError(
            "FisherCallback: args.output_dir is None; set TrainingArguments(output_dir=...)"
        )
    return args.output_dir


def _refuse_flat_sharding(trainer: Any) -> None:
    """FSDP1 and DeepSpeed hide the LoRA factors in flat shards: refused. FSDP2 is supported."""
    version = None
    if getattr(trainer, "is_fsdp_enabled", False):
        state = getattr(getattr(trainer, "accelerator", None), "state", None)
        version = int(getattr(getattr(state, "fsdp_plugin", None), "fsdp_version", 1))
    refusal = sharding_refusal(
        deepspeed=bool(getattr(trainer, "is_deepspeed_enabled", False)),
        fsdp_version=version,
        source="the Trainer's settings",
    )
    if refusal:
        raise ValueError(f"{refusal}. {SHARDING_HINT}")


class FisherCallback(TrainerCallback):
    """Reports FW-LoRA through the Trainer and saves its importances beside checkpoints.

    ``trainer.add_callback(FisherCallback(trainer))``. It

    * logs, at each of the Trainer's training logs (``logging_steps``) and through
      ``trainer.log`` (so to every ``report_to`` logger: TensorBoard, W&B, ... and
      ``trainer.state.log_history``): ``fwlora/phase`` (0 warm-up, 1 frozen, 2 refreshing),
      ``fwlora/step``, ``fwlora/penalty`` (the term in effect, scale·λ·Σ (1 - I_m)·‖ΔW_m‖²_F;
      0 during warm-up and with penalty="decoupled") and,
      once the penalty acts, ``fwlora/penalty_grad_ratio`` (‖∇P‖/‖∇L_task‖ over the LoRA
      factors at the latest measured penalised step), ``fwlora/lam`` (λ in effect; with lam="auto"
      from its calibration on) and ``fwlora/target_ratio`` (lam="auto" only);
      ``fwlora/importance/<module>`` at the first log
      after the importances freeze (and after each refresh) — they are constant in between;
    * writes ``fwlora_importance.json`` (phase, step, options, F and I per matrix) into each
      ``checkpoint-N`` the Trainer saves, and into ``args.output_dir`` when training ends,
      beside the adapter ``trainer.save_model()`` writes there (world process zero only);
    * hands the Trainer's fp16 GradScaler and ``gradient_accumulation_steps`` to FW-LoRA
      (so the warm-up statistic is that of the step's accumulated gradient), and refuses
      FSDP1 and DeepSpeed
      (FSDP2 is supported: docs/distributed.md).

    `weighting`: the FisherWeighting, when FW-LoRA was attached to another optimizer with
    :func:`fwlora.attach_fisher`; found in ``trainer.optimizer`` otherwise.
    """

    def __init__(
        self,
        trainer: Any,
        weighting: FisherWeighting | None = None,
        *,
        log_importances: bool = True,
        filename: str = IMPORTANCE_FILE,
    ) -> None:
        self.trainer = trainer
        self.log_importances = log_importances
        self.filename = filename
        self._weighting = weighting
        self._in_log = False
        self._logged_importance: tuple[float, ...] | None = None

    @property
    def weighting(self) -> FisherWeighting:
        """The FisherWeighting reported on (found in the Trainer's optimizer on first use)."""
        if self._weighting is None:
            if self.trainer.optimizer is None:
                raise ValueError("FisherCallback: the Trainer has no optimizer yet")
            self._weighting = find_fisher_weighting(self.trainer.optimizer)
        return self._weighting

    def metrics(self) -> dict[str, float]:
        """What is logged now: phase, step, penalty, its gradient ratio; importances when new."""
        fw = self.weighting
        out = {
            "fwlora/phase": PHASE_CODES[fw.phase],
            "fwlora/step": float(fw.step),
            "fwlora/penalty": float(fw.penalty_value()),
        }
        ratio = fw.penalty_grad_ratio
        if ratio is not None:
            out["fwlora/penalty_grad_ratio"] = ratio
        if fw.lam is not None:  # None: lam="auto" before its calibration
            out["fwlora/lam"] = fw.lam
        if fw.target_ratio is not None:
            out["fwlora/target_ratio"] = fw.target_ratio
        importance = fw.importance
        if self.log_importances and importance is not None:
            values = tuple(importance.values())
            if values != self._logged_importance:
                self._logged_importance = values
                for name, value in importance.items():
                    out[f"fwlora/importance/{name.removeprefix(_PEFT_PREFIX)}"] = value
        return out

    # ------------------------------------------------------------------ events
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        trainer = self.trainer
        _refuse_flat_sharding(trainer)
        fw = self.weighting
        scaler = getattr(getattr(trainer, "accelerator", None), "scaler", None)
        if scaler is not None:
            fw.use_grad_scaler(scaler)
        # N backward passes per optimizer step: the statistic of the accumulated gradient.
        fw.set_accumulation_steps(max(1, int(args.gradient_accumulation_steps)))
        self._logged_importance = None

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        # Only the Trainer's training logs (with "loss"); not eval, not our own log below.
        if self._in_log or not logs or "loss" not in logs:
            return
        metrics = self.metrics()
        self._in_log = True
        try:
            self.trainer.log(metrics)
        finally:
            self._in_log = False

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        folder = os.path.join(_output_dir(args), f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            save_importances(self.weighting, folder, self.filename)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero:
            save_importances(self.weighting, _output_dir(args), self.filename)
