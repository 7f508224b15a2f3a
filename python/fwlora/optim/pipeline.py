"""StepPipeline: what FW-LoRA does to the step about to be taken, once importances exist.

In order, before the optimizer's update of step t > K:
  1. calibration (``lam="auto"``): λ calibrated once, at the first penalised step that allows
     it (`Calibration`);
  2. the schedule's scale of the penalty at t (the Rust core's, times the GradScaler's scale
     while the gradients are still scaled);
  3. the penalty: ∂/∂(A, B) of λ·Σ_m (1 − I_m)·‖ΔW_m‖²_F added to the LoRA gradients
     (``penalty="coupled"``, `FisherPenalty`), or AdamW's decoupled weight decay of each
     adapter scaled by (1 − I_m) (``penalty="decoupled"``);
  4. strength: ‖∇P‖ / ‖∇L_task‖ on the steps `PenaltyStrength` measures.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from fwlora._core import FisherCore
from fwlora.optim.calibration import Calibration
from fwlora.optim.decoupled import scale_decoupled_decay
from fwlora.optim.options import FisherOptions
from fwlora.optim.penalty import FisherPenalty
from fwlora.optim.strength import PenaltyStrength
from fwlora.optim.targets import AdapterMatrix


class StepPipeline:
    """The penalty side of FW-LoRA for `matrices` (re-bound by `adopt` after FSDP2)."""

    def __init__(self, matrices: list[AdapterMatrix], ratio_every: int) -> None:
        self.strength = PenaltyStrength(ratio_every)
        self.calibration = Calibration()
        self.warned_overflow = False
        self.adopt(matrices)

    def adopt(self, matrices: list[AdapterMatrix]) -> None:
        """Binds to these matrices' factors (at construction, and after FSDP2 replaced them)."""
        self.matrices = matrices
        self.penalty = FisherPenalty(matrices)
        self.factors = [p for m in matrices for p in (m.lora_A, m.lora_B)]
        self.decay_weights: list[float] = []

    def set_importances(self, core: FisherCore, options: FisherOptions) -> None:
        """Caches the penalty factors λ·(1 − I_m) on the device once importances exist."""
        factors = core.base_factors()
        if factors is None:
            return
        self.penalty.set_factors(factors)
        self.decay_weights = (1.0 - np.asarray(core.importance)).tolist()
        if options.penalty != "decoupled":
            self._warn_overflow(core, factors)

    def before_update(
        self,
        core: FisherCore,
        options: FisherOptions,
        optimizer: torch.optim.Optimizer | None,
        step: int,
        grad_scale: float | None,
    ) -> None:
        """Steps 1-4 above for optimizer step `step` (1-based); nothing during warm-up."""
        scale = core.schedule_scale(step)
        if core.lam is None:  # lam="auto": calibrated at the first penalised step that allows it
            calibrated = self.calibration.before_step(
                core,
                self.penalty,
                self.factors,
                step,
                core.alpha,
                penalised=scale > 0.0,
                grad_scale=grad_scale,
            )
            if not calibrated:
                return
        if scale == 0.0:
            return
        if grad_scale is not None:  # the gradients are still scaled: so is ∇P
            scale = scale * grad_scale
        if options.penalty == "decoupled":
            assert optimizer is not None
            scale_decoupled_decay(optimizer, self.matrices, self.decay_weights, scale)
        elif core.lam:
            self._add_penalty(core, scale, step, options.warmup)

    def _add_penalty(self, core: FisherCore, scale: float, step: int, warmup: int) -> None:
        # ‖∇P‖ / ‖∇L_task‖ on the steps PenaltyStrength measures (the first penalised steps,
        # then every `ratio_every`-th): ‖∇L_task‖ is the one pass over the gradients it costs.
        if not self.strength.is_measured(step - warmup):
            self.penalty.add_gradients(scale)
            return
        task_sq = self.strength.grad_sq_norm(self.factors)  # before the penalty joins
        penalty_sq = self.penalty.add_gradients(scale, measure=True)
        assert penalty_sq is not None
        if step == warmup + 1:
            self._check_first_penalty(core, penalty_sq)
        self.strength.record(penalty_sq, task_sq, step)

    def _check_first_penalty(self, core: FisherCore, penalty_sq: torch.Tensor) -> None:
        """Once, at the first penalised step (one host sync): a penalty gradient whose norm
        is not finite (λ too large for the weights' dtype: AdamW then divides inf by inf, or
        stops the factors) is reported with the λ in effect."""
        if self.warned_overflow or bool(torch.isfinite(penalty_sq)):
            return
        self.warned_overflow = True
        warnings.warn(
            f"FW-LoRA: at λ={core.lam:g} the penalty's gradient is not finite at the first "
            "penalised step: the LoRA updates will be non-finite (or stop). Lower lam (or use "
            'lam="auto")',
            RuntimeWarning,
            stacklevel=5,
        )

    def _warn_overflow(self, core: FisherCore, factors: Any) -> None:
        """Once: a λ so large that a penalty coefficient 2·λ·(1 − I_m)·s² is not finite in
        the factors' dtype makes every penalised update non-finite."""
        if self.warned_overflow:
            return
        bad = []
        for m, f in zip(self.matrices, np.asarray(factors, dtype=np.float64)):
            top = float(torch.finfo(m.lora_A.dtype).max)
            if not np.isfinite(2.0 * f * m.scaling**2) or 2.0 * f * m.scaling**2 > top:
                bad.append(m.name)
        if bad:
            self.warned_overflow = True
            warnings.warn(
                f"FW-LoRA: λ={core.lam:g} makes the penalty's coefficient overflow "
                f"{self.matrices[0].lora_A.dtype} for {len(bad)} of {len(self.matrices)} LoRA "
                f"matrices ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): every "
                'penalised update will be non-finite. Lower lam (or use lam="auto")',
                RuntimeWarning,
                stacklevel=5,
            )


def amp_state(optimizer: torch.optim.Optimizer | None) -> tuple[bool, float | None]:
    """(skipped, grad scale) of the step about to be taken. torch.amp.GradScaler.step calls a
    fused optimizer's step() even after finding an inf, with `optimizer.found_inf` set (the
    optimizer then skips its update) and `optimizer.grad_scale` set while the gradients are
    still scaled (the optimizer unscales them itself). Other optimizers: (False, None), no
    host sync; under a GradScaler one sync per step, as the scaler's own update costs."""
    found = getattr(optimizer, "found_inf", None)
    if not isinstance(found, torch.Tensor):
        return False, None
    if bool(found.item()):
        return True, None
    scale = getattr(optimizer, "grad_scale", None)
    return False, float(scale.item()) if isinstance(scale, torch.Tensor) else None
