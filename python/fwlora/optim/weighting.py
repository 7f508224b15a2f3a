"""FisherWeighting: the FW-LoRA mechanism, attachable to any torch optimizer.

Per optimizer step t (1-based):
  * t <= K (warm-up): the update uses L_task only; after it, g_m = ‖∂L/∂W_m‖²_F of this
    step's gradient is recorded, and F_m <- α·F_m + (1 - α)·g_m in the Rust core.
  * right after step K: I_m = F_m / Σ_k F_k (1/M if the sum is 0), frozen; the gradient
    hooks are removed (unless `refresh_every` > 0).
  * t > K: before the update, ∂/∂(A, B) of λ·Σ_m (1 - I_m)·‖ΔW_m‖²_F is added to the LoRA
    gradients (``penalty="coupled"``, as if the term were in the loss), or each adapter's
    decoupled weight decay is scaled by (1 - I_m) (``penalty="decoupled"``, AdamW only).

This class is the thin facade that binds the parts to an optimizer: `Observation`
(observation.py: the Rust core, the warm-up statistic and the rows on their way into the
core) and `StepPipeline` (pipeline.py: calibration, penalty, decoupled decay, strength); the
state travels in the optimizer's own state dict (state_entry.py: a param-group entry written
by a state-dict hook and read back by a load hook).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from fwlora._core import FisherCore
from fwlora.optim.calibration import check_state as check_calibration_state
from fwlora.optim.decoupled import has_decoupled_decay
from fwlora.optim.observation import Observation, zero_step
from fwlora.optim.options import FisherOptions
from fwlora.optim.penalty import FisherPenalty
from fwlora.optim.pipeline import StepPipeline, amp_state
from fwlora.optim.readouts import ReadOuts
from fwlora.optim.sharding import check_sharding, current_matrices
from fwlora.optim.state_entry import (
    check_fisher_state,
    fisher_state,
    saved_calibration,
    saved_options,
    take_entry,
    warn_adopted_options,
    with_entry,
)
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
        self.matrices = find_adapter_matrices(model, exclude=options.exclude)
        check_trainable(self.matrices)
        self.observation = Observation(self.matrices, options)
        self.pipeline = StepPipeline(self.matrices, options.ratio_every)
        self._active_adapters = ActiveAdapterGuard()
        self._skipping = False  # this step under a GradScaler with a fused optimizer
        self._grad_scale: float | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._handles: list[Any] = []
        self._pending_load: tuple[dict, FisherCore] | None = None
        self._checked_factors = False
        check_sharding(self.matrices)
        self.observation.check_estimator()

    # ----------------------------------------------------------------- read-outs
    # (the rest, shared with FisherAdamW, in readouts.ReadOuts)
    @property
    def _weighting(self) -> FisherWeighting:
        return self

    @property
    def options(self) -> FisherOptions:
        """The options in effect (held once, by the Observation; a load adopts the saved ones)."""
        return self.observation.options

    @property
    def core(self) -> FisherCore:
        return self.observation.core

    @property
    def statistics(self) -> GradientStatistics:
        return self.observation.statistics

    @property
    def penalty(self) -> FisherPenalty:
        return self.pipeline.penalty

    @property
    def strength(self) -> PenaltyStrength:
        return self.pipeline.strength

    @property
    def names(self) -> list[str]:
        return self.observation.names

    @property
    def step(self) -> int:
        """Optimizer steps taken: the core's count plus the observations waiting for it."""
        return self.observation.step

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
            *self.hook_state_dict(optimizer),
        ]
        return self

    def hook_state_dict(self, optimizer: torch.optim.Optimizer) -> list[Any]:
        """Carries FW-LoRA's state in `optimizer`'s own state dict (an entry of its first
        param group, see state_entry.py): the hooks' handles."""
        return [
            optimizer.register_state_dict_post_hook(self._state_dict_hook),
            optimizer.register_load_state_dict_pre_hook(self._load_pre_hook),
            optimizer.register_load_state_dict_post_hook(self._load_post_hook),
        ]

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
        self.observation.options = FisherOptions.from_kwargs(
            **{**self.options.to_dict(), "accumulation_steps": steps}
        )
        self.statistics.accumulation_steps = self.options.accumulation_steps

    def use_grad_scaler(self, scaler: Any) -> None:
        """Statistics are taken on unscaled gradients: pass the fp16 GradScaler in use."""
        self.observation.grad_scaler = scaler

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
        self._skipping, self._grad_scale = amp_state(self._optimizer)
        if self._skipping:  # the optimizer will skip this step: so does FW-LoRA
            return
        self.observation.before_update(self._grad_scale)
        self.pipeline.before_update(
            self.core, self.options, self._optimizer, self.step + 1, self._grad_scale
        )

    @torch.no_grad()
    def after_step(self) -> None:
        """Counts the step in the core; while observing, records its statistics. A step the
        optimizer skipped (GradScaler found an inf) is not counted and records nothing."""
        if self._skipping:
            self._skipping = False
            self.observation.drop_step()
            return
        factors = self.pipeline.factors
        if self.observation.after_update(
            self._grad_scale, lambda: zero_step(self._optimizer, factors)
        ):
            self._sync_phase()

    def flush(self) -> None:
        """Moves observed rows to the core (one host-device transfer for all of them)."""
        if self.observation.flush():
            self._sync_phase()

    def _adopt_matrices(self, fresh: list[AdapterMatrix]) -> None:
        self.matrices[:] = fresh  # in place: Observation and GradientStatistics share the list
        self.observation.check_estimator()
        self.pipeline.adopt(self.matrices)
        self._sync_phase()  # re-caches the penalty factors on the new groups

    def _sync_phase(self) -> None:
        """Hooks on while observing; factors cached on the device once importances exist."""
        self.observation.sync_hooks()
        self.pipeline.set_importances(self.core, self.options)

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """FW-LoRA's entry of an optimizer state dict (plain Python, fixed shape)."""
        self.flush()
        o = self.options
        calibration = self.pipeline.calibration.state_dict()  # lam="auto" before calibration
        return fisher_state(self.names, self.core, o.penalty, o.estimator, calibration)

    def validate_state_dict(self, state: Any) -> FisherCore:
        """Checks `state` fits this model; returns the core it holds. Changes nothing."""
        core = check_fisher_state(state, self.names)
        check_calibration_state(saved_calibration(state))
        saved = saved_options(state, core)
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
        saved = saved_options(state, core)
        warn_adopted_options(self.options, saved)
        self.observation.load(core, dataclasses.replace(self.options, **saved))
        self.pipeline.calibration.load_state_dict(saved_calibration(state), self.observation.device)
        self._sync_phase()

    def _state_dict_hook(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        return with_entry(state_dict, self.state_dict())

    def _load_pre_hook(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        built_in = getattr(optimizer, "fisher_weighting", None) is self
        owner = "FisherAdamW" if built_in else "an optimizer with FW-LoRA attached"
        entry, rest = take_entry(state_dict, owner)
        self._pending_load = (entry, self.validate_state_dict(entry))
        return rest  # the optimizer loads the rest

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
