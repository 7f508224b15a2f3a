"""FisherWeighting: the FW-LoRA mechanism, attachable to any torch optimizer.

Per optimizer step t (1-based):
  * t <= K (warm-up): the update uses L_task only; after it, g_m = ‖∂L/∂W_m‖²_F of this
    step's gradient is recorded, and F_m <- α·F_m + (1 - α)·g_m in the Rust core.
  * right after step K: I_m = F_m / Σ_k F_k (1/M if the sum is 0), frozen; the gradient
    hooks are removed (unless `refresh_every` > 0).
  * t > K: before the update, ∂/∂(A, B) of λ·Σ_m (1 - I_m)·‖ΔW_m‖²_F is added to the LoRA
    gradients (``penalty="coupled"``, as if the term were in the loss), or each adapter's
    decoupled weight decay is scaled by (1 - I_m) (``penalty="decoupled"``, the paper's
    other reading, AdamW only).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fwlora._core import FisherCore
from fwlora.optim.penalty import FisherPenalty
from fwlora.optim.statistics import GradientStatistics
from fwlora.optim.targets import find_adapter_matrices

PENALTY_MODES = ("coupled", "decoupled")
STATE_KEY = "fwlora"
STATE_FORMAT = 1


class FisherWeighting:
    """Fisher EMA warm-up, frozen importances and the Fisher-weighted penalty for `model`.

    Use :class:`fwlora.FisherAdamW` for AdamW, or attach this to any optimizer::

        fw = FisherWeighting(model, warmup=500, lam=1e-4).attach(optimizer)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        warmup: int = 500,
        lam: float = 1e-4,
        alpha: float = 0.98,
        normalization: str = "sum",
        penalty: str = "coupled",
        estimator: str = "exact",
        sketch_dim: int = 8,
        schedule: str = "constant",
        ramp_steps: int = 0,
        refresh_every: int = 0,
        flush_every: int = 32,
        sync_ranks: bool = True,
        seed: int = 0,
    ) -> None:
        _check_number("warmup", warmup, integer=True, minimum=1)
        _check_number("lam", lam, minimum=0.0)
        _check_number("flush_every", flush_every, integer=True, minimum=1)
        _check_number("sketch_dim", sketch_dim, integer=True, minimum=1)
        if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
            raise ValueError(f"alpha: expected a float strictly between 0 and 1, got {alpha!r}")
        if penalty not in PENALTY_MODES:
            raise ValueError(f"penalty: expected one of {PENALTY_MODES}, got {penalty!r}")
        self.matrices = find_adapter_matrices(model)
        # The core validates the rest (normalization, schedule, ramp_steps, refresh_every).
        self.core = FisherCore(
            len(self.matrices),
            alpha=float(alpha),
            warmup=int(warmup),
            lam=float(lam),
            normalization=normalization,
            schedule=schedule,
            ramp_steps=int(ramp_steps),
            refresh_every=int(refresh_every),
        )
        self.penalty_mode = penalty
        self.flush_every = int(flush_every)
        self.sync_ranks = sync_ranks
        self.statistics = GradientStatistics(self.matrices, estimator, int(sketch_dim), seed)
        self.penalty = FisherPenalty(self.matrices)
        self.step = 0  # optimizer steps taken
        self._rows: list[torch.Tensor] = []  # observed rows not yet in the core
        self._grad_scaler: Any = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._handles: list = []
        self._pending_load: tuple[dict, FisherCore] | None = None
        self._checked_sharding = False
        _refuse_sharding(self.matrices)

    @property
    def _device(self) -> torch.device:
        # Read each time: Trainer / accelerate move the model after the optimizer is built.
        return self.matrices[0].lora_A.device

    # ----------------------------------------------------------------- read-outs
    @property
    def names(self) -> list[str]:
        return [m.name for m in self.matrices]

    @property
    def phase(self) -> str:
        return self.core.phase

    @property
    def importance(self) -> dict[str, float] | None:
        imp = self.core.importance
        return None if imp is None else dict(zip(self.names, imp.tolist()))

    @property
    def fisher(self) -> dict[str, float]:
        self.flush()
        return dict(zip(self.names, self.core.fisher.tolist()))

    @property
    def skipped(self) -> int:
        self.flush()
        return self.core.skipped

    def penalty_value(self) -> torch.Tensor:
        """λ·Σ_m (1 - I_m)·‖ΔW_m‖²_F at the current weights (0 during warm-up); no host sync."""
        factors = self.core.base_factors()
        if factors is None:
            return torch.zeros((), device=self._device)
        return self.penalty.value(factors)

    def summary(self) -> dict[str, Any]:
        """Phase, step, configuration, F and I per matrix: plain JSON-able values."""
        core = self.core
        return {
            "phase": self.phase,
            "step": self.step,
            "skipped_observations": self.skipped,
            "config": {
                "warmup": core.warmup,
                "lam": core.lam,
                "alpha": core.alpha,
                "normalization": core.normalization,
                "schedule": core.schedule,
                "ramp_steps": core.ramp_steps,
                "refresh_every": core.refresh_every,
                "penalty": self.penalty_mode,
                "estimator": self.statistics.estimator,
            },
            "fisher": self.fisher,
            "importance": self.importance,
        }

    def export_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary(), indent=2))
        return path

    # ------------------------------------------------------------- integration
    def attach(self, optimizer: torch.optim.Optimizer) -> FisherWeighting:
        """Hooks this mechanism into `optimizer.step()` and its state dict; returns self."""
        self.bind(optimizer)
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step_hook),
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step()),
            optimizer.register_state_dict_post_hook(self._state_dict_hook),
            optimizer.register_load_state_dict_pre_hook(self._load_pre_hook),
            optimizer.register_load_state_dict_post_hook(self._load_post_hook),
        ]
        return self

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        """Checks that `optimizer` updates every LoRA factor; starts observing."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [
            m.name for m in self.matrices if id(m.lora_A) not in owned or id(m.lora_B) not in owned
        ]
        if missing:
            raise ValueError(
                f"optimizer: does not update the LoRA factors of {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}; build it from the same model"
            )
        if self.penalty_mode == "decoupled" and not _decoupled_decay(optimizer):
            raise ValueError(
                'penalty: "decoupled" scales AdamW\'s decoupled weight decay; '
                f'{type(optimizer).__name__} has none, use penalty="coupled"'
            )
        self._optimizer = optimizer
        self._sync_phase()

    def use_grad_scaler(self, scaler: Any) -> None:
        """Statistics are taken on unscaled gradients: pass the fp16 GradScaler in use."""
        self._grad_scaler = scaler

    def detach(self) -> None:
        """Removes every hook this object placed on the model and the optimizer."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.statistics.detach()

    # ------------------------------------------------------------------ stepping
    def _pre_step_hook(self, optimizer, args, kwargs) -> None:
        # accelerate and GradScaler call step(None): a closure passed as None is no closure.
        if any(a is not None for a in args[1:]) or kwargs.get("closure") is not None:
            raise ValueError(
                "closure: FisherWeighting attached by hooks adds the penalty before "
                "step() runs, so it cannot see gradients a closure computes; call backward "
                "before step(), or use FisherAdamW, which supports closures"
            )
        self.before_step()

    @torch.no_grad()
    def before_step(self) -> None:
        """Adds the penalty for the step about to be taken (nothing during warm-up)."""
        if not self._checked_sharding:
            # FSDP / DeepSpeed wrap the model after the optimizer is built: check once, here.
            _refuse_sharding(self.matrices, self._optimizer)
            self._checked_sharding = True
        upcoming = self.step + 1
        scale = self.core.schedule_scale(upcoming)
        if scale == 0.0:
            return
        if self.penalty_mode == "coupled":
            if self.core.lam > 0.0:
                self.penalty.add_gradients(scale)
        else:
            self._scale_decoupled_decay(scale)

    @torch.no_grad()
    def after_step(self) -> None:
        """Records this step's statistics; freezes the importances right after step K."""
        self.step += 1
        if self.statistics.attached:
            row = self.statistics.take_row(self._device)
            scale = getattr(self._grad_scaler, "_scale", None)
            if scale is not None and self._grad_scaler.is_enabled():
                row = row / scale.to(row.device, torch.float64).square()
            self._rows.append(self._mean_over_ranks(row))
            self.statistics.step = self.step
            k, refresh = self.core.warmup, self.core.refresh_every
            boundary = self.step == k or (
                refresh and self.step > k and (self.step - k) % refresh == 0
            )
            if boundary or (self.step < k and len(self._rows) >= self.flush_every):
                self.flush()

    def _mean_over_ranks(self, row: torch.Tensor) -> torch.Tensor:
        """Σ over ranks / world of this step's row (`sync_ranks`, torch.distributed only).

        Done every observed step, inside step() where every rank is, so that flush() (and
        so state_dict() and the read-outs, which the Trainer calls on rank 0 only) never
        runs a collective. M floats per warm-up step; asynchronous on NCCL.
        """
        if not (
            self.sync_ranks
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            return row
        world = torch.distributed.get_world_size()
        if world == 1:
            return row
        torch.distributed.all_reduce(row)
        return row / world

    def flush(self) -> None:
        """Moves observed rows to the core (one host-device transfer for all of them).

        Rows were already averaged over ranks (see `_mean_over_ranks`): no collective here.
        """
        if not self._rows:
            return
        rows = torch.stack([r.to(self._rows[0].device) for r in self._rows]).to(torch.float64)
        self._rows = []
        was_frozen = self.core.phase == "frozen"
        before = self.core.skipped
        self.core.observe_batch(rows.cpu().numpy())
        skipped = self.core.skipped - before
        if skipped:
            warnings.warn(
                f"FW-LoRA: {skipped} warm-up step(s) had a non-finite gradient statistic and "
                f"were left out of the Fisher EMA ({self.core.skipped} in total)",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.core.phase == "frozen" and (not was_frozen or self.core.refresh_every):
            self._sync_phase()

    def _sync_phase(self) -> None:
        """Hooks on while observing; factors cached on the device once frozen."""
        observing = self.core.phase == "warmup" or self.core.refresh_every > 0
        if observing and not self.statistics.attached:
            self.statistics.step = self.step
            self.statistics.attach()
        elif not observing and self.statistics.attached:
            self.statistics.detach()
        factors = self.core.base_factors()
        if factors is not None:
            self.penalty.set_factors(factors)
            imp = self.core.importance
            self._decay_weights = (1.0 - np.asarray(imp)).tolist()

    def _scale_decoupled_decay(self, scale: float) -> None:
        # AdamW multiplies p by (1 - lr·wd) before its Adam update, which does not read p.
        # Pre-multiplying by (1 - lr·wd·(1 - I)·scale) / (1 - lr·wd) gives exactly that
        # decay with wd scaled by (1 - I_m) for this adapter's factors.
        assert self._optimizer is not None
        params, ratios = [], []
        group_of = {id(p): g for g in self._optimizer.param_groups for p in g["params"]}
        for matrix, weight in zip(self.matrices, self._decay_weights):
            for p in (matrix.lora_A, matrix.lora_B):
                group = group_of[id(p)]
                lr_wd = float(group["lr"]) * float(group["weight_decay"])
                if lr_wd == 0.0:
                    continue
                if lr_wd >= 1.0:
                    raise ValueError(f"lr * weight_decay = {lr_wd} >= 1: decay would flip signs")
                params.append(p)
                ratios.append((1.0 - lr_wd * weight * scale) / (1.0 - lr_wd))
        if params:
            torch._foreach_mul_(params, ratios)

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {
            "format": STATE_FORMAT,
            "matrices": self.names,
            "step": self.step,
            "core": self.core.to_dict(),
            "penalty": self.penalty_mode,
            "estimator": self.statistics.estimator,
        }

    def validate_state_dict(self, state: Any) -> FisherCore:
        """Checks `state` fits this model; returns the core it holds. Changes nothing."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"state_dict: expected a FisherWeighting state (format {STATE_FORMAT}), "
                f"got {type(state).__name__}"
            )
        names = state.get("matrices")
        if names != self.names:
            ours, theirs = set(self.names), set(names or [])
            raise ValueError(
                "state_dict: saved for other LoRA matrices "
                f"({len(theirs)} vs {len(ours)}; only in saved: {sorted(theirs - ours)[:3]}, "
                f"only in model: {sorted(ours - theirs)[:3]})"
            )
        core = FisherCore.from_dict(state.get("core"))
        step = state.get("step")
        if not isinstance(step, int) or step < core.step:
            raise ValueError(f"state_dict: bad step {step!r} for a core at step {core.step}")
        return core

    def load_state_dict(self, state: dict[str, Any]) -> None:
        core = self.validate_state_dict(state)
        self._commit_load(state, core)

    def _commit_load(self, state: dict[str, Any], core: FisherCore) -> None:
        self.core.load(core)
        self.step = state["step"]
        self.penalty_mode = state.get("penalty", self.penalty_mode)
        self._rows = []
        self.statistics.reset()
        self.statistics.step = self.step
        self._sync_phase()

    def _state_dict_hook(self, optimizer, state_dict):
        state_dict[STATE_KEY] = self.state_dict()
        return state_dict

    def _load_pre_hook(self, optimizer, state_dict):
        if STATE_KEY not in state_dict:
            raise ValueError(
                f"state_dict: no {STATE_KEY!r} entry; it was not saved by an optimizer with "
                "FW-LoRA attached"
            )
        self._pending_load = (
            state_dict[STATE_KEY],
            self.validate_state_dict(state_dict[STATE_KEY]),
        )
        return None

    def _load_post_hook(self, optimizer):
        if self._pending_load is not None:
            state, core = self._pending_load
            self._pending_load = None
            self._commit_load(state, core)


def _check_number(name: str, value: Any, *, integer: bool = False, minimum: float) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and not integer:
        ok = math.isfinite(value)
    if not ok or value < minimum:
        what = "an integer" if integer else "a finite number"
        raise ValueError(f"{name}: expected {what} >= {minimum}, got {value!r}")


_TRUE = {"1", "true", "yes", "y", "on"}


def _refuse_sharding(matrices, optimizer: torch.optim.Optimizer | None = None) -> None:
    """ValueError under FSDP or DeepSpeed, whose sharded parameters the hooks cannot see.

    FW-LoRA reads and writes `lora_A/B.grad` of the very parameters it found in the model and
    keeps their statistics per rank; FSDP (flat or DTensor shards) and DeepSpeed ZeRO (flat
    fp32 partitions inside its own optimizer) update other tensors. Plain DDP is supported.
    """
    hint = (
        "FW-LoRA supports single-device and DistributedDataParallel training (torchrun, "
        "accelerate launch without --use_fsdp/--use_deepspeed); LoRA adapters are small, so "
        "replicate them with DDP instead"
    )
    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            raise ValueError(f"{name}: not supported ({var} is set). {hint}")
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        DTensor = ()
    for m in matrices:
        for p in (m.lora_A, m.lora_B):
            if isinstance(p, DTensor):
                raise ValueError(f"FSDP: {m.name} holds sharded (DTensor) LoRA factors. {hint}")
            if hasattr(p, "ds_id") or hasattr(p, "ds_numel"):
                raise ValueError(f"DeepSpeed: {m.name} holds ZeRO-partitioned factors. {hint}")
    if optimizer is not None:
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if any(id(m.lora_A) not in owned or id(m.lora_B) not in owned for m in matrices):
            raise ValueError(
                "optimizer: no longer updates the LoRA factors FW-LoRA found in the model "
                "(FSDP or DeepSpeed replaced them with flat shards?). " + hint
            )


def _decoupled_decay(optimizer: torch.optim.Optimizer) -> bool:
    if isinstance(optimizer, torch.optim.AdamW):
        return True
    return all(g.get("decoupled_weight_decay", False) for g in optimizer.param_groups)
