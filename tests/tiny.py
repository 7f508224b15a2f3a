"""The test suite's tiny models and data, all built offline in about a second.

* `tiny_lora_model` / `batches` / `TinyDataset`: a 2-layer RoBERTa (hidden 16) with LoRA on
  the paper's target modules, in memory, and random token batches — for the optimizer, the
  core and the integrations.
* `write_tiny_bert` / `write_toy_data` / `tiny_settings`: a 2-layer BERT (hidden 32) with a
  word-level tokenizer saved to a directory, a toy sentiment data set in CSV files, and the
  harness settings of a seconds-long run on them — for the harness and the CLI.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import torch
import yaml
from peft import LoraConfig, get_peft_model
from torch.utils.data import Dataset
from transformers import RobertaConfig, RobertaForSequenceClassification

TARGETS = ["query", "key", "value", "intermediate.dense", "output.dense"]
VOCAB = 64
SEQ = 12


# ------------------------------------------------------- in memory: optimizer, integrations
def tiny_lora_model(
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    layers: int = 2,
    rank: int = 4,
    random_b: bool = True,
    targets: list[str] | None = None,
):
    """A 2-layer RoBERTa (hidden 16) with LoRA on the paper's target modules (or `targets`).

    `random_b` initialises B randomly too (peft's default is B = 0), so the penalty and
    every gradient are non-trivial from the first step.
    """
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ + 4,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    base = RobertaForSequenceClassification(config)
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=TARGETS if targets is None else targets,
        init_lora_weights=not random_b,
    )
    model = get_peft_model(base, lora).to(dtype)
    return model


def batches(n: int, batch_size: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (batch_size, SEQ), generator=gen)
        mask = torch.ones_like(ids)
        mask[:, SEQ - 2 :] = torch.randint(0, 2, (batch_size, 2), generator=gen)
        labels = torch.randint(0, 2, (batch_size,), generator=gen)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


class TinyDataset(Dataset):
    """`n` examples from `batches`, one dict of (SEQ,) tensors each (for a Trainer)."""

    def __init__(self, n: int, seed: int = 1) -> None:
        rows = []
        for batch in batches(n, batch_size=1, seed=seed):
            rows.append({k: v[0] for k, v in batch.items()})
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def loss_of(model, batch) -> torch.Tensor:
    return model(**batch).loss


def lora_names(model) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]


# ------------------------------------------------------------ on disk: harness and CLI
POSITIVE = ["good", "great", "fine", "happy", "love", "excellent", "nice", "best"]
NEGATIVE = ["bad", "awful", "sad", "hate", "poor", "worst", "terrible", "ugly"]
NEUTRAL = ["the", "a", "movie", "drug", "it", "was", "is", "really", "very", "this"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def toy_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` short sentences; label 1 if positive words dominate (with 10 % label noise)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        cue = POSITIVE if label else NEGATIVE
        words = rng.sample(NEUTRAL, 3) + rng.sample(cue, 2)
        rng.shuffle(words)
        noisy = label if rng.random() > 0.1 else 1 - label
        rows.append({"text": " ".join(words), "label": noisy})
    return pd.DataFrame(rows)


def write_toy_data(directory: Path, n_train: int = 48, n_eval: int = 24) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    train, evaluation = directory / "train.csv", directory / "eval.csv"
    toy_frame(n_train, seed=1).to_csv(train, index=False)
    toy_frame(n_eval, seed=2).to_csv(evaluation, index=False)
    return train, evaluation


def write_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random BertForSequenceClassification with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + POSITIVE + NEGATIVE + NEUTRAL)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=0,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def tiny_settings(directory: Path) -> dict:
    """Settings for a seconds-long run of the tiny BERT on the toy data in `directory`."""
    model = directory / "tiny-bert"
    if not (model / "config.json").is_file():
        write_tiny_bert(model)
    train, evaluation = write_toy_data(directory / "toy-data")
    return {
        "model": str(model),
        "task": "file",
        "train_file": str(train),
        "eval_file": str(evaluation),
        "epochs": 2,
        "batch_size": 8,
        "eval_batch_size": 16,
        "max_length": 16,
        "lr": 5e-3,
        "fisher_warmup": 4,
        "rank": 4,
        "quiet": True,
        "device": "cpu",
        "num_threads": 1,  # a 32-wide model: thread hand-offs would cost more than they save
    }


def settings_flags(settings: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """The CLI flags that give `settings` (True → a bare flag), leaving out `skip`."""
    out: list[str] = []
    for key, value in settings.items():
        if key in skip:
            continue
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def as_written_before_evaluate(out):
    """`out` as fwlora wrote it before the `evaluate` setting (plan format 1)."""
    return as_written_before(out, ("evaluate", "trainable_modules"), None)


def as_written_before_trainable_modules(out):
    """`out` as the release before `trainable_modules` wrote it (plan format 2)."""
    return as_written_before(out, ("trainable_modules",), 2)


def as_written_before(out, keys, fmt):
    """`out` without the settings `keys`, with format line `fmt` (None: no format line)."""
    plan = yaml.safe_load((out / "experiment.yaml").read_text())
    assert plan.pop("format") == 3 and list(plan) == ["runs"]
    defaults = {"evaluate": "every-epoch", "trainable_modules": None}
    for run in plan["runs"]:
        for key in keys:
            assert run.pop(key) == defaults[key]
    if fmt is not None:
        plan["format"] = fmt
    (out / "experiment.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    for path in (out / "runs").glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        for key in keys:
            del metrics["config"][key]
        path.write_text(json.dumps(metrics))
    return plan


def reference_sq_norms(model, *batches, factor: float = 1.0):
    """‖∂L/∂W_m‖² by turning requires_grad on for every W_m (what the hooks avoid); with
    several batches, of the gradient accumulated over them, ‖Σ_b ∂(factor·L_b)/∂W_m‖²."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        m.base_layer.weight.requires_grad_(True)
    model.zero_grad()
    for batch in batches:
        loss = loss_of(model, batch)
        (loss if factor == 1.0 else loss * factor).backward()
    values = [m.base_layer.weight.grad.pow(2).sum().item() for m in layers]
    for m in layers:
        m.base_layer.weight.requires_grad_(False)
        m.base_layer.weight.grad = None
    model.zero_grad()
    return values
