"""Every check a set of runs needs before the disk is touched: settings (already validated by
RunConfig), task, data, model, target modules and device. A refused experiment writes nothing."""

from __future__ import annotations

from typing import Any

import torch

from fwlora.harness import budget
from fwlora.harness.config import RunConfig
from fwlora.harness.data import TASKS, TaskData, load_task
from fwlora.harness.errors import HarnessError
from fwlora.harness.models import resolve_model
from fwlora.harness.progress import library_bars_off
from fwlora.harness.resources import pick_device


def check_names(cfg: RunConfig) -> None:
    """Fails fast on an unknown task or model name."""
    if cfg.task not in TASKS:
        raise HarnessError(
            f"task: unknown task {cfg.task!r}; choose one of {', '.join(TASKS)} "
            "('file' reads --train-file/--eval-file: CSV, TSV, JSON, JSONL or parquet)"
        )
    if cfg.task == "file" and not cfg.train_file:
        raise HarnessError("task file: pass --train-file (and optionally --eval-file)")
    resolve_model(cfg.model)


def data_key(cfg: RunConfig) -> tuple:
    """Runs with equal keys read the same data."""
    return (
        cfg.task,
        cfg.train_file,
        cfg.eval_file,
        cfg.text_column,
        cfg.text_pair_column,
        cfg.label_column,
        cfg.eval_fraction if cfg.task == "file" and not cfg.eval_file else None,
        cfg.max_train_samples,
        cfg.max_eval_samples,
        cfg.seed if cfg.task == "file" and not cfg.eval_file else None,
    )


def check_model(cfg: RunConfig, num_labels: int) -> None:
    """A dry load of cfg.model: its config and tokenizer, and its modules built on the meta
    device (no weights, no memory), against which the target modules and the fully trained
    modules are resolved."""
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    library_bars_off()
    source, _ = resolve_model(cfg.model)
    try:
        config = AutoConfig.from_pretrained(source, num_labels=num_labels)
        AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HarnessError(
            f"model {cfg.model}: cannot load its configuration or tokenizer ({first})"
        ) from None
    with torch.device("meta"):
        skeleton = AutoModelForSequenceClassification.from_config(config)
    budget.target_linears(skeleton, list(cfg.target_modules))
    names = [n for n, _ in skeleton.named_modules() if n]
    unknown = [t for t in cfg.modules_to_save or [] if not any(budget.matches(n, t) for n in names)]
    if unknown:
        raise HarnessError(
            f"modules_to_save: {unknown} name no module of this model; e.g. "
            f"{', '.join(sorted({n.split('.')[-1] for n in names})[:20])}"
        )


def preflight(configs: list[RunConfig]) -> dict[tuple, TaskData]:
    """Checks every run; returns their data, read once per distinct data setting."""
    for cfg in configs:
        check_names(cfg)
        pick_device(cfg)
    data: dict[tuple, TaskData] = {}
    for cfg in configs:
        if data_key(cfg) not in data:
            data[data_key(cfg)] = load_task(cfg)
    checked: set[Any] = set()
    for cfg in configs:
        num_labels = data[data_key(cfg)].num_labels
        key = (cfg.model, tuple(cfg.target_modules), tuple(cfg.modules_to_save or ()), num_labels)
        if key not in checked:
            check_model(cfg, num_labels)
            checked.add(key)
    return data
