"""FisherWeighting: the FW-LoRA mechanism, attachable to any torch optimizer.

Per optimizer step t (1-based):
  * t <= K (warm-up): the update uses L_task only; after it, g_m = ‖∂L/∂W_m‖²_F of this
    step's gradient is recorded, and F_m <- α·F_m + (1 - α)·g_m in the Rust core.
  * right after step K: I_m = F_m / Σ_k F_k (1/M if the sum is 0), frozen; the gradient
    hooks are removed (unless `refresh_every` > 0).
  * t > K: before the update, ∂/∂(A, B) of λ·Σ_m (1 - I_m)·‖ΔW_m‖²_F is added to the LoRA
    gradients (``penalty="coupled"``, as if the term were in the loss), or each adapter's
    decoupled weight decay is scaled by (1 - I_m) (``penalty="decoupled"``, AdamW only).

The Rust core is the one judge of the phase and the one step counter: every step reaches it,
as an observation while it is observing, through `advance()` once frozen. Observations wait
on the device and reach the core in batches (every `flush_every` steps, and exactly when the
core's next update is due), so no warm-up step waits on the device.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fwlora._core import FisherCore
from fwlora.optim.adapter_estimate import adapter_estimate
from fwlora.optim.calibration import Calibration
from fwlora.optim.calibration import check_state as check_calibration_state
from fwlora.optim.checkpoint import (
    check_fisher_state,
    fisher_state,
    require_entry,
    with_entry,
    without_entry,
)
from fwlora.optim.decoupled import has_decoupled_decay, scale_decoupled_decay
from fwlora.optim.distributed import (
    check_sharding,
    current_matrices,
    is_dtensor,
    mean_over_ranks,
)
from fwlora.optim.options import CORE_OPTIONS, FisherOptions
from fwlora.optim.penalty import FisherPenalty
from fwlora.optim.readouts import ReadOuts
from fwlora.optim.statistics import GradientStatistics
from fwlora.optim.strength import PenaltyStrength
from fwlora.optim.targets import (
    ActiveAdapterGuard,
    AdapterMatrix,
    check_trainable,
    find_adapter_matrices,
)

# The FisherWeighting bound to an optimizer, kept on the optimizer itself: a second one would
# add the penalty twice (see `bind`).
_BOUND_ATTR = "_fwlora_weighting"


class FisherWeighting(ReadOuts):
    """Fisher EMA warm-up, frozen importances and the Fisher-weighted penalty for `model`.

    Use :class:`fwlora.FisherAdamW` for AdamW, or attach this to any optimizer::

        fw = FisherWeighting(model, warmup=500, lam=1e-4).attach(optimizer)

    Options: a :class:`~fwlora.optim.options.FisherOptions`, and/or its fields as keywords.
    """

    def __init__(
        self, model: nn.Module, options: FisherOptions | None = None, **overrides: Any
    ) -> None:
        if options is None:
            options = FisherOptions.from_kwargs(**overrides)
        elif overrides:
            options = FisherOptions.from_kwargs(**{**options.to_dict(), **overrides})
        self.options = options
        self.matrices = find_adapter_matrices(model, exclude=options.exclude)
        check_trainable(self.matrices)
        self.core = FisherCore(len(self.matrices), **options.core_options())
        self.statistics = self._new_statistics()
        self.penalty = FisherPenalty(self.matrices)
        self.strength = PenaltyStrength(options.ratio_every)
        self.calibration = Calibration()
        self._active_adapters = ActiveAdapterGuard()
        self._factors = [p for m in self.matrices for p in (m.lora_A, m.lora_B)]
        self._rows: list[torch.Tensor] = []  # observed rows not yet in the core
        self._first_row_checked = False
        self._adapter_row: torch.Tensor | None = None  # estimator="adapter": this step's ĝ
        self._decay_weights: list[float] = []
        self._grad_scaler: Any = None
        # This step under a GradScaler with a fused optimizer (see `_amp_state`).
        self._skipping = False
        self._grad_scale: float | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._handles: list[Any] = []
        self._pending_load: tuple[dict, FisherCore] | None = None
        self._checked_factors = False
        self._warned_overflow = False
        check_sharding(self.matrices)
        self._check_estimator()

    def _new_statistics(self) -> GradientStatistics:
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
    def _device(self) -> torch.device:
        # Read each time: Trainer / accelerate move the model after the optimizer is built.
        return self.matrices[0].lora_A.device

    # ----------------------------------------------------------------- read-outs
    # (the rest, shared with FisherAdamW, in readouts.ReadOuts)
    @property
    def _weighting(self) -> FisherWeighting:
        return self

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.matrices]

    @property
    def step(self) -> int:
        """Optimizer steps taken: the core's count plus the observations waiting for it."""
        return self.core.step + len(self._rows)

    # ------------------------------------------------------------- integration
    def attach(self, optimizer: torch.optim.Optimizer) -> FisherWeighting:
        """Hooks this mechanism into `optimizer.step()` and its state dict; returns self.

        Idempotent for the same optimizer; an optimizer that already has FW-LoRA (another
        FisherWeighting, or a FisherAdamW) is refused, since a second attachment would add
        the penalty twice and count every step twice."""
        if self._handles and self._optimizer is optimizer:
            return self  # already attached here: hooking twice would double λ
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
        self._check_unbound(optimizer)
        check_trainable(self.matrices)
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [
            m.name for m in self.matrices if id(m.lora_A) not in owned or id(m.lora_B) not in owned
        ]
        if missing:
            raise ValueError(
                f"optimizer: does not update the LoRA factors of {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}; build it from the same model"
            )
        _check_optimizer_fits(optimizer, self.matrices, self.options.penalty)
        self._optimizer = optimizer
        setattr(optimizer, _BOUND_ATTR, self)
        self._sync_phase()

    def _check_unbound(self, optimizer: torch.optim.Optimizer) -> None:
        """ValueError when `optimizer` already has FW-LoRA, or this object another optimizer."""
        bound = getattr(optimizer, _BOUND_ATTR, None)
        if bound is not None and bound is not self:
            way_out = (
                "FisherAdamW has FW-LoRA built in: use it as it is"
                if hasattr(optimizer, "fisher_weighting")
                else "Keep the first (attach_fisher returned it), or call its detach() first"
            )
            raise ValueError(
                f"optimizer: this {type(optimizer).__name__} already has FW-LoRA; a second "
                f"FisherWeighting would add the penalty twice and count every step twice. {way_out}"
            )
        if self._optimizer is not None and self._optimizer is not optimizer and self._handles:
            raise ValueError(
                "optimizer: this FisherWeighting is already attached to another optimizer "
                f"({type(self._optimizer).__name__}); call detach() first, or build one "
                "FisherWeighting per optimizer"
            )

    def set_accumulation_steps(self, steps: int) -> None:
        """Backward passes per optimizer step, when known only after construction (the
        Trainer's `gradient_accumulation_steps`; `FisherCallback` calls this)."""
        self.options = FisherOptions.from_kwargs(
            **{**self.options.to_dict(), "accumulation_steps": steps}
        )
        self.statistics.accumulation_steps = self.options.accumulation_steps

    def use_grad_scaler(self, scaler: Any) -> None:
        """Statistics are taken on unscaled gradients: pass the fp16 GradScaler in use."""
        self._grad_scaler = scaler

    def detach(self) -> None:
        """Removes every hook this object placed on the model and the optimizer."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._optimizer is not None and getattr(self._optimizer, _BOUND_ATTR, None) is self:
            delattr(self._optimizer, _BOUND_ATTR)  # the optimizer may take FW-LoRA again
        self.statistics.detach()

    # ------------------------------------------------------------------ stepping
    def _pre_step_hook(
        self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict[str, Any]
    ) -> None:
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
        self._active_adapters.check(self.matrices)  # set_adapter() since construction: refused
        if not self._checked_factors:
            # FSDP2 (accelerate, the Trainer) shards the model after the optimizer is built and
            # remaps the optimizer to the new parameters: adopt them; refuse anything else.
            fresh = current_matrices(self.matrices, self._optimizer)
            if fresh is not None:
                self._adopt_matrices(fresh)
            self._checked_factors = True
        self._skipping, self._grad_scale = _amp_state(self._optimizer)
        if self._skipping:  # the optimizer will skip this step: so does FW-LoRA
            return
        if self.options.estimator == "adapter" and self.core.observing:
            # Before the update: the gradients and the weights they belong to.
            self._adapter_row = adapter_estimate(self.matrices, self._grad_scale)
        scale = self.core.schedule_scale(self.step + 1)
        lam = self.core.lam
        if lam is None:  # lam="auto": calibrated at the first penalised step that allows it
            step, alpha, factors = self.step + 1, self.core.alpha, self._factors
            if not self.calibration.before_step(
                self.core,
                self.penalty,
                factors,
                step,
                alpha,
                penalised=scale > 0.0,
                grad_scale=self._grad_scale,
            ):
                return
            lam = self.core.lam
        if scale == 0.0:
            return
        if self._grad_scale is not None:  # the gradients are still scaled: so is ∇P
            scale = scale * self._grad_scale
        if self.options.penalty == "decoupled":
            assert self._optimizer is not None
            scale_decoupled_decay(self._optimizer, self.matrices, self._decay_weights, scale)
        elif lam:
            # ‖∇P‖ / ‖∇L_task‖ on the steps PenaltyStrength measures (the first penalised steps,
            # then every 16th): ‖∇L_task‖ is the one pass over the gradients it costs.
            step = self.step + 1
            if not self.strength.is_measured(step - self.options.warmup):
                self.penalty.add_gradients(scale)
                return
            task_sq = self.strength.grad_sq_norm(self._factors)  # before the penalty joins
            penalty_sq = self.penalty.add_gradients(scale, measure=True)
            assert penalty_sq is not None
            if step == self.options.warmup + 1:
                self._check_first_penalty(penalty_sq)
            self.strength.record(penalty_sq, task_sq, step)

    @torch.no_grad()
    def after_step(self) -> None:
        """Counts the step in the core; while observing, records its statistics. A step the
        optimizer skipped (GradScaler found an inf) is not counted and records nothing."""
        if self._skipping:
            self._skipping = False
            self._adapter_row = None
            self.statistics.drop_step()
            return
        if not self.core.observing:  # rows never wait past a phase change (see flush)
            self.core.advance(1)
            return
        row = self._observed_row()
        row = mean_over_ranks(row)
        if not self._first_row_checked:
            self._first_row_checked = True
            self._warn_unobserved(row)
        self._rows.append(row)
        due = self.core.steps_until_update
        if len(self._rows) >= min(self.options.flush_every, due if due is not None else 1):
            self.flush()

    def _check_estimator(self) -> None:
        sharded = any(is_dtensor(p) for m in self.matrices for p in (m.lora_A, m.lora_B))
        if self.options.estimator == "adapter" and sharded:
            raise ValueError(
                'estimator: "adapter" reads whole LoRA factors, which FSDP2 shards; use '
                'estimator="exact" or "sketch" under FSDP2'
            )

    def _observed_row(self) -> torch.Tensor:
        """This step's g_m (M floats on the device), from the hooks or the adapter estimate."""
        if self.options.estimator == "adapter":
            row, self._adapter_row = self._adapter_row, None
            if row is None:  # step() without before_step(): nothing was read
                row = torch.zeros(len(self.matrices), dtype=torch.float64, device=self._device)
            return row  # read off the optimizer's (already unscaled) gradients
        row = self.statistics.take_row(self._device)
        if self._grad_scale is not None:  # fused under a GradScaler: scale known per step
            return row / (self._grad_scale**2)
        scale = getattr(self._grad_scaler, "_scale", None)
        if scale is not None and self._grad_scaler.is_enabled():
            row = row / scale.to(row.device, torch.float64).square()
        return row

    def _adopt_matrices(self, fresh: list[AdapterMatrix]) -> None:
        self.matrices[:] = fresh  # in place: GradientStatistics holds this same list
        self._check_estimator()
        self.penalty = FisherPenalty(self.matrices)
        self._factors = [p for m in self.matrices for p in (m.lora_A, m.lora_B)]
        self._sync_phase()  # re-caches the penalty factors on the new groups

    def _warn_unobserved(self, row: torch.Tensor) -> None:
        """One host sync, at the first observed step: names matrices no statistic reached."""
        silent = [self.names[i] for i in torch.nonzero(row == 0).flatten().tolist()]
        if len(silent) == len(self.names) and _zero_step(self._optimizer, self._factors):
            # torch.distributed.checkpoint's get_/set_optimizer_state_dict initialise a fresh
            # optimizer's state by one step with zero gradients at lr 0 (accelerate's and the
            # Trainer's resume under FSDP2): no backward ran, nothing to warn about.
            self._first_row_checked = False
            return
        if silent:
            warnings.warn(
                f"FW-LoRA: no gradient statistic for {len(silent)} of {len(self.names)} LoRA "
                f"matrices at the first warm-up step ({', '.join(silent[:4])}"
                f"{', ...' if len(silent) > 4 else ''}): their forward hooks did not run or "
                "no gradient reached them. If the model was compiled (torch.compile) before "
                "the optimizer was built, build the optimizer first (or call "
                "torch._dynamo.reset() after building it); if these modules are unused, leave "
                "them out with exclude=[...]",
                RuntimeWarning,
                stacklevel=3,
            )

    def flush(self) -> None:
        """Moves observed rows to the core (one host-device transfer for all of them).

        Rows were already averaged over ranks (see `mean_over_ranks`): no collective here.
        """
        if not self._rows:
            return
        rows = torch.stack([r.to(self._rows[0].device) for r in self._rows]).to(torch.float64)
        self._rows = []
        phase = self.core.phase
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
        if self.core.phase != phase:
            self._warn_zero_fisher()
        if self.core.phase != phase or self.core.phase == "refreshing":
            self._sync_phase()

    def _warn_zero_fisher(self) -> None:
        zero = [n for n, f in zip(self.names, self.core.fisher.tolist()) if f == 0.0]
        if zero:
            warnings.warn(
                f"FW-LoRA: importances frozen with F = 0 for {len(zero)} of {len(self.names)} "
                f"LoRA matrices ({', '.join(zero[:4])}{', ...' if len(zero) > 4 else ''}): "
                "no warm-up step measured them, so their importance is 0 (or uniform if all "
                "are 0) and they get the full penalty. Build the optimizer before "
                "torch.compile (or call torch._dynamo.reset() after building it), or leave "
                "unused modules out with exclude=[...]",
                RuntimeWarning,
                stacklevel=3,
            )

    def _sync_phase(self) -> None:
        """Hooks on while observing; factors cached on the device once importances exist."""
        observing = self.core.observing and self.options.estimator != "adapter"
        if observing and not self.statistics.attached:
            self.statistics.attach()
        elif not observing and self.statistics.attached:
            self.statistics.detach()
        factors = self.core.base_factors()
        if factors is not None:
            self.penalty.set_factors(factors)
            self._decay_weights = (1.0 - np.asarray(self.core.importance)).tolist()
            self._warn_overflow(factors)

    def _check_first_penalty(self, penalty_sq: torch.Tensor) -> None:
        """Once, at the first penalised step (one host sync): a penalty gradient whose norm
        is not finite (λ too large for the weights' dtype: AdamW then divides inf by inf, or
        stops the factors) is reported with the λ in effect."""
        if self._warned_overflow or bool(torch.isfinite(penalty_sq)):
            return
        self._warned_overflow = True
        warnings.warn(
            f"FW-LoRA: at λ={self.core.lam:g} the penalty's gradient is not finite at the first "
            "penalised step: the LoRA updates will be non-finite (or stop). Lower lam (or use "
            'lam="auto")',
            RuntimeWarning,
            stacklevel=4,
        )

    def _warn_overflow(self, factors: Any) -> None:
        """Once: a λ so large that a penalty coefficient 2·λ·(1 − I_m)·s² is not finite in
        the factors' dtype makes every penalised update non-finite."""
        if self._warned_overflow or self.options.penalty == "decoupled":
            return
        bad = []
        for m, f in zip(self.matrices, np.asarray(factors, dtype=np.float64)):
            top = float(torch.finfo(m.lora_A.dtype).max)
            if not np.isfinite(2.0 * f * m.scaling**2) or 2.0 * f * m.scaling**2 > top:
                bad.append(m.name)
        if bad:
            self._warned_overflow = True
            warnings.warn(
                f"FW-LoRA: λ={self.core.lam:g} makes the penalty's coefficient overflow "
                f"{self.matrices[0].lora_A.dtype} for {len(bad)} of {len(self.matrices)} LoRA "
                f"matrices ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): every "
                'penalised update will be non-finite. Lower lam (or use lam="auto")',
                RuntimeWarning,
                stacklevel=3,
            )

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        self.flush()
        o = self.options
        state = fisher_state(self.names, self.core, o.penalty, o.estimator)
        state["calibration"] = self.calibration.state_dict()  # lam="auto" before calibration
        return state

    def validate_state_dict(self, state: Any) -> FisherCore:
        """Checks `state` fits this model; returns the core it holds. Changes nothing."""
        core = check_fisher_state(state, self.names)
        check_calibration_state(state.get("calibration"))
        saved = _saved_options(state, core)
        # A saved mode this build does not know, or one this optimizer cannot apply, is
        # refused here, before anything changes.
        FisherOptions.from_kwargs(**{**self.options.to_dict(), **saved})
        if self._optimizer is not None:
            _check_optimizer_fits(self._optimizer, self.matrices, saved["penalty"])
        return core

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._commit_load(state, self.validate_state_dict(state))

    def _commit_load(self, state: dict[str, Any], core: FisherCore) -> None:
        """Adopts the saved core and modes (as torch optimizers adopt saved param groups),
        warning when they differ from this object's: the saved run's λ, K, α, ... win."""
        saved = _saved_options(state, core)
        _warn_adopted_options(self.options, saved)
        self.core.load(core)
        estimator_changed = saved["estimator"] != self.options.estimator
        self.options = dataclasses.replace(self.options, **saved)
        self._rows = []
        self.calibration.load_state_dict(state.get("calibration"), self._device)
        self._first_row_checked = self.core.step > 0
        if estimator_changed:
            self.statistics.detach()
            self.statistics = self._new_statistics()
        self.statistics.reset()
        self._sync_phase()

    def _state_dict_hook(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        return with_entry(state_dict, self.state_dict())

    def _load_pre_hook(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        entry = require_entry(state_dict, "an optimizer with FW-LoRA attached")
        self._pending_load = (entry, self.validate_state_dict(entry))
        return without_entry(state_dict)  # the optimizer loads the rest

    def _load_post_hook(self, optimizer: torch.optim.Optimizer) -> None:
        if self._pending_load is not None:
            state, core = self._pending_load
            self._pending_load = None
            self._commit_load(state, core)


def _check_optimizer_fits(
    optimizer: torch.optim.Optimizer, matrices: list[AdapterMatrix], penalty: str
) -> None:
    """ValueError when `optimizer` would apply FW-LoRA wrongly to these factors."""
    factors = {id(p) for m in matrices for p in (m.lora_A, m.lora_B)}
    groups = [g for g in optimizer.param_groups if any(id(p) in factors for p in g["params"])]
    if any(g.get("maximize", False) for g in groups):
        raise ValueError(
            "maximize: FW-LoRA adds the penalty's gradient for minimisation; a param group "
            "with LoRA factors has maximize=True. Minimise the negated objective instead"
        )
    if penalty != "decoupled":
        return
    if not has_decoupled_decay(optimizer):
        raise ValueError(
            'penalty: "decoupled" scales AdamW\'s decoupled weight decay; '
            f'{type(optimizer).__name__} has none, use penalty="coupled"'
        )
    if any(float(g.get("weight_decay", 0.0)) == 0.0 for g in groups):
        raise ValueError(
            'penalty: "decoupled" scales the weight decay of the LoRA factors by (1 - I_m), '
            "but a param group holding them has weight_decay=0, so FW-LoRA would do nothing; "
            'set weight_decay > 0, or use penalty="coupled"'
        )


def _amp_state(optimizer: torch.optim.Optimizer | None) -> tuple[bool, float | None]:
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


def _zero_step(optimizer: torch.optim.Optimizer | None, factors: Sequence[torch.Tensor]) -> bool:
    """Whether this step had lr 0 everywhere and all-zero LoRA gradients (torch's state
    initialisation in torch.distributed.checkpoint.state_dict)."""
    if optimizer is None or any(float(g.get("lr", 1.0)) != 0.0 for g in optimizer.param_groups):
        return False
    grads = [p.grad for p in factors if p.grad is not None]
    # This rank's shards only (no collective); the answer only decides a warning.
    local = [g.to_local() if is_dtensor(g) else g for g in grads]  # type: ignore[attr-defined]
    return not any(bool(g.any()) for g in local)


def _warn_adopted_options(ours: FisherOptions, saved: dict[str, Any]) -> None:
    """One UserWarning naming every saved option that differs from the constructor's."""
    differ = [
        f"{name}={saved[name]!r} (constructed with {getattr(ours, name)!r})"
        for name in saved
        # lam="auto" is saved as "auto" (see _saved_options): its calibrated λ is no mismatch.
        if saved[name] != getattr(ours, name)
    ]
    if differ:
        warnings.warn(
            f"FW-LoRA: the loaded state was saved with {', '.join(differ)}; the saved values "
            "are used, as torch optimizers adopt saved param groups, so the run continues as "
            "it was started. Build the optimizer with the saved options to silence this, or "
            "start a fresh run to use new ones",
            UserWarning,
            stacklevel=4,
        )


def _saved_options(state: dict[str, Any], core: FisherCore) -> dict[str, Any]:
    saved = {name: getattr(core, name) for name in CORE_OPTIONS}
    if core.target_ratio is not None:
        saved["lam"] = "auto"  # the core holds the calibrated λ (or None), not the option
    saved["penalty"] = state.get("penalty")
    saved["estimator"] = state.get("estimator")
    return saved
