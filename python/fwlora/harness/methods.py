"""The training methods of the harness, one `Method` definition each: how a method builds its
adapters and its optimizer, what it records in metrics.json beside every run's metrics, what
it keeps in its checkpoint, where it sits in tables and plots, and whether it is FW-LoRA's
(warm-up, penalty, λ).

Everything else asks this registry instead of naming methods: the settings' schema (`config`:
METHODS, FISHER_METHODS), the run loop (`train`), the checkpoint, the preflight checks, the
sweep's grid and curve, merge's order. Adding a method is adding one definition here
(`register`; a test may register one for its duration and `unregister` it).

    lora     plain LoRA (AdamW): the baseline every penalised method is tested against
    fw-lora  LoRA + FisherAdamW: Fisher-weighted penalty after a K-step warm-up
    l2-lora  LoRA + FisherAdamW with uniform importances: fw-lora's control (same penalty
             path and total weight, no Fisher information)
    adalora  peft's AdaLoRA with LoRA's rank as its target budget
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fwlora.harness import budget
from fwlora.harness.errors import HarnessError
from fwlora.harness.run_metrics import FISHER_KEY, FisherMetrics

if TYPE_CHECKING:
    from fwlora.harness.config import RunConfig
    from fwlora.harness.train import RunState


@dataclass(frozen=True)
class Adapters:
    """A method's adapters for one run: the peft config, the adapter parameters it adds and
    the budget facts it reports (`AdapterInfo.extra`)."""

    peft_config: Any
    params: int
    extra: dict[str, Any]


@dataclass(frozen=True)
class AdapterRequest:
    """What a method's adapters are built for: the run's settings, its target linears, the
    LoRA rank (from the budget when one is set), the run's optimizer steps and the modules
    trained in full beside the adapters."""

    cfg: RunConfig
    linears: list[budget.TargetLinear]
    rank: int
    total_steps: int
    modules_to_save: list[str] | None


AdapterBuilder = Callable[[AdapterRequest], Adapters]
# (peft model, cfg, total steps) → the optimizer.
OptimizerBuilder = Callable[[Any, "RunConfig", int], Any]


@dataclass(frozen=True)
class MetricsRecord:
    """An entry of metrics.json beside every run's metrics, under `key` (null in the runs of
    methods that do not record it): `build(run, progress)` returns it, JSON-ready, after the
    last epoch."""

    key: str
    build: Callable[[RunState, dict[str, Any]], Any]


@dataclass(frozen=True)
class CheckpointState:
    """State a method keeps in its run's checkpoint, under `key`: `save(model)` returns it,
    `load(model, saved)` puts it back on --resume."""

    key: str
    save: Callable[[Any], Any]
    load: Callable[[Any, Any], None]


@dataclass(frozen=True)
class Method:
    """One training method of the harness (see the module's docstring)."""

    name: str
    title: str  # in words, e.g. "AdaLoRA"
    # Position in merged experiments and in the sweep's series (after the seed).
    order: int
    adapters: AdapterBuilder
    optimizer: OptimizerBuilder
    # FW-LoRA's: FisherAdamW's warm-up (K), penalty and λ; the sweep's λ axis.
    fisher: bool = False
    # The FW-LoRA normalisation when fisher_normalization is not set.
    normalization: str = "sum"
    # Why the normalisation is fixed (e.g. "the uniform control (I_m = 1/M)"); None: the
    # run's fisher_normalization chooses it (and a sweep's --normalizations).
    fixed_normalization: str | None = None
    # The sweep's band with no penalty, what every penalised point is tested against.
    baseline: bool = False
    # The sweep's control: FW-LoRA is tested against it at each λ and at equal strength.
    control: bool = False
    records: tuple[MetricsRecord, ...] = ()
    state: CheckpointState | None = None
    # Called after each optimizer step with the model and the step's number (1-based).
    after_step: Callable[[Any, int], None] | None = None
    min_steps: int = 1  # the fewest optimizer steps a run of it can take
    # Its own settings (e.g. "fisher_"): merged experiments may differ in them by method.
    settings_prefix: str | None = None
    # Takes `trainable_modules` (trains a subset of its adapters).
    trains_subsets: bool = False

    def series(self, normalization: str | None) -> str:
        """Its series in the sweep's curve: `fw-lora (sum)`; `l2-lora` (fixed normalisation)."""
        return self.name if self.fixed_normalization else f"{self.name} ({normalization})"


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds `method` to the harness (its name must be new)."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Removes a registered method (for tests that register one for their duration)."""
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every method's name, in the order of registration."""
    return tuple(_REGISTRY)


def all_methods() -> tuple[Method, ...]:
    return tuple(_REGISTRY.values())


def lookup(name: str) -> Method | None:
    """The method called `name` (None: not one this version knows, e.g. in a newer file)."""
    return _REGISTRY.get(name)


def get(name: str) -> Method:
    """The method called `name`; a HarnessError names the known ones."""
    method = _REGISTRY.get(name)
    if method is None:
        raise HarnessError(f"method: unknown value {name!r}; choose one of {', '.join(names())}")
    return method


def is_fisher(name: str) -> bool:
    """Whether runs of `name` train with FW-LoRA (FisherAdamW)."""
    method = _REGISTRY.get(name)
    return method is not None and method.fisher


def baseline() -> Method:
    """Plain LoRA: the method every other is tested against (the sweep's band)."""
    return next(m for m in _REGISTRY.values() if m.baseline)


def control() -> Method:
    """l2-lora: the control FW-LoRA is tested against in a sweep."""
    return next(m for m in _REGISTRY.values() if m.control)


def record_keys() -> tuple[str, ...]:
    """The keys of the methods' metrics records, in registration order (metrics.json has
    each, null where a run's method does not record it)."""
    keys: dict[str, None] = {}
    for method in _REGISTRY.values():
        keys.update({r.key: None for r in method.records})
    return tuple(keys)


def settings_prefixes() -> tuple[str, ...]:
    """The prefixes of the methods' own settings, e.g. ("fisher_", "adalora_")."""
    found = (m.settings_prefix for m in _REGISTRY.values() if m.settings_prefix)
    return tuple(dict.fromkeys(found))


# ------------------------------------------------------------------ adapters
def lora_adapters(request: AdapterRequest) -> Adapters:
    """LoRA of `rank` on every target linear."""
    from peft import LoraConfig, TaskType

    cfg, rank, linears = request.cfg, request.rank, request.linears

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=rank,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # peft says int; floats work
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=request.modules_to_save,
    )
    return Adapters(config, budget.lora_params(linears, rank), {})


