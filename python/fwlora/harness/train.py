"""One training run: data → adapters → optimizer → per-epoch evaluation → run artefacts.

A run directory holds `config.yaml` (resolved settings), `checkpoint.pt` (after every epoch,
for --resume), `predictions.json`, `importances.json` (FW-LoRA) and `metrics.json` (written
last: its `status: complete` marks a finished run).
"""

from __future__ import annotations

import json
import math
import platform
import random
import re
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fwlora.harness.config import RunConfig, save_config
from fwlora.harness.data import TaskData, load_task
from fwlora.harness.errors import HarnessError
from fwlora.harness.metrics import classification_metrics
from fwlora.harness.models import adalora_final_ranks, attach_adapters, load_backbone

RUN_SCHEMA = "fwlora.run-metrics/1"
CHECKPOINT = "checkpoint.pt"


def run_name(cfg: RunConfig, model_display: str, task: str) -> str:
    """File-safe run name in the paper's style: `{label}-{model}--{task}-seed{seed}`."""
    raw = f"{cfg.label}-{model_display}--{task}-seed{cfg.seed}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", raw)


def planned_run_name(cfg: RunConfig) -> str:
    """The run's name before anything is loaded (model and task names only)."""
    from fwlora.harness.models import resolve_model

    task = Path(cfg.train_file).stem if cfg.task == "file" and cfg.train_file else cfg.task
    return run_name(cfg, resolve_model(cfg.model)[1], task)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(cfg: RunConfig) -> tuple[torch.device, bool]:
    """(device, use bf16): bf16 on a GPU that supports it unless fp32 is asked for."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("device cuda: no CUDA device is available; use --device cpu")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if cfg.precision == "bf16":
        if use_cuda and not torch.cuda.is_bf16_supported():
            raise HarnessError("precision bf16: this GPU does not support bfloat16")
        return device, True
    bf16 = cfg.precision == "auto" and use_cuda and torch.cuda.is_bf16_supported()
    return device, bf16


def fisher_warmup_steps(cfg: RunConfig, total_steps: int) -> int:
    if cfg.fisher_warmup_fraction is not None:
        return max(1, round(cfg.fisher_warmup_fraction * total_steps))
    return cfg.fisher_warmup


# ----------------------------------------------------------------- batching
class Encoded:
    """Token ids of a split, padded per batch."""

    def __init__(self, tokenizer, split, max_length: int) -> None:
        enc = tokenizer(
            split.texts, split.text_pairs, truncation=True, max_length=max_length, padding=False
        )
        self.keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        self.rows = [{k: enc[k][i] for k in self.keys} for i in range(len(split))]
        self.labels = np.asarray(split.labels, dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        rows = [self.rows[i] for i in index]
        width = max(len(r["input_ids"]) for r in rows)
        out = {}
        for key in self.keys:
            fill = self.pad_id if key == "input_ids" else 0
            out[key] = torch.tensor(
                [r[key] + [fill] * (width - len(r[key])) for r in rows], device=device
            )
        out["labels"] = torch.as_tensor(self.labels[index], device=device)
        return out


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2**20 if platform.system() == "Darwin" else 2**10
    return rss / scale, "process_peak_rss"


# ----------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, data: Encoded, cfg: RunConfig, device, bf16: bool, desc: str):
    """(mean loss, predictions in the split's order)."""
    model.eval()
    lengths = np.array([len(r["input_ids"]) for r in data.rows])
    order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding
    preds = np.empty(len(data), dtype=np.int64)
    total_loss = 0.0
    starts = range(0, len(data), cfg.eval_batch_size)
    for start in tqdm(starts, desc=desc, disable=cfg.quiet, leave=False, unit="batch"):
        index = order[start : start + cfg.eval_batch_size]
        batch = data.batch(index, device)
        labels = batch.pop("labels")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**batch).logits.float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        preds[index] = logits.argmax(-1).cpu().numpy()
    return total_loss / len(data), preds


