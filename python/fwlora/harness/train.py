"""One training run: data → adapters → optimizer → per-epoch evaluation → run artefacts.

A run directory holds `config.yaml` (resolved settings), `checkpoint.pt` (after every epoch,
for --resume), `predictions.json`, `fwlora_importance.json` (FW-LoRA) and `metrics.json`
(written last: its `status: complete` marks a finished run).

This module is the run loop; a run's other jobs live beside it: `batching` (token ids →
padded batches), `evaluation`, `checkpoint` (save and restore for --resume), `resources`
(device, threads, seeds, peak memory) and `progress` (bars or plain lines).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fwlora.harness import methods
from fwlora.harness.batching import Encoded
from fwlora.harness.checkpoint import (
    CHECKPOINT,
    PARTIAL_PREDICTIONS,
    load_checkpoint,
    load_partial_predictions,
    save_checkpoint,
    save_partial_predictions,
)
from fwlora.harness.config import RunConfig, save_config
from fwlora.harness.data import TaskData, load_task
from fwlora.harness.errors import HarnessError
from fwlora.harness.evaluation import evaluate
from fwlora.harness.methods import Method, fisher_warmup_steps
from fwlora.harness.metrics import classification_metrics, primary_metric
from fwlora.harness.models import AdapterInfo, attach_adapters, load_backbone
from fwlora.harness.progress import say, steps
from fwlora.harness.resources import PeakMemory, cpu_threads, pick_device, seed_everything
from fwlora.harness.run_metrics import COMPLETE, RUN_SCHEMA, RunMetrics, write_run


def run_name(cfg: RunConfig, model_display: str, task: str) -> str:
    """File-safe run name in the paper's style: `{label}-{model}--{task}-seed{seed}`."""
    raw = f"{cfg.label}-{model_display}--{task}-seed{cfg.seed}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", raw)


def planned_run_name(cfg: RunConfig) -> str:
    """The run's name before anything is loaded (model and task names only)."""
    from fwlora.harness.models import resolve_model

    task = Path(cfg.train_file).stem if cfg.task == "file" and cfg.train_file else cfg.task
    return run_name(cfg, resolve_model(cfg.model)[1], task)


# Below this ‖∇P‖/‖∇L_task‖ the penalty barely changes training (issue 10).
WEAK_PENALTY_RATIO = 1e-2


def penalty_message(ratio: float | None, lam: float | None) -> str | None:
    """A plain warning when the penalty's gradient is negligible next to the task's."""
    if ratio is None or not lam or ratio >= WEAK_PENALTY_RATIO:
        return None
    return (
        f"penalty barely changes training at λ={lam:g}: its gradient is {ratio:.1e} of the "
        f"task gradient (median over the penalised steps; < {WEAK_PENALTY_RATIO:g})"
    )


def build_optimizer(model, cfg: RunConfig, total_steps: int):
    """The optimizer of cfg.method (from its definition in `methods`)."""
    return methods.get(cfg.method).optimizer(model, cfg, total_steps)


@dataclass
class RunState:
    """What one run holds while it trains (built by `setup_run`)."""

    cfg: RunConfig
    run_dir: Path
    data: TaskData
    name: str
    model_display: str
    device: torch.device
    bf16: bool
    model: Any
    adapters: AdapterInfo
    optimizer: Any
    scheduler: Any
    train_data: Encoded
    eval_data: Encoded
    steps_per_epoch: int
    total_steps: int
    fisher_k: int | None
    notes: list[str]

    @property
    def method(self) -> Method:
        return methods.get(self.cfg.method)


def train_run(
    cfg: RunConfig, run_dir: Path, data: TaskData | None = None, resume: bool = False
) -> RunMetrics:
    """Trains one run into `run_dir` and returns its metrics (also in run_dir/metrics.json)."""
    with cpu_threads(cfg.num_threads):
        return _train_run(cfg, run_dir, data, resume)


