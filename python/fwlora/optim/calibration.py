"""lam="auto": λ calibrated once to a target ratio ‖∇P‖ / ‖∇L_task‖ over the LoRA factors.

At the first penalised step c (K + 1 unless an edge case below moves it), before the penalty
is added:

    λ = target_ratio · sqrt(Ĝ) / ‖∇P_{λ=1}‖

where Ĝ is the running average of ‖∇L_task‖² over the LoRA factors at steps 1..c-1 (an EMA
with the Fisher α, bias-corrected: Ĝ = E / (1 − α^n) over the n finite observations), taken
from the gradients each step applies (accumulated, averaged over ranks, unscaled), and
∇P_{λ=1} is the gradient of Σ_m (1 − I_m)·‖ΔW_m‖²_F at step c's weights, at full strength
(schedule scale 1, even under schedule="ramp"). So at step c the measured ratio is
target_ratio · sqrt(Ĝ) / ‖∇L_task,c‖. The Rust core computes and holds λ
(`FisherCore.calibrate`); from then on λ is a constant, exactly as if the user had passed it,
and nothing here runs again.

Why an average over warm-up and not step c's own norm: on the offline MiniLM-L6 task the λ
it gives varies less over seeds (coefficient of variation 0.22 vs 0.33 over 6 seeds;
benches/calibration_study.py, docs/method.md); a single batch's gradient norm is noisy.

Edge cases: a step whose task gradient is 0 or not finite, or whose penalty gradient is 0
(ΔW = 0 for every penalised matrix, or every 1 − I_m = 0), gives no λ; the step is taken
without penalty, a warning says so once, and the next step tries again (its task gradient
joins the average). A step a GradScaler skips never reaches the optimizer, so it is neither
averaged nor a calibration step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fwlora._core import MAX_TARGET_RATIO  # the limit, defined once in the Rust core
from fwlora.optim.collectives import sq_norm_sum

# ‖∇P‖/‖∇L_task‖ at the calibration step when lam="auto" and no target_ratio is given; see
# docs/method.md for the measurements behind it (benches/results/calibration.md).
DEFAULT_TARGET_RATIO = 0.1


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
    """lam="auto": the task-gradient average before calibration, and the calibration."""

    def __init__(self) -> None:
        self._warned: set[str] = set()
        # E and Σ weights of the EMA of ‖∇L_task‖², on the device (no host sync per step).
        self._ema: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None

    @torch.no_grad()
    def before_step(
        self,
        core: Any,
        penalty: Any,
        factors: Sequence[torch.Tensor],
        step: int,
        alpha: float,
        penalised: bool,
        grad_scale: float | None = None,
    ) -> bool:
        """At optimizer step `step` while `core.lam` is None, before any penalty: calibrates
        λ when `penalised` and this step allows it (True then), else averages this step's
        task gradient in for a later calibration."""
        task_sq = sq_norm_sum(p.grad for p in factors if p.grad is not None)
        if task_sq is not None and grad_scale is not None:  # fused under a GradScaler
            task_sq = task_sq / (grad_scale**2)
        if penalised and self._calibrate(core, penalty, factors, step, task_sq):
            return True
        if task_sq is not None:
            self._observe(task_sq.to(torch.float64), alpha)
        return False

    def _observe(self, task_sq: torch.Tensor, alpha: float) -> None:
        if self._ema is None or self._weight is None:
            self._ema = torch.zeros((), dtype=torch.float64, device=task_sq.device)
            self._weight = torch.zeros_like(self._ema)
        # (the model may have moved since: Trainer and accelerate move it after construction)
        self._ema, self._weight = self._ema.to(task_sq.device), self._weight.to(task_sq.device)
        finite = torch.isfinite(task_sq)
        self._ema = torch.where(finite, alpha * self._ema + (1 - alpha) * task_sq, self._ema)
        self._weight = torch.where(finite, alpha * self._weight + (1 - alpha), self._weight)

    def _calibrate(
        self,
        core: Any,
        penalty: Any,
        factors: Sequence[torch.Tensor],
        step: int,
        task_sq: torch.Tensor | None,
    ) -> bool:
        weights = 1.0 - np.asarray(core.importance)
        unit_sq = _unit_penalty_sq(penalty, factors, weights)
        zero = torch.zeros((), dtype=torch.float64, device=unit_sq.device)
        values = [task_sq, self._ema, self._weight]
        task, ema, weight, unit = torch.stack(  # one host sync
            [zero if v is None else v.to(zero) for v in values] + [unit_sq]
        ).tolist()
        average = ema / weight if weight > 0 else float("nan")
        if not (np.isfinite(task) and task > 0.0 and np.isfinite(average) and average > 0.0):
            self._warn_once(
                "task",
                f'FW-LoRA lam="auto": the task gradient of the LoRA factors is {task**0.5:g} '
                f"at step {step} (average so far {average**0.5:g}), so λ cannot be calibrated "
                "there; the step is taken without penalty and the next one tries again "
                "(warned once)",
            )
            return False
        if core.calibrate(average, unit) is None:
            self._warn_once(
                "penalty",
                f'FW-LoRA lam="auto": the penalty\'s gradient is {unit**0.5:g} at step {step} '
                "(ΔW = 0 for every penalised matrix, or every 1 - I_m = 0), so there is nothing "
                "to calibrate λ against; calibration moves to the first step where it is not 0 "
                "(warned once)",
            )
            return False
        penalty.set_factors(core.base_factors())
        self._ema = self._weight = None  # not needed any more
        return True

    def state_dict(self) -> dict[str, float] | None:
        """The task-gradient average (plain floats; one host sync), None when empty."""
        if self._ema is None or self._weight is None:
            return None
        ema, weight = torch.stack([self._ema, self._weight]).tolist()
        return {"task_sq_ema": ema, "weight": weight}

    def load_state_dict(self, state: Any, device: torch.device) -> None:
        """Adopts `state_dict()`'s value (None: empty); check it first with `check_state`."""
        self._ema = self._weight = None
        if state is not None:
            self._ema = torch.tensor(state["task_sq_ema"], dtype=torch.float64, device=device)
            self._weight = torch.tensor(state["weight"], dtype=torch.float64, device=device)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=5)


def check_state(state: Any) -> None:
    """ValueError unless `state` is None or a `Calibration.state_dict()` value."""
    if state is None:
        return
    ok = isinstance(state, dict) and set(state) == {"task_sq_ema", "weight"}
    ok = ok and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in state.values()
    )
    if not ok:
        raise ValueError(
            "state_dict: the FW-LoRA entry's 'calibration' must be None or "
            f"{{'task_sq_ema': float >= 0, 'weight': float >= 0}}, got {state!r}"
        )


def _unit_penalty_sq(
    penalty: Any, factors: Sequence[torch.Tensor], weights: np.ndarray
) -> torch.Tensor:
    """‖∇P‖² at λ = 1, full strength, with the task gradients set aside and restored untouched.

    The penalty's gradient is written into zeroed .grad slots (so it is read, not mixed with
    the task's), measured, and the task gradients are put back, bit for bit. Only the factors
    that have a gradient this step take the penalty (see `FisherPenalty.add_gradients`), so
    only they are measured.
    """
    saved = [p.grad for p in factors]
    for p, g in zip(factors, saved):
        p.grad = None if g is None else torch.zeros_like(g)
    try:
        penalty.set_factors(weights)
        unit_sq = penalty.add_gradients(1.0, measure=True)
    finally:
        for p, g in zip(factors, saved):
            p.grad = g
    assert unit_sq is not None
    return unit_sq.to(torch.float64)