# ----------------------------------------------------------------- checkpoint
def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, scheduler, progress: dict[str, Any]) -> None:
    state = {
        "trainable": _trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
    }
    allocator = getattr(getattr(model, "base_model", None), "rankallocator", None)
    if allocator is not None:  # AdaLoRA's importance EMAs and its current rank pattern
        state["adalora"] = {
            "ipt": allocator.ipt,
            "exp_avg_ipt": allocator.exp_avg_ipt,
            "exp_avg_unc": allocator.exp_avg_unc,
            "rank_pattern": next(iter(model.peft_config.values())).rank_pattern,
        }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interruption never leaves a half-written checkpoint


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value.to(params[name].device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if "adalora" in state:
        allocator = model.base_model.rankallocator
        for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, key, state["adalora"][key])
        next(iter(model.peft_config.values())).rank_pattern = state["adalora"]["rank_pattern"]
    return state["progress"]


# ----------------------------------------------------------------- the run
def build_optimizer(model, cfg: RunConfig, total_steps: int):
    if cfg.method == "fw-lora":
        from fwlora.optim import FisherAdamW

        return FisherAdamW(
            model,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup=fisher_warmup_steps(cfg, total_steps),
            lam=cfg.fisher_lam,
            alpha=cfg.fisher_alpha,
            normalization=cfg.fisher_normalization,
            seed=cfg.seed,
        )
    from fwlora.optim import adamw_param_groups

    return torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay), lr=cfg.lr)


def train_run(
    cfg: RunConfig, run_dir: Path, data: TaskData | None = None, resume: bool = False
) -> dict[str, Any]:
    """Trains one run into `run_dir` and returns its metrics (also in run_dir/metrics.json)."""
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train_run(cfg, run_dir, data, resume)
    finally:
        torch.set_num_threads(threads)


