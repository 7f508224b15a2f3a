"""The FSDP2 worker's scenarios through the stacks users train with: the Trainer and
accelerate, under FSDP2, trained and resumed (run by fsdp2_worker.py under torchrun).
accelerate's state is process-wide: each scenario resets it before and after."""

from __future__ import annotations

from pathlib import Path

import torch
from fsdp2_common import (  # the worker puts tests/ on the path and silences warnings
    FW,
    STEPS,
    compare,
    data,
    run_ddp,
    summary,
)

from fwlora import FisherAdamW
from tiny import tiny_lora_model


def _force_accelerate_fsdp(accelerator, plugin) -> None:
    """accelerate enables FSDP only on GPU-like backends; on CPU it would silently use DDP.
    Set the distributed type by hand: everything after this is accelerate's own code."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    assert accelerator.is_fsdp2


def _trainer_run(
    output_dir: Path, fsdp: bool, *, save_steps: int = 0, resume: str | None = None
) -> dict:
    """The Trainer run of the trainer scenarios; `save_steps` > 0 saves checkpoints, `resume`
    resumes one (into a model whose trainable weights are moved first, so the load matters:
    a peft checkpoint holds the adapter, not the frozen base)."""
    from transformers import Trainer

    from fwlora.integrations import FisherCallback
    from fwlora.integrations.trainer import fisher_adamw_class
    from integration_helpers import TinyDataset, reset_accelerate, training_args

    reset_accelerate()
    model = tiny_lora_model(seed=0, dtype=torch.float32)
    if resume is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.1)
    extra = {}
    if fsdp:
        extra = {
            "fsdp": True,
            "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["RobertaLayer"]},
        }
    args = training_args(
        output_dir,
        max_steps=STEPS,
        ddp_backend="gloo",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_grad_norm=1.0,
        logging_steps=2,  # FisherCallback logs the penalty: a collective under FSDP2
        **({"save_strategy": "steps", "save_steps": save_steps} if save_steps else {}),
        **extra,
    )
    options = {k: v for k, v in FW.items() if k not in ("lr", "weight_decay")}
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=TinyDataset(64),
        optimizer_cls_and_kwargs=(fisher_adamw_class(model, **options), {"lr": FW["lr"]}),
    )
    if fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin

        _force_accelerate_fsdp(
            trainer.accelerator, FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
        )
        trainer.is_fsdp_enabled = True
    callback = FisherCallback(trainer)
    trainer.add_callback(callback)
    logged: list[float] = []
    metrics = callback.metrics

    def recording_metrics() -> dict:
        out = metrics()
        logged.append(out["fwlora/penalty"])
        return out

    callback.metrics = recording_metrics
    trainer.train(resume_from_checkpoint=resume)
    opt = trainer.optimizer.optimizer
    result = summary(model, opt)
    result["logged_penalties"] = logged
    reset_accelerate()
    return result


def scenario_trainer_fsdp2_resume(rank: int, cache: dict, scratch: Path) -> dict:
    """The Trainer under FSDP2 (as in trainer_fsdp2) saving checkpoints at steps 3 (mid-warm-up,
    K = 4) and 6 (its default for FSDP2 here: a full optimizer state dict through torch's
    get_/set_optimizer_state_dict); each resumed with resume_from_checkpoint, run to the end
    and compared with the uninterrupted run."""
    full = _trainer_run(scratch / "trainer-resume", fsdp=True, save_steps=3)
    result: dict = {}
    for step in (3, 6):
        checkpoint = scratch / "trainer-resume" / f"checkpoint-{step}"
        resumed = _trainer_run(
            scratch / f"trainer-resumed-{step}", fsdp=True, resume=str(checkpoint)
        )
        result[f"step_{step}"] = compare(full, resumed)
    return result


def scenario_trainer_fsdp2(rank: int, cache: dict, scratch: Path) -> dict:
    """The Trainer with fsdp_config version 2 (it builds FisherAdamW through
    optimizer_cls_and_kwargs before sharding; accumulation 2, clipping; FisherCallback logging
    the penalty every 2 steps, on every rank) vs the same Trainer under DDP."""
    ddp = _trainer_run(scratch / "trainer-ddp", fsdp=False)
    fsdp2 = _trainer_run(scratch / "trainer-fsdp2", fsdp=True)
    result = compare(ddp, fsdp2)
    result["logged_penalties"] = [ddp["logged_penalties"], fsdp2["logged_penalties"]]
    return result


def scenario_accelerate_fsdp2(rank: int, cache: dict) -> dict:
    """accelerate's own FSDP2 route: Accelerator(fsdp_plugin=FSDP2), prepare(model, optimizer)
    (accelerate shards the model and remaps the optimizer), accumulate() (no_sync through
    set_requires_gradient_sync). accelerate enables FSDP only on GPU-like backends, so the
    distributed type is forced here; everything after that is accelerate's code. Runs last:
    accelerate's state is process-wide."""
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    from integration_helpers import reset_accelerate

    reset_accelerate()

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["RobertaLayer"],
    )
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin, gradient_accumulation_steps=2)
    _force_accelerate_fsdp(accelerator, plugin)
    model = tiny_lora_model(seed=0, dtype=torch.float32)
    opt = FisherAdamW(model, **FW)  # before prepare(), as accelerate and the Trainer do
    model, prepared = accelerator.prepare(model, opt)
    syncs: list[bool] = []
    set_sync = model.set_requires_gradient_sync

    def recording_set_sync(value: bool, **kwargs) -> None:
        syncs.append(value)
        set_sync(value, **kwargs)

    model.set_requires_gradient_sync = recording_set_sync
    for batch in data(rank, STEPS * 2):
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch).loss)
            prepared.step()
            prepared.zero_grad()
    result = compare(run_ddp(rank, accumulate=2), summary(model, opt))
    result["syncs"] = syncs[:4]
    reset_accelerate()
    return result