def _train_run(cfg: RunConfig, run_dir: Path, data: TaskData | None, resume: bool) -> RunMetrics:
    run = setup_run(cfg, run_dir, data)
    progress = _restore(run, resume)
    saved = load_partial_predictions(run_dir) if progress["epoch"] > 0 else None
    best_preds, final_preds = saved if saved is not None else (None, None)
    elapsed_before = progress["elapsed_sec"]
    # ‖∇P‖/‖∇L_task‖ of the penalised steps before a resume (the optimizer's read-out
    # starts afresh with the process).
    ratios_before = list(progress.get("penalty_grad_ratios", []))
    started = time.perf_counter()  # runtime = training + evaluation, not model loading
    with PeakMemory(run.device) as memory:
        for epoch in range(progress["epoch"] + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            train_loss, train_acc = _train_epoch(run, epoch, progress)
            train_time = time.perf_counter() - t0
            row, preds = _evaluate_epoch(run, epoch) if _evaluates(cfg, epoch) else ({}, None)
            row.update(
                epoch=epoch,
                global_step=progress["global_step"],
                lr=run.scheduler.get_last_lr()[0],
                train_loss=train_loss,
                train_acc=train_acc,
                train_time_sec=train_time,
                wall_clock_sec=elapsed_before + (time.perf_counter() - started),
                peak_memory_mb=memory.peak_mb(),
                peak_memory_kind=memory.kind,
            )
            if run.method.fisher:
                row["fisher_phase"] = run.optimizer.phase
                # One host transfer per epoch (the optimizer keeps them on the device).
                progress["penalty_grad_ratios"] = (
                    ratios_before + run.optimizer.penalty_grad_ratios()
                )
            progress["history"].append(row)
            progress["elapsed_sec"] = row["wall_clock_sec"]
            primary = "eval_" + primary_metric(run.data.name)
            scored = [h[primary] for h in progress["history"] if primary in h]
            if preds is not None:
                if best_preds is None or row[primary] >= max(scored):
                    best_preds = preds
                final_preds = preds
                save_partial_predictions(run_dir, best_preds, final_preds)
            progress["epoch"] = epoch
            state = run.method.state
            extra = {state.key: state.save(run.model)} if state else None
            save_checkpoint(
                run_dir / CHECKPOINT, run.model, run.optimizer, run.scheduler, progress, extra
            )
            say(_epoch_line(run, row), cfg.quiet)
    if final_preds is None or best_preds is None:  # finished checkpoint, predictions deleted
        raise HarnessError(
            f"run {run_dir}: its checkpoint is after the last epoch but its predictions are "
            "missing (metrics.json or predictions were deleted); delete this run folder to "
            "train the run again"
        )
    return _finish(run, progress, best_preds, final_preds)


def batch_order(seed: int, epoch: int, examples: int) -> np.ndarray:
    """The order in which epoch `epoch` (1-based) of a run with `seed` visits its training
    examples: the one definition every user of the run loop (targeting's warm-up, the
    benchmarks) shares, so their steps are the run's steps."""
    return np.random.default_rng(seed * 1009 + epoch).permutation(examples)


def setup_run(cfg: RunConfig, run_dir: Path, data: TaskData | None) -> RunState:
    """Data, backbone, adapters, optimizer and schedule of a run (and its config.yaml):
    the public start of the run loop (`train_step` takes its steps)."""
    from transformers import get_linear_schedule_with_warmup

    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    data = data or load_task(cfg)
    tokenizer, backbone, model_display = load_backbone(cfg, data.num_labels)
    name = run_name(cfg, model_display, data.name)
    device, bf16 = pick_device(cfg)
    train_data = Encoded(tokenizer, data.train, cfg.max_length)
    eval_data = Encoded(tokenizer, data.eval, cfg.max_length)
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    model, adapters = attach_adapters(backbone, cfg, total_steps)
    model.to(device)
    optimizer = build_optimizer(model, cfg, total_steps)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps
    )
    save_config(cfg, run_dir / "config.yaml")
    notes = list(data.notes)
    fisher = methods.get(cfg.method).fisher
    fisher_k = fisher_warmup_steps(cfg, total_steps) if fisher else None
    if fisher_k is not None and fisher_k >= total_steps:
        note = (
            f"K={fisher_k} >= total steps {total_steps}: importances never freeze and the "
            "Fisher term is never applied (this run equals plain LoRA)"
        )
        notes.append(note)
        say(f"[{name}] warning: {note}; lower --fisher-warmup or set --fisher-warmup-fraction")
    return RunState(
        cfg,
        run_dir,
        data,
        name,
        model_display,
        device,
        bf16,
        model,
        adapters,
        optimizer,
        scheduler,
        train_data,
        eval_data,
        steps_per_epoch,
        total_steps,
        fisher_k,
        notes,
    )


