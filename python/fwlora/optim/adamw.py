"""FisherAdamW: torch.optim.AdamW with FW-LoRA built in — the one line a user changes."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from fwlora.optim.weighting import STATE_KEY, FisherWeighting, _check_number


def adamw_param_groups(model: nn.Module, weight_decay: float = 1e-2) -> list[dict[str, Any]]:
    """Every trainable parameter; weight decay only on those with ndim >= 2.

    The same grouping serves the plain-LoRA baseline, so runs differ only in FW-LoRA.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _plain_adamw_step():
    # torch wraps `step` of every optimizer class it instantiates with its hook runner;
    # calling that wrapper from our own (also wrapped) step would run user hooks twice.
    step = torch.optim.AdamW.step
    while getattr(step, "hooked", False):
        step = step.__wrapped__
    return step


class FisherAdamW(torch.optim.AdamW):
    """AdamW (exactly ``torch.optim.AdamW``) on every trainable parameter, plus FW-LoRA.

    ``FisherAdamW(model, warmup=500, lam=1e-4)`` — `model` holds peft LoRA layers. Steps
    1..warmup observe ‖∂L/∂W_m‖²_F of each adapted frozen weight into a Fisher EMA (decay
    `alpha`); right after step `warmup` the importances I_m = F_m / Σ F are frozen; later
    steps add the gradient of λ·Σ_m (1 - I_m)·‖ΔW_m‖²_F to the LoRA gradients.

    Args beyond AdamW's (see :class:`fwlora.FisherWeighting` for each): warmup, lam,
    alpha, normalization ("sum" | "max"), penalty ("coupled" | "decoupled"), estimator
    ("exact" | "sketch"), sketch_dim, schedule ("constant" | "ramp"), ramp_steps,
    refresh_every, flush_every, sync_ranks, seed. `params` overrides the default param
    groups (all trainable parameters, weight decay only where ndim >= 2).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
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
            allowed = sorted(inspect.signature(FisherAdamW.__init__).parameters)[1:]
            raise ValueError(
                f"{', '.join(sorted(unknown))}: unknown option(s) for FisherAdamW; "
                f"expected some of {allowed}"
            )
        _check_number("lr", lr, minimum=0.0)
        _check_number("eps", eps, minimum=0.0)
        _check_number("weight_decay", weight_decay, minimum=0.0)
        for i, beta in enumerate(betas):
            if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
                raise ValueError(f"betas: expected betas[{i}] in [0, 1), got {beta!r}")
        fisher_weighting = FisherWeighting(
            model,
            warmup=warmup,
            lam=lam,
            alpha=alpha,
            normalization=normalization,
            penalty=penalty,
            estimator=estimator,
            sketch_dim=sketch_dim,
            schedule=schedule,
            ramp_steps=ramp_steps,
            refresh_every=refresh_every,
            flush_every=flush_every,
            sync_ranks=sync_ranks,
            seed=seed,
        )
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
        self.fisher_weighting = fisher_weighting

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.fisher_weighting.before_step()
        _plain_adamw_step()(self)
        self.fisher_weighting.after_step()
        return loss

    # Read-outs ---------------------------------------------------------------
    @property
    def phase(self) -> str:
        """ "warmup" during steps 1..K, "frozen" after."""
        return self.fisher_weighting.phase

    @property
    def importance(self) -> dict[str, float] | None:
        """{module name: I_m}, None during warm-up."""
        return self.fisher_weighting.importance

    @property
    def fisher(self) -> dict[str, float]:
        """{module name: F_m}, the current Fisher EMA."""
        return self.fisher_weighting.fisher

    def penalty_value(self) -> torch.Tensor:
        return self.fisher_weighting.penalty_value()

    def export_json(self, path):
        """Writes phase, step, configuration, F and I per matrix as JSON."""
        return self.fisher_weighting.export_json(path)

    def use_grad_scaler(self, scaler) -> None:
        self.fisher_weighting.use_grad_scaler(scaler)

    # State -------------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state[STATE_KEY] = self.fisher_weighting.state_dict()
        return state

    def load_state_dict(self, state_dict) -> None:
        if STATE_KEY not in state_dict:
            raise ValueError(f"state_dict: no {STATE_KEY!r} entry; it was not saved by FisherAdamW")
        fisher_state = state_dict[STATE_KEY]
        core = self.fisher_weighting.validate_state_dict(fisher_state)
        rest = {k: v for k, v in state_dict.items() if k != STATE_KEY}
        super().load_state_dict(rest)
        self.fisher_weighting._commit_load(fisher_state, core)