def _train_run(
    cfg: RunConfig, run_dir: Path, data: TaskData | None, resume: bool
) -> dict[str, Any]:
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
    fisher_k = fisher_warmup_steps(cfg, total_steps) if cfg.method == "fw-lora" else None
    if fisher_k is not None and fisher_k >= total_steps:
        notes.append(
            f"K={fisher_k} >= total steps {total_steps}: importances never freeze and the "
            "Fisher term is never applied (this run equals plain LoRA)"
        )

    progress: dict[str, Any] = {"epoch": 0, "global_step": 0, "history": [], "step_losses": []}
    progress["elapsed_sec"] = 0.0
    checkpoint = run_dir / CHECKPOINT
    if resume and checkpoint.is_file():
        progress = load_checkpoint(checkpoint, model, optimizer, scheduler)
        if not cfg.quiet:
            tqdm.write(f"[{name}] resuming after epoch {progress['epoch']}")
    elif device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed_before = progress["elapsed_sec"]
    started = time.perf_counter()  # runtime = training + evaluation, not model loading
    best_preds = final_preds = None
    if progress["epoch"] > 0 and (run_dir / "predictions.partial.json").is_file():
        saved = json.loads((run_dir / "predictions.partial.json").read_text())
        best_preds, final_preds = np.array(saved["best"]), np.array(saved["final"])

    for epoch in range(progress["epoch"] + 1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = np.random.default_rng(cfg.seed * 1009 + epoch).permutation(len(train_data))
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{name} epoch {epoch}/{cfg.epochs}",
            disable=cfg.quiet,
            leave=False,
            unit="step",
        )
        for i in bar:
            batch = train_data.batch(order[i * cfg.batch_size : (i + 1) * cfg.batch_size], device)
            labels = batch["labels"]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(**batch)
            logits = out.logits.float()
            task_loss = F.cross_entropy(logits, labels)
            out.loss.backward()  # AdaLoRA's orthogonal regulariser is part of out.loss
            optimizer.step()
            progress["global_step"] += 1
            if cfg.method == "adalora":
                model.base_model.update_and_allocate(progress["global_step"])
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = task_loss.item()
            progress["step_losses"].append(step_loss)
            loss_sum += step_loss * len(labels)
            correct += int((logits.argmax(-1) == labels).sum().item())
            seen += len(labels)
            bar.set_postfix(loss=f"{step_loss:.4f}")
        train_time = time.perf_counter() - t0
        t1 = time.perf_counter()
        eval_loss, preds = evaluate(
            model, eval_data, cfg, device, bf16, desc=f"{name} eval {epoch}/{cfg.epochs}"
        )
        eval_time = time.perf_counter() - t1
        m = classification_metrics(eval_data.labels, preds, data.num_labels)
        memory, memory_kind = peak_memory_mb(device)
        progress["elapsed_sec"] = elapsed_before + (time.perf_counter() - started)
        row = {
            "epoch": epoch,
            "global_step": progress["global_step"],
            "lr": scheduler.get_last_lr()[0],
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "eval_loss": eval_loss,
            "eval_acc": m["acc"],
            "eval_f1": m["f1"],
            "eval_mcc": m["mcc"],
            "confusion_matrix": m["confusion_matrix"],
            "train_time_sec": train_time,
            "eval_time_sec": eval_time,
            "wall_clock_sec": progress["elapsed_sec"],
            "peak_memory_mb": memory,
            "peak_memory_kind": memory_kind,
        }
        if cfg.method == "fw-lora":
            row["fisher_phase"] = optimizer.phase
        progress["history"].append(row)
        primary = "eval_mcc" if data.name == "cola" else "eval_acc"
        if best_preds is None or row[primary] >= max(h[primary] for h in progress["history"]):
            best_preds = preds
        final_preds = preds
        (run_dir / "predictions.partial.json").write_text(
            json.dumps({"best": best_preds.tolist(), "final": final_preds.tolist()})
        )
        progress["epoch"] = epoch
        save_checkpoint(checkpoint, model, optimizer, scheduler, progress)
        if not cfg.quiet:
            tqdm.write(
                f"[{name}] epoch {epoch}: train_loss {row['train_loss']:.4f} "
                f"eval_acc {row['eval_acc']:.4f} eval_f1 {row['eval_f1']:.4f} "
                f"eval_mcc {row['eval_mcc']:.4f} ({train_time:.1f}s + {eval_time:.1f}s eval)"
            )

    metrics = _run_metrics(
        cfg, name, model_display, data, adapters, progress, device, bf16, total_steps, notes
    )
    metrics["fisher"] = None
    if cfg.method == "fw-lora":
        optimizer.export_json(run_dir / "importances.json")
        metrics["fisher"] = {
            "warmup_steps": fisher_k,
            "phase": optimizer.phase,
            "importance": optimizer.importance,
            "fisher": optimizer.fisher,
        }
    metrics["adalora"] = None
    if cfg.method == "adalora":
        ranks = adalora_final_ranks(model)
        metrics["adalora"] = {"final_ranks": ranks}
    assert final_preds is not None and best_preds is not None  # cfg.epochs >= 1
    predictions = {
        "run": name,
        "labels": eval_data.labels.tolist(),
        "final": final_preds.tolist(),
        "best": best_preds.tolist(),
        "best_epoch": metrics["best_epoch"],
        "final_epoch": cfg.epochs,
    }
    (run_dir / "predictions.json").write_text(json.dumps(predictions))
    (run_dir / "predictions.partial.json").unlink(missing_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _run_metrics(cfg, name, model_display, data, adapters, progress, device, bf16, total, notes):
    history = progress["history"]
    primary = "mcc" if data.name == "cola" else "acc"
    best = max(history, key=lambda h: (h[f"eval_{primary}"], h["epoch"]))  # ties: later
    final = history[-1]
    return {
        "schema": RUN_SCHEMA,
        "status": "complete",
        "run": name,
        "label": cfg.label,
        "method": cfg.method,
        "task": data.name,
        "model": cfg.model,
        "model_display": model_display,
        "seed": cfg.seed,
        "primary_metric": primary,
        "best_epoch": best["epoch"],
        "best_eval_acc": max(h["eval_acc"] for h in history),
        "best_eval_mcc": max(h["eval_mcc"] for h in history),
        "best_eval_f1": max(h["eval_f1"] for h in history),
        "final_eval_acc": final["eval_acc"],
        "final_eval_f1": final["eval_f1"],
        "final_eval_mcc": final["eval_mcc"],
        "final_eval_loss": final["eval_loss"],
        "final_train_loss": final["train_loss"],
        "final_train_acc": final["train_acc"],
        "runtime_sec": final["wall_clock_sec"],
        "train_time_sec": sum(h["train_time_sec"] for h in history),
        "peak_memory_mb": max(h["peak_memory_mb"] for h in history),
        "peak_memory_kind": final["peak_memory_kind"],
        "total_steps": total,
        "device": device.type,
        "precision": "bf16" if bf16 else "fp32",
        "torch_version": torch.__version__,
        "adapters": adapters.to_dict(),
        "data": data.summary(),
        "epochs": history,
        "train_loss_steps": progress["step_losses"],
        "config": cfg.to_dict(),
        "notes": notes,
    }