def adalora_schedule(cfg: RunConfig, total_steps: int) -> dict[str, int]:
    """AdaLoRA's budget schedule (tinit, tfinal, deltaT) over the run's steps."""
    tinit = int(cfg.adalora_tinit_fraction * total_steps)
    tfinal = int(cfg.adalora_tfinal_fraction * total_steps)
    if total_steps - tinit - tfinal < 1:
        tinit, tfinal = 0, 0
    delta_t = max(1, min(cfg.adalora_delta_t, max(1, (total_steps - tinit - tfinal) // 4)))
    return {"tinit": tinit, "tfinal": tfinal, "deltaT": delta_t, "total_step": total_steps}


def adalora_adapters(request: AdapterRequest) -> Adapters:
    """AdaLoRA whose target average rank is LoRA's `rank`, so the final budget matches LoRA's."""
    from peft import AdaLoraConfig, TaskType

    cfg, rank, linears = request.cfg, request.rank, request.linears

    schedule = adalora_schedule(cfg, request.total_steps)
    init_r = max(rank, math.ceil(cfg.adalora_init_r_factor * rank))
    config = AdaLoraConfig(
        task_type=TaskType.SEQ_CLS,
        init_r=init_r,
        target_r=rank,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # peft says int; floats work
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        orth_reg_weight=cfg.adalora_orth_reg_weight,
        modules_to_save=request.modules_to_save,
        tinit=schedule["tinit"],
        tfinal=schedule["tfinal"],
        deltaT=schedule["deltaT"],
        total_step=schedule["total_step"],
    )
    extra = {
        "adalora_init_r": init_r,
        "adalora_target_r": rank,
        "adalora_target_params": budget.adalora_params(linears, rank),
        "lora_params_at_same_rank": budget.lora_params(linears, rank),
        **{f"adalora_{k}": v for k, v in schedule.items()},
    }
    return Adapters(config, budget.adalora_params(linears, init_r), extra)


# ------------------------------------------------------------------ optimizers
def adamw(model: Any, cfg: RunConfig, total_steps: int) -> Any:
    """torch's AdamW (no weight decay on biases and norms)."""
    import torch

    from fwlora.optim import adamw_param_groups

    return torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay), lr=cfg.lr)


def fisher_warmup_steps(cfg: RunConfig, total_steps: int) -> int:
    """FW-LoRA's warm-up K of a run: fisher_warmup, or its fraction of the total steps."""
    if cfg.fisher_warmup_fraction is not None:
        return max(1, round(cfg.fisher_warmup_fraction * total_steps))
    return cfg.fisher_warmup


def fisher_adamw(model: Any, cfg: RunConfig, total_steps: int) -> Any:
    """FisherAdamW with the run's FW-LoRA settings (l2-lora: uniform importances)."""
    from fwlora.optim import FisherAdamW

    return FisherAdamW(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup=fisher_warmup_steps(cfg, total_steps),
        lam=cfg.fisher_lam,
        target_ratio=cfg.fisher_target_ratio,
        alpha=cfg.fisher_alpha,
        normalization=cfg.normalization,
        seed=cfg.seed,
        # Every penalised step's ratio, so metrics' median is the run's median (a pass
        # over the LoRA gradients per step: research read-out over speed).
        ratio_every=1,
    )


# ------------------------------------------------------------------ records and state
def fisher_record(run: RunState, progress: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's "fisher": the warm-up, λ in effect, phase, strength and importances
    (and fwlora_importance.json beside it); a negligible penalty is said and noted."""
    from fwlora.harness.progress import say
    from fwlora.harness.train import penalty_message
    from fwlora.integrations.common import IMPORTANCE_FILE

    optimizer = run.optimizer
    optimizer.export_json(run.run_dir / IMPORTANCE_FILE)
    ratios = progress.get("penalty_grad_ratios", [])
    record = FisherMetrics(
        warmup_steps=run.fisher_k,
        # λ in effect: fisher_lam, or the calibrated one with "auto" (None: never was)
        lam=optimizer.lam,
        target_ratio=optimizer.target_ratio,
        normalization=run.cfg.normalization,
        phase=optimizer.phase,
        # median over the run's penalised steps of ‖∇P‖/‖∇L_task‖ (None: none penalised)
        penalty_grad_ratio=float(np.median(ratios)) if ratios else None,
        penalised_steps=len(ratios),
        importance=optimizer.importance,
        fisher=optimizer.fisher,
    )
    message = penalty_message(record.penalty_grad_ratio, optimizer.lam)
    if message:
        run.notes.append(message)
        say(f"[{run.name}] {message}")
    return record.to_dict()


def adalora_final_ranks(peft_model: Any) -> dict[str, int] | None:
    """Per-module ranks AdaLoRA kept (its rank_pattern), or None before any allocation."""
    config = next(iter(peft_model.peft_config.values()))
    pattern = getattr(config, "rank_pattern", None)
    if not pattern:
        return None
    return {name: int(sum(bool(x) for x in mask)) for name, mask in pattern.items()}


def adalora_record(run: RunState, progress: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's "adalora": the ranks the allocator kept."""
    return {"final_ranks": adalora_final_ranks(run.model)}


ADALORA_EMAS = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def save_adalora(model: Any) -> dict[str, Any]:
    """AdaLoRA's importance EMAs and its current rank pattern."""
    allocator = model.base_model.rankallocator
    state = {key: getattr(allocator, key) for key in ADALORA_EMAS}
    state["rank_pattern"] = next(iter(model.peft_config.values())).rank_pattern
    return state


def load_adalora(model: Any, saved: dict[str, Any]) -> None:
    allocator = model.base_model.rankallocator
    for key in ADALORA_EMAS:
        setattr(allocator, key, saved[key])
    next(iter(model.peft_config.values())).rank_pattern = saved["rank_pattern"]


def adalora_allocate(model: Any, step: int) -> None:
    """AdaLoRA's budget step (prunes ranks on its schedule)."""
    model.base_model.update_and_allocate(step)


# ------------------------------------------------------------------ the methods
FISHER = MetricsRecord(FISHER_KEY, fisher_record)
# Registration order is the order of METHODS (help, error messages); `order` sorts tables.
register(
    Method(
        name="lora",
        title="LoRA",
        order=0,
        adapters=lora_adapters,
        optimizer=adamw,
        baseline=True,
        trains_subsets=True,
    )
)
register(
    Method(
        name="fw-lora",
        title="FW-LoRA",
        order=1,
        adapters=lora_adapters,
        optimizer=fisher_adamw,
        fisher=True,
        records=(FISHER,),
        settings_prefix="fisher_",
    )
)
register(
    Method(
        name="adalora",
        title="AdaLoRA",
        order=3,
        adapters=adalora_adapters,
        optimizer=adamw,
        records=(MetricsRecord("adalora", adalora_record),),
        state=CheckpointState("adalora", save_adalora, load_adalora),
        after_step=adalora_allocate,
        # peft's rank allocator reads gradient statistics of an earlier step at its first
        # budget step: with one step in all there is none (a KeyError inside peft).
        min_steps=2,
        settings_prefix="adalora_",
    )
)
register(
    Method(
        name="l2-lora",
        title="L2-LoRA",
        order=2,
        adapters=lora_adapters,
        optimizer=fisher_adamw,
        fisher=True,
        normalization="uniform",
        fixed_normalization="the uniform control (I_m = 1/M)",
        control=True,
        records=(FISHER,),
        settings_prefix="fisher_",
    )
)