def _accelerate_fsdp2(accumulate: int = 2):
    """An Accelerator on accelerate's own FSDP2 route (distributed type forced: CPU)."""
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    from integration_helpers import reset_accelerate

    reset_accelerate()
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["RobertaLayer"],
    )
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin, gradient_accumulation_steps=accumulate)
    _force_accelerate_fsdp(accelerator, plugin)
    return accelerator


def _accelerate_steps(accelerator, model, prepared, micro, first: int, last: int) -> None:
    """Optimizer steps first+1..last, two micro-batches each, through accumulate()."""
    for batch in micro[2 * first : 2 * last]:
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch).loss)
            prepared.step()
            prepared.zero_grad()


def scenario_accelerate_fsdp2_resume(rank: int, cache: dict, scratch: Path) -> dict:
    """accelerator.save_state / load_state under FSDP2 (torch's get_/set_optimizer_state_dict
    through DCP, which keep only `state` and `param_groups`): saved mid-warm-up (step 3 of
    K = 4) and after it (step 6), each resumed in fresh objects (other initial weights), run to
    the end, and compared with the uninterrupted run that saved them."""
    from integration_helpers import reset_accelerate

    micro = data(rank, STEPS * 2)
    accelerator = _accelerate_fsdp2()
    model = tiny_lora_model(seed=0, dtype=torch.float32)
    opt = FisherAdamW(model, **FW)
    model, prepared = accelerator.prepare(model, opt)
    saved = {}
    for first, last in ((0, 3), (3, 6), (6, STEPS)):
        _accelerate_steps(accelerator, model, prepared, micro, first, last)
        if last < STEPS:
            saved[last] = str(scratch / f"accelerate-{last}")
            accelerator.save_state(saved[last])
    full = summary(model, opt)
    result: dict = {}
    for step, path in saved.items():
        accelerator = _accelerate_fsdp2()
        fresh = tiny_lora_model(seed=1, dtype=torch.float32)  # other weights: the load matters
        fresh_opt = FisherAdamW(fresh, **FW)
        fresh, fresh_prepared = accelerator.prepare(fresh, fresh_opt)
        accelerator.load_state(path)
        step_after_load = fresh_opt.fisher_weighting.step
        _accelerate_steps(accelerator, fresh, fresh_prepared, micro, step, STEPS)
        result[f"step_{step}"] = {
            **compare(full, summary(fresh, fresh_opt)),
            "step_after_load": step_after_load,
            "entry_in_live_groups": any("fwlora" in g for g in fresh_opt.param_groups),
        }
    reset_accelerate()
    return result
