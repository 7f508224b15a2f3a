"""roberta-shaped peft models with random weights for the benchmarks (no downloads)."""

from __future__ import annotations

import warnings

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from transformers import RobertaConfig, RobertaForSequenceClassification

TARGETS = ["query", "key", "value", "intermediate.dense", "output.dense"]


def roberta_config(full: bool) -> RobertaConfig:
    """The real roberta-base config (full) or a smaller one that a 2-core CPU can time."""
    if full:
        return RobertaConfig(
            vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, num_labels=2
        )
    return RobertaConfig(
        vocab_size=1000,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=130,
        type_vocab_size=1,
        num_labels=2,
    )


def build(method: str, full: bool, dev: torch.device, total_steps: int = 1000, rank: int = 8):
    torch.manual_seed(0)
    base = RobertaForSequenceClassification(roberta_config(full))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "adalora":
            cfg = AdaLoraConfig(
                task_type="SEQ_CLS",
                init_r=int(rank * 1.5),
                target_r=rank,
                lora_alpha=2 * rank,
                target_modules=TARGETS,
                total_step=total_steps,
                tinit=0,
                tfinal=0,
                deltaT=1,
            )
        else:
            cfg = LoraConfig(
                task_type="SEQ_CLS",
                r=rank,
                lora_alpha=2 * rank,
                lora_dropout=0.0,
                target_modules=TARGETS,
            )
        model = get_peft_model(base, cfg)
    return model.to(dev)


def batch(full: bool, dev: torch.device, batch_size: int | None = None, seq: int | None = None):
    cfg = roberta_config(full)
    bs = batch_size or (32 if full else 8)
    length = seq or (128 if full else 64)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, cfg.vocab_size, (bs, length), generator=gen)
    labels = torch.randint(0, 2, (bs,), generator=gen)
    return {
        "input_ids": ids.to(dev),
        "attention_mask": torch.ones_like(ids).to(dev),
        "labels": labels.to(dev),
    }