def _restore(run: RunState, resume: bool) -> dict[str, Any]:
    """The run's progress: restored from its checkpoint on --resume, else a fresh one."""
    checkpoint = run.run_dir / CHECKPOINT
    if resume and checkpoint.is_file():
        state = run.method.state
        restore = {state.key: state.load} if state else None
        progress = load_checkpoint(checkpoint, run.model, run.optimizer, run.scheduler, restore)
        say(f"[{run.name}] resuming after epoch {progress['epoch']}", run.cfg.quiet)
        return progress
    return {"epoch": 0, "global_step": 0, "history": [], "step_losses": [], "elapsed_sec": 0.0}


def _train_epoch(run: RunState, epoch: int, progress: dict[str, Any]) -> tuple[float, float]:
    """One pass over the training split; (mean task loss, accuracy) of its batches."""
    cfg = run.cfg
    run.model.train()
    order = batch_order(cfg.seed, epoch, len(run.train_data))
    loss_sum, correct, seen = 0.0, 0, 0
    bar = steps(
        range(run.steps_per_epoch), desc=f"{run.name} epoch {epoch}/{cfg.epochs}", quiet=cfg.quiet
    )
    after_step = run.method.after_step
    for i in bar:
        index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        step_loss, step_correct = train_step(run, run.train_data.batch(index, run.device))
        progress["global_step"] += 1
        if after_step is not None:  # e.g. AdaLoRA's budget step
            after_step(run.model, progress["global_step"])
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        progress["step_losses"].append(step_loss)
        loss_sum += step_loss * len(index)
        correct += step_correct
        seen += len(index)
        bar.set_postfix(loss=f"{step_loss:.4f}")
    return loss_sum / seen, correct / seen


