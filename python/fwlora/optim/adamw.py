"""FisherAdamW: torch.optim.AdamW with FW-LoRA built in — the one line a user changes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fwlora.optim.options import DEFAULTS, FisherOptions, plain_number
from fwlora.optim.readouts import ReadOuts
from fwlora.optim.weighting import FisherWeighting


def adamw_param_groups(model: nn.Module, weight_decay: float = 1e-2) -> list[dict[str, Any]]:
    """Every trainable parameter; weight decay only on those with ndim >= 2.

    The same grouping serves the plain-LoRA baseline, so runs differ only in FW-LoRA.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _plain_adamw_step() -> Callable[..., Any]:
    # torch wraps `step` of every optimizer class it instantiates with its hook runner;
    # calling that wrapper from our own (also wrapped) step would run user hooks twice.
    step: Any = torch.optim.AdamW.step
    while getattr(step, "hooked", False):
        step = step.__wrapped__
    return step


def _value(x: Any, tensors: bool) -> float | None:
    """A number's value for the checks: Python and numpy reals, and (where torch takes
    them: lr and betas) one-element real tensors; None for anything else."""
    if tensors and isinstance(x, torch.Tensor):
        if x.numel() != 1 or x.is_complex() or x.dtype == torch.bool:
            return None
        return float(x.detach().item())
    x = plain_number(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def _plain(x: Any) -> Any:
    return x if isinstance(x, torch.Tensor) else plain_number(x)


def _check_adamw(*, betas: Any, **numbers: Any) -> None:
    """AdamW's own checks, with messages that name the argument (torch's say "Invalid ...").
    lr and betas may be one-element tensors, as torch allows (torch.compile users pass them
    to avoid recompiles); their values are checked like numbers."""
    for name, value in numbers.items():
        checked = _value(value, tensors=name == "lr")
        if checked is None or not checked >= 0:
            what = "a number (or a one-element tensor) >= 0" if name == "lr" else "a number >= 0"
            raise ValueError(f"invalid `{name}`: expected {what}, got {value!r}")
    if not (isinstance(betas, tuple | list) and len(betas) == 2):
        raise ValueError(f"invalid `betas`: expected a pair of floats in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        checked = _value(beta, tensors=True)
        if checked is None or not 0 <= checked < 1:
            raise ValueError(f"invalid `betas`: expected betas[{i}] in [0, 1), got {beta!r}")


class FisherAdamW(ReadOuts, torch.optim.AdamW):
    """AdamW (exactly ``torch.optim.AdamW``) on every trainable parameter, plus FW-LoRA.

    ``FisherAdamW(model, warmup=500, lam=1e-4)`` — `model` holds peft LoRA layers. Steps
    1..warmup observe ‖∂L/∂W_m‖²_F of each adapted frozen weight into a Fisher EMA (decay
    `alpha`); right after step `warmup` the importances I_m = F_m / Σ F are frozen; later
    steps add the gradient of λ·Σ_m (1 - I_m)·‖ΔW_m‖²_F to the LoRA gradients.
    ``lam="auto"`` calibrates λ once, at the first penalised step, so that the penalty's
    gradient is ``target_ratio`` times the task's over the LoRA factors (then frozen).

    The FW-LoRA keywords are the fields of :class:`~fwlora.optim.options.FisherOptions`
    (defaults and validation live there); AdamW's are validated by AdamW. `params` overrides
    the default param groups (all trainable parameters, weight decay only where ndim >= 2).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        warmup: int = DEFAULTS.warmup,
        lam: float | str = DEFAULTS.lam,
        target_ratio: float | None = DEFAULTS.target_ratio,
        alpha: float = DEFAULTS.alpha,
        normalization: str = DEFAULTS.normalization,
        penalty: str = DEFAULTS.penalty,
        estimator: str = DEFAULTS.estimator,
        sketch_dim: int = DEFAULTS.sketch_dim,
        schedule: str = DEFAULTS.schedule,
        ramp_steps: int = DEFAULTS.ramp_steps,
        refresh_every: int = DEFAULTS.refresh_every,
        flush_every: int = DEFAULTS.flush_every,
        accumulation_steps: int = DEFAULTS.accumulation_steps,
        seed: int = DEFAULTS.seed,
        ratio_every: int = DEFAULTS.ratio_every,
        exclude: tuple[str, ...] = DEFAULTS.exclude,
        params: Any = None,
        amsgrad: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            signature = inspect.signature(FisherAdamW.__init__).parameters
            allowed = [n for n, p in signature.items() if p.kind != p.VAR_KEYWORD][1:]
            raise ValueError(
                f"{', '.join(sorted(unknown))}: unknown option(s) for FisherAdamW; "
                f"expected some of {', '.join(allowed)}"
            )
        # Tensors (lr, betas) pass as they are; numpy scalars become Python numbers.
        lr = _plain(lr)
        eps, weight_decay = plain_number(eps), plain_number(weight_decay)
        if isinstance(betas, tuple | list):
            betas = tuple(_plain(b) for b in betas)
        _check_adamw(lr=lr, eps=eps, weight_decay=weight_decay, betas=betas)
        options = FisherOptions(
            warmup=warmup,
            lam=lam,
            target_ratio=target_ratio,
            alpha=alpha,
            normalization=normalization,
            penalty=penalty,
            estimator=estimator,
            sketch_dim=sketch_dim,
            schedule=schedule,
            ramp_steps=ramp_steps,
            refresh_every=refresh_every,
            flush_every=flush_every,
            accumulation_steps=accumulation_steps,
            seed=seed,
            ratio_every=ratio_every,
            exclude=exclude,
        )
        fisher_weighting = FisherWeighting(model, options)
        super().__init__(
            adamw_param_groups(model, weight_decay) if params is None else params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )
        fisher_weighting.bind(self)
        # FW-LoRA's state travels in this optimizer's own state dict, by torch's hooks.
        fisher_weighting.hook_state_dict(self)
        self.fisher_weighting = fisher_weighting

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.fisher_weighting.before_step()
        _plain_adamw_step()(self)
        self.fisher_weighting.after_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # Statistics of a step the optimizer never took (e.g. skipped by a GradScaler) must
        # not leak into the next one, whichever way the gradients are cleared.
        super().zero_grad(set_to_none)
        self.fisher_weighting.statistics.drop_step()

    # Read-outs: readouts.ReadOuts, of this optimizer's FisherWeighting ------------
    @property
    def _weighting(self) -> FisherWeighting:
        return self.fisher_weighting

    def use_grad_scaler(self, scaler: Any) -> None:
        self.fisher_weighting.use_grad_scaler(scaler)

    # Copies ------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer.__getstate__ keeps defaults, state and param_groups only: a copy
        # would lose FW-LoRA (its hooks on the model's modules, its Rust core) and fail at its
        # first zero_grad(). Refused here, at the copy, with the way that works.
        raise TypeError(
            "FisherAdamW cannot be pickled or deep-copied: its FW-LoRA state is bound to the "
            "model's LoRA modules. Save optimizer.state_dict() (torch.save) and load it into a "
            "FisherAdamW built over the (copied) model with load_state_dict()"
        )
