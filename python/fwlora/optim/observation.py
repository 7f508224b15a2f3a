"""Observation: FW-LoRA's Rust-backed state and the warm-up rows on their way into it.

The Rust core (`FisherCore`) holds the step counter, the phase, F and I. During warm-up each
step's g_m (M floats) is measured on the device — by the gradient hooks of
`GradientStatistics`, or from the LoRA gradients (``estimator="adapter"``) — averaged over
ranks, and kept on the device until it is flushed: every `flush_every` steps, and exactly when
the core's next update is due, so no warm-up step waits on a host sync and rows never wait
past a phase change. Every step reaches the core, as an observation while it is observing,
through `advance()` once frozen.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fwlora._core import FisherCore
from fwlora.optim.adapter_estimate import adapter_estimate
from fwlora.optim.collectives import is_dtensor, mean_over_ranks
from fwlora.optim.options import FisherOptions
from fwlora.optim.statistics import GradientStatistics
from fwlora.optim.targets import AdapterMatrix


class Observation:
    """The core, the warm-up statistic and the rows not yet in the core, for `matrices`
    (a list shared with the owner: replaced in place when FSDP2 re-adoption happens)."""

    def __init__(self, matrices: list[AdapterMatrix], options: FisherOptions) -> None:
        self.matrices = matrices
        self.options = options
        self.core = FisherCore(len(matrices), **options.core_options())
        self.statistics = self.new_statistics()
        self.rows: list[torch.Tensor] = []  # observed rows not yet in the core
        self.first_row_checked = False
        self.adapter_row: torch.Tensor | None = None  # estimator="adapter": this step's ĝ
        self.grad_scaler: Any = None

    def new_statistics(self) -> GradientStatistics:
        o = self.options
        return GradientStatistics(
            self.matrices,
            "exact" if o.estimator == "adapter" else o.estimator,  # adapter: never attached
            o.sketch_dim,
            o.seed,
            accumulation_steps=o.accumulation_steps,
            step_of=lambda: self.step,
        )

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.matrices]

    @property
    def step(self) -> int:
        """Optimizer steps taken: the core's count plus the observations waiting for it."""
        return self.core.step + len(self.rows)

    @property
    def device(self) -> torch.device:
        # Read each time: Trainer / accelerate move the model after the optimizer is built.
        return self.matrices[0].lora_A.device

    def check_estimator(self) -> None:
        sharded = any(is_dtensor(p) for m in self.matrices for p in (m.lora_A, m.lora_B))
        if self.options.estimator == "adapter" and sharded:
            raise ValueError(
                'estimator: "adapter" reads whole LoRA factors, which FSDP2 shards; use '
                'estimator="exact" or "sketch" under FSDP2'
            )

    def sync_hooks(self) -> None:
        """The gradient hooks are on exactly while the core observes (and they are used)."""
        observing = self.core.observing and self.options.estimator != "adapter"
        if observing and not self.statistics.attached:
            self.statistics.attach()
        elif not observing and self.statistics.attached:
            self.statistics.detach()

    # ----------------------------------------------------------------- a step
    def before_update(self, grad_scale: float | None) -> None:
        """estimator="adapter" while observing: read ĝ before the update changes the factors."""
        if self.options.estimator == "adapter" and self.core.observing:
            self.adapter_row = adapter_estimate(self.matrices, grad_scale)

    def drop_step(self) -> None:
        """A step the optimizer skipped: nothing of it is recorded."""
        self.adapter_row = None
        self.statistics.drop_step()

    def after_update(self, grad_scale: float | None, zero_step: Callable[[], bool]) -> bool:
        """Counts the step; while observing, records its row. True when the phase changed
        (the owner then re-reads the importances)."""
        if not self.core.observing:  # rows never wait past a phase change (see flush)
            self.core.advance(1)
            return False
        row = mean_over_ranks(self._observed_row(grad_scale))
        if not self.first_row_checked:
            self.first_row_checked = True
            self._warn_unobserved(row, zero_step)
        self.rows.append(row)
        due = self.core.steps_until_update
        if len(self.rows) >= min(self.options.flush_every, due if due is not None else 1):
            return self.flush()
        return False

    def _observed_row(self, grad_scale: float | None) -> torch.Tensor:
        """This step's g_m (M floats on the device), from the hooks or the adapter estimate."""
        if self.options.estimator == "adapter":
            row, self.adapter_row = self.adapter_row, None
            if row is None:  # step() without before_step(): nothing was read
                row = torch.zeros(len(self.matrices), dtype=torch.float64, device=self.device)
            return row  # read off the optimizer's (already unscaled) gradients
        row = self.statistics.take_row(self.device)
        if grad_scale is not None:  # fused under a GradScaler: scale known per step
            return row / (grad_scale**2)
        scale = getattr(self.grad_scaler, "_scale", None)
        if scale is not None and self.grad_scaler.is_enabled():
            row = row / scale.to(row.device, torch.float64).square()
        return row

    def flush(self) -> bool:
        """Moves observed rows to the core (one host-device transfer for all of them); True
        when the core's phase changed or it refreshed its importances.

        Rows were already averaged over ranks (see `mean_over_ranks`): no collective here.
        """
        if not self.rows:
            return False
        rows = torch.stack([r.to(self.rows[0].device) for r in self.rows]).to(torch.float64)
        self.rows = []
        phase = self.core.phase
        before = self.core.skipped
        self.core.observe_batch(rows.cpu().numpy())
        skipped = self.core.skipped - before
        if skipped:
            warnings.warn(
                f"FW-LoRA: {skipped} warm-up step(s) had a non-finite gradient statistic and "
                f"were left out of the Fisher EMA ({self.core.skipped} in total)",
                RuntimeWarning,
                stacklevel=3,
            )
        if self.core.phase != phase:
            self._warn_zero_fisher()
        return self.core.phase != phase or self.core.phase == "refreshing"

    # ------------------------------------------------------------------ loading
    def load(self, core: FisherCore, options: FisherOptions) -> None:
        """Adopts a saved core and the options it was saved with; rows and statistics of
        the current run are dropped."""
        estimator_changed = options.estimator != self.options.estimator
        self.core.load(core)
        self.options = options
        self.rows = []
        self.first_row_checked = self.core.step > 0
        if estimator_changed:
            self.statistics.detach()
            self.statistics = self.new_statistics()
        self.statistics.reset()

    # ----------------------------------------------------------------- warnings
    def _warn_unobserved(self, row: torch.Tensor, zero_step: Callable[[], bool]) -> None:
        """One host sync, at the first observed step: names matrices no statistic reached."""
        names = self.names
        silent = [names[i] for i in torch.nonzero(row == 0).flatten().tolist()]
        if len(silent) == len(names) and zero_step():
            # torch.distributed.checkpoint's get_/set_optimizer_state_dict initialise a fresh
            # optimizer's state by one step with zero gradients at lr 0 (accelerate's and the
            # Trainer's resume under FSDP2): no backward ran, nothing to warn about.
            self.first_row_checked = False
            return
        if silent:
            warnings.warn(
                f"FW-LoRA: no gradient statistic for {len(silent)} of {len(names)} LoRA "
                f"matrices at the first warm-up step ({', '.join(silent[:4])}"
                f"{', ...' if len(silent) > 4 else ''}): their forward hooks did not run or "
                "no gradient reached them. If the model was compiled (torch.compile) before "
                "the optimizer was built, build the optimizer first (or call "
                "torch._dynamo.reset() after building it); if these modules are unused, leave "
                "them out with exclude=[...]",
                RuntimeWarning,
                stacklevel=4,
            )

    def _warn_zero_fisher(self) -> None:
        names = self.names
        zero = [n for n, f in zip(names, self.core.fisher.tolist()) if f == 0.0]
        if zero:
            warnings.warn(
                f"FW-LoRA: importances frozen with F = 0 for {len(zero)} of {len(names)} "
                f"LoRA matrices ({', '.join(zero[:4])}{', ...' if len(zero) > 4 else ''}): "
                "no warm-up step measured them, so their importance is 0 (or uniform if all "
                "are 0) and they get the full penalty. Build the optimizer before "
                "torch.compile (or call torch._dynamo.reset() after building it), or leave "
                "unused modules out with exclude=[...]",
                RuntimeWarning,
                stacklevel=4,
            )


def zero_step(optimizer: torch.optim.Optimizer | None, factors: Sequence[torch.Tensor]) -> bool:
    """Whether this step had lr 0 everywhere and all-zero LoRA gradients (torch's state
    initialisation in torch.distributed.checkpoint.state_dict)."""
    if optimizer is None or any(float(g.get("lr", 1.0)) != 0.0 for g in optimizer.param_groups):
        return False
    grads = [p.grad for p in factors if p.grad is not None]
    # This rank's shards only (no collective); the answer only decides a warning.
    local = [g.to_local() if is_dtensor(g) else g for g in grads]  # type: ignore[attr-defined]
    return not any(bool(g.any()) for g in local)
