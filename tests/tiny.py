"""Tiny random-initialised RoBERTa + peft LoRA models and batches for unit tests."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import RobertaConfig, RobertaForSequenceClassification

TARGETS = ["query", "key", "value", "intermediate.dense", "output.dense"]
VOCAB = 64
SEQ = 12


def tiny_lora_model(
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    layers: int = 2,
    rank: int = 4,
    random_b: bool = True,
):
    """A 2-layer RoBERTa (hidden 16) with LoRA on the paper's target modules.

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
        target_modules=TARGETS,
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


def loss_of(model, batch) -> torch.Tensor:
    return model(**batch).loss


def lora_names(model) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
