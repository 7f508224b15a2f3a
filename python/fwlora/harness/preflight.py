"""Every check a set of runs needs before the disk is touched: settings (already validated by
RunConfig), task, data, model, target modules and device. A refused experiment writes nothing."""

from __future__ import annotations

import math
from typing import Any

import torch

from fwlora.harness import budget, methods
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


# A tokenizer's model_max_length above this is transformers' "no limit" placeholder.
NO_LIMIT = 10**9


def check_max_length(cfg: RunConfig, config: Any, tokenizer: Any, pairs: bool) -> None:
    """max_length within what the model takes: no more tokens than its position embeddings
    (or its tokenizer's model_max_length), and room for at least one token of text (of each
    text of a pair) beside the special tokens; below that the tokenizer does not truncate."""
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    known = [int(n) for n in limits if isinstance(n, int) and 0 < n < NO_LIMIT]
    high = min(known) if known else None
    low = tokenizer.num_special_tokens_to_add(pair=pairs) + (2 if pairs else 1)
    if low <= cfg.max_length and (high is None or cfg.max_length <= high):
        return
    expected = f"an integer in [{low}, {high}]" if high else f"an integer >= {low}"
    if high is not None and cfg.max_length > high:
        why = f"is more than model {cfg.model} takes ({high} tokens)"
    else:
        specials = low - (2 if pairs else 1)
        why = f"leaves no room for text beside the {specials} special tokens its tokenizer adds"
    raise HarnessError(f"max_length: {cfg.max_length} {why}; expected {expected}")


def check_model(cfg: RunConfig, num_labels: int, pairs: bool = False) -> None:
    """A dry load of cfg.model: its config and tokenizer (against which max_length is
    checked), and its modules built on the meta device (no weights, no memory), against which
    the target modules and the fully trained modules are resolved."""
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    library_bars_off()
    source, _ = resolve_model(cfg.model)
    try:
        config = AutoConfig.from_pretrained(source, num_labels=num_labels)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HarnessError(
            f"model {cfg.model}: cannot load its configuration or tokenizer ({first})"
        ) from None
    check_max_length(cfg, config, tokenizer, pairs)
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


def optimizer_steps(cfg: RunConfig, train_examples: int) -> int:
    """The optimizer steps a run of `cfg` takes on `train_examples` examples."""
    return math.ceil(train_examples / cfg.batch_size) * cfg.epochs


def check_steps(cfg: RunConfig, train_examples: int) -> None:
    """Refuses, before any output, a run its method cannot take in so few steps (its
    `min_steps`, e.g. AdaLoRA's 2)."""
    steps = optimizer_steps(cfg, train_examples)
    method = methods.get(cfg.method)
    if steps < method.min_steps:
        article = "an" if method.title[0].lower() in "aeiou" else "a"
        raise HarnessError(
            f"epochs: {article} {method.title} run needs at least {method.min_steps} optimizer "
            f"steps; this one has {steps} ({train_examples} training examples, batch_size "
            f"{cfg.batch_size}, epochs {cfg.epochs}); raise epochs or lower batch_size"
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
    for cfg in configs:
        check_steps(cfg, len(data[data_key(cfg)].train))
    checked: set[Any] = set()
    for cfg in configs:
        num_labels = data[data_key(cfg)].num_labels
        pairs = data[data_key(cfg)].train.text_pairs is not None
        modules = (tuple(cfg.target_modules), tuple(cfg.modules_to_save or ()))
        key = (cfg.model, modules, num_labels, cfg.max_length, pairs)
        if key not in checked:
            check_model(cfg, num_labels, pairs)
            checked.add(key)
    return data
