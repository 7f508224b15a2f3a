"""lam="auto": λ calibrated once to a target ratio ‖∇P‖ / ‖∇L_task‖ over the LoRA factors.

At the first penalised step (K + 1), before the penalty is added:

    λ = target_ratio · ‖∇L_task‖ / ‖∇P_{λ=1}‖

where ∇L_task is the step's own gradient of the LoRA factors (accumulated, averaged over
ranks, unscaled: what the optimizer is about to apply) and ∇P_{λ=1} the gradient of
Σ_m (1 − I_m)·‖ΔW_m‖²_F at full strength (schedule scale 1, even under schedule="ramp"). The
Rust core computes and holds λ (`FisherCore.calibrate`); from then on λ is a constant, exactly
as if the user had passed it, and nothing here runs again.

Why the step's own gradient and not a running average over warm-up: see docs/method.md
(the spread of λ over seeds, measured by benches/calibration_study.py). The step's own makes
the calibration exact (the ratio at the calibration step is the target) with no extra state
and no cost during warm-up.

Edge cases: a step whose task gradient is 0 or not finite, or whose penalty gradient is 0
(ΔW = 0 for every penalised matrix, or every 1 − I_m = 0), gives no λ; the step is taken
without penalty, a warning says so once, and the next step tries again. A step a GradScaler
skips never reaches the optimizer, so it is not a calibration step.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fwlora.optim.distributed import sq_norm_sum

# ‖∇P‖/‖∇L_task‖ at the calibration step when lam="auto" and no target_ratio is given; see
# docs/method.md for the measurements behind it (benches/results/calibration.md).
DEFAULT_TARGET_RATIO = 0.1
MAX_TARGET_RATIO = 10.0


def check_strength(lam: Any, target_ratio: Any, penalty: str) -> float | None:
    """The target ratio in effect for these options (None when λ is set by hand)."""
    if lam != "auto":
        if target_ratio is not None:
            raise ValueError(
                f'invalid `target_ratio`: only with lam="auto" (it calibrates λ), got '
                f'target_ratio={target_ratio!r} with lam={lam!r}; pass lam="auto" or drop it'
            )
        return None
    if penalty == "decoupled":
        raise ValueError(
            "invalid `lam`: \"auto\" calibrates the penalty's gradient against the task's, "
            'and penalty="decoupled" adds no gradient (it scales AdamW\'s weight decay, whose '
            'strength is weight_decay); use penalty="coupled" with lam="auto"'
        )
    if target_ratio is None:
        return DEFAULT_TARGET_RATIO
    if not 0.0 < target_ratio <= MAX_TARGET_RATIO:
        raise ValueError(
            f"invalid `target_ratio`: expected a number in (0, {MAX_TARGET_RATIO:g}], got "
            f"{target_ratio!r}"
        )
    return float(target_ratio)


class Calibration:
    """Calibrates the core's λ at the first penalised step that allows it (lam="auto")."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    @torch.no_grad()
    def try_calibrate(
        self, core: Any, penalty: Any, factors: Sequence[torch.Tensor], step: int
    ) -> bool:
        """Sets λ in `core` from this step's gradients; True when it did.

        Call before the penalty is added, at a penalised step, while `core.lam` is None. On
        success the penalty's factors are λ·(1 − I_m); otherwise nothing changed.
        """
        task_sq = sq_norm_sum(p.grad for p in factors if p.grad is not None)
        weights = 1.0 - np.asarray(core.importance)
        unit_sq = _unit_penalty_sq(penalty, factors, weights)
        if task_sq is None:
            task_sq = torch.zeros((), dtype=torch.float64, device=unit_sq.device)
        task, unit = torch.stack([task_sq.to(unit_sq.device), unit_sq]).tolist()  # one sync
        if not (np.isfinite(task) and task > 0.0):
            self._warn_once(
                "task",
                f'FW-LoRA lam="auto": the task gradient of the LoRA factors is {task**0.5:g} '
                f"at step {step}, so λ cannot be calibrated there; the step is taken without "
                "penalty and the next one tries again (warned once)",
            )
            return False
        lam = core.calibrate(task, unit)
        if lam is None:
            self._warn_once(
                "penalty",
                f'FW-LoRA lam="auto": the penalty\'s gradient is {unit**0.5:g} at step {step} '
                "(ΔW = 0 for every penalised matrix, or every 1 - I_m = 0), so there is nothing "
                "to calibrate λ against; calibration moves to the first step where it is not 0 "
                "(warned once)",
            )
            return False
        penalty.set_factors(core.base_factors())
        return True

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)


def _unit_penalty_sq(
    penalty: Any, factors: Sequence[torch.Tensor], weights: np.ndarray
) -> torch.Tensor:
    """‖∇P‖² at λ = 1, full strength, with the task gradients set aside and restored untouched.

    The penalty's gradient is written into empty .grad slots (so it is read, not mixed with
    the task's), measured, and the task gradients are put back, bit for bit.
    """
    saved = [p.grad for p in factors]
    for p in factors:
        p.grad = None
    try:
        penalty.set_factors(weights)
        unit_sq = penalty.add_gradients(1.0, measure=True)
    finally:
        for p, g in zip(factors, saved):
            p.grad = g
    assert unit_sq is not None
    return unit_sq.to(torch.float64)