def train_step(run: RunState, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Forward, backward and optimizer step on one batch: (task loss, correct predictions).
    The caller steps the schedule and zeroes the gradients (as `_train_epoch` does)."""
    labels = batch["labels"]
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        out = run.model(**batch)
    logits = out.logits.float()
    task_loss = F.cross_entropy(logits, labels)
    out.loss.backward()  # AdaLoRA's orthogonal regulariser is part of out.loss
    run.optimizer.step()
    return task_loss.item(), int((logits.argmax(-1) == labels).sum().item())


def _evaluates(cfg: RunConfig, epoch: int) -> bool:
    """Whether this epoch ends with an evaluation (every epoch, or only the last)."""
    return cfg.evaluate == "every-epoch" or epoch == cfg.epochs


def _evaluate_epoch(run: RunState, epoch: int) -> tuple[dict[str, Any], np.ndarray]:
    """The evaluation row of an epoch (without its training figures) and the predictions."""
    t1 = time.perf_counter()
    eval_loss, preds = evaluate(
        run.model,
        run.eval_data,
        run.cfg,
        run.device,
        run.bf16,
        desc=f"{run.name} eval {epoch}/{run.cfg.epochs}",
    )
    m = classification_metrics(run.eval_data.labels, preds, run.data.num_labels)
    row = {
        "epoch": epoch,
        "eval_loss": eval_loss,
        "eval_acc": m["acc"],
        "eval_f1": m["f1"],
        "eval_mcc": m["mcc"],
        "eval_macro_f1": m["macro_f1"],
        "eval_recall": m["recall"],
        "confusion_matrix": m["confusion_matrix"],
        "eval_time_sec": time.perf_counter() - t1,
    }
    return row, preds


def _epoch_line(run: RunState, row: dict[str, Any]) -> str:
    if "eval_acc" not in row:
        return (
            f"[{run.name}] epoch {row['epoch']}: train_loss {row['train_loss']:.4f} "
            f"({row['train_time_sec']:.1f}s; evaluated after the last epoch only)"
        )
    return (
        f"[{run.name}] epoch {row['epoch']}: train_loss {row['train_loss']:.4f} "
        f"eval_acc {row['eval_acc']:.4f} eval_f1 {row['eval_f1']:.4f} "
        f"eval_macro_f1 {row['eval_macro_f1']:.4f} eval_mcc {row['eval_mcc']:.4f} "
        f"({row['train_time_sec']:.1f}s + {row['eval_time_sec']:.1f}s eval)"
    )


def _finish(
    run: RunState, progress: dict[str, Any], best_preds: np.ndarray, final_preds: np.ndarray
) -> RunMetrics:
    """metrics.json, predictions.json and the method's own records (e.g. the importance
    file) of a finished run."""
    cfg, run_dir = run.cfg, run.run_dir
    # Every method record's key, null unless the run's method records it.
    extras: dict[str, Any] = dict.fromkeys(methods.record_keys())
    for record in run.method.records:
        extras[record.key] = record.build(run, progress)
    metrics = _run_metrics(run, progress, extras)
    predictions = {
        "run": run.name,
        "labels": run.eval_data.labels.tolist(),
        "final": final_preds.tolist(),
        "best": best_preds.tolist(),
        "best_epoch": metrics.best_epoch,
        "final_epoch": cfg.epochs,
    }
    (run_dir / "predictions.json").write_text(json.dumps(predictions))
    write_run(run_dir, metrics)
    # Last: until metrics.json exists, --resume needs the partial predictions.
    (run_dir / PARTIAL_PREDICTIONS).unlink(missing_ok=True)
    return metrics


def _run_metrics(run: RunState, progress: dict[str, Any], extras: dict[str, Any]) -> RunMetrics:
    cfg, data, history = run.cfg, run.data, progress["history"]
    primary = primary_metric(data.name)
    evaluated = [h for h in history if "eval_acc" in h]  # evaluate="final": the last only
    best = max(evaluated, key=lambda h: (h[f"eval_{primary}"], h["epoch"]))  # ties: later
    final = history[-1]
    return RunMetrics(
        schema=RUN_SCHEMA,
        status=COMPLETE,
        run=run.name,
        label=cfg.label,
        method=cfg.method,
        task=data.name,
        model=cfg.model,
        model_display=run.model_display,
        seed=cfg.seed,
        primary_metric=primary,
        best_epoch=best["epoch"],
        best_eval_acc=max(h["eval_acc"] for h in evaluated),
        best_eval_mcc=max(h["eval_mcc"] for h in evaluated),
        best_eval_f1=max(h["eval_f1"] for h in evaluated),
        final_eval_acc=final["eval_acc"],
        final_eval_f1=final["eval_f1"],
        final_eval_mcc=final["eval_mcc"],
        final_eval_macro_f1=final["eval_macro_f1"],
        final_eval_recall=final["eval_recall"],
        final_confusion_matrix=final["confusion_matrix"],
        final_eval_loss=final["eval_loss"],
        final_train_loss=final["train_loss"],
        final_train_acc=final["train_acc"],
        runtime_sec=final["wall_clock_sec"],
        train_time_sec=sum(h["train_time_sec"] for h in history),
        peak_memory_mb=max(h["peak_memory_mb"] for h in history),
        peak_memory_kind=final["peak_memory_kind"],
        total_steps=run.total_steps,
        device=run.device.type,
        precision="bf16" if run.bf16 else "fp32",
        torch_version=torch.__version__,
        adapters=run.adapters.to_dict(),
        data=data.summary(),
        epochs=history,
        train_loss_steps=progress["step_losses"],
        config=cfg.to_dict(),
        notes=run.notes,
        extras=extras,
    )
