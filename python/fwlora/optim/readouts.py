"""What FW-LoRA reports, written once for `FisherWeighting` and `FisherAdamW` (which reads
them off its FisherWeighting): phase, F and I per matrix, λ in effect, the penalty's
strength and value, and a JSON export of all of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fwlora.optim.weighting import FisherWeighting


class ReadOuts:
    """Read-outs of the FisherWeighting that `_weighting` returns."""

    @property
    def _weighting(self) -> FisherWeighting:
        raise NotImplementedError

    @property
    def phase(self) -> str:
        """ "warmup", "frozen", or "refreshing" (refresh_every > 0, after warm-up).

        Exact without a flush: rows are flushed exactly when the core's update is due.
        """
        return self._weighting.core.phase

    @property
    def importance(self) -> dict[str, float] | None:
        """{module name: I_m}, None during warm-up."""
        fw = self._weighting
        imp = fw.core.importance
        return None if imp is None else dict(zip(fw.names, imp.tolist()))

    @property
    def fisher(self) -> dict[str, float]:
        """{module name: F_m}, the current Fisher EMA."""
        fw = self._weighting
        fw.flush()
        return dict(zip(fw.names, fw.core.fisher.tolist()))

    @property
    def skipped(self) -> int:
        """Warm-up steps whose statistic was not finite (left out of the EMA)."""
        fw = self._weighting
        fw.flush()
        return fw.core.skipped

    @property
    def lam(self) -> float | None:
        """λ in effect: as given, or with lam="auto" the calibrated one (None until then)."""
        return self._weighting.core.lam

    @property
    def target_ratio(self) -> float | None:
        """lam="auto": the ‖∇P‖/‖∇L_task‖ λ is calibrated to; None when λ is set by hand."""
        return self._weighting.core.target_ratio

    @property
    def penalty_grad_ratio(self) -> float | None:
        """‖∇P‖ / ‖∇L_task‖ over all LoRA factors at the latest measured penalised step (None
        before the first, and with penalty="decoupled", which adds no gradient). Measured:
        the first `ratio_every` penalised steps, then every `ratio_every`-th
        (`penalty_grad_ratio_steps()`)."""
        return self._weighting.strength.latest()

    def penalty_grad_ratios(self) -> list[float]:
        """‖∇P‖ / ‖∇L_task‖ of every measured penalised step so far (one host transfer)."""
        return self._weighting.strength.history()

    def penalty_grad_ratio_steps(self) -> list[int]:
        """The optimizer step of each value in `penalty_grad_ratios()`."""
        return self._weighting.strength.steps()

    def penalty_value(self) -> torch.Tensor:
        """The penalty term the next step adds to the objective, at the current weights:
        scale(t + 1)·λ·Σ_m (1 - I_m)·‖ΔW_m‖²_F (the schedule's scale, 0 during warm-up); no
        host sync. 0 with penalty="decoupled", which adds no term (its decay acts in the update).

        Under FSDP2 this is a collective (an r × r all-reduce and an all-gather of A per
        shape): call it on every rank."""
        fw = self._weighting
        factors = fw.core.base_factors()
        scale = fw.core.schedule_scale(fw.step + 1)
        if factors is None or scale == 0.0 or fw.options.penalty == "decoupled":
            return torch.zeros((), device=fw.matrices[0].lora_A.device)
        return fw.penalty.value(factors) * scale

    def summary(self) -> dict[str, Any]:
        """Phase, step, options, F and I per matrix: plain JSON-able values."""
        fw = self._weighting
        return {
            "phase": self.phase,
            "step": fw.step,
            "skipped_observations": self.skipped,
            "options": fw.options.to_dict(),
            "lam": self.lam,
            "target_ratio": self.target_ratio,
            "penalty_grad_ratio": self.penalty_grad_ratio,
            "fisher": self.fisher,
            "importance": self.importance,
        }

    def export_json(self, path: str | Path) -> Path:
        """Writes phase, step, options, λ in effect and target ratio, F and I per matrix as
        JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary(), indent=2))
        return path
