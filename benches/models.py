"""roberta-shaped peft models with random weights for the benchmarks (no downloads)."""

from __future__ import annotations

import copy
import os
import warnings

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from transformers import RobertaConfig, RobertaForSequenceClassification

# The paper's targets. peft matches suffixes, so "output.dense" adapts both
# attention.output.dense (768 → 768) and the FFN's output.dense (3072 → 768):
# q, k, v, attention.output, intermediate, output = 6 matrices per layer, 72 on roberta-base.
TARGETS = ["query", "key", "value", "intermediate.dense", "output.dense"]
RANK = 8
# AdaLoRA as the project's harness runs it (fwlora.harness.config): init_r = 1.5·r, target_r = r,
# orthogonal regularisation 0.5, budget re-allocation every delta_t steps.
ADALORA_INIT_R = 12
ADALORA_ORTH_REG = 0.5

_BASES: dict[tuple, RobertaForSequenceClassification] = {}


def tiny() -> bool:
    """BENCH_TINY=1 (gpu.sh --dry-run): every model and batch shrunk to a smoke-test size."""
    return os.environ.get("BENCH_TINY") == "1"


def roberta_config(full: bool) -> RobertaConfig:
    """The real roberta-base config (full) or a smaller one that a 2-core CPU can time
    (BENCH_TINY=1: a tiny one either way)."""
    if tiny():
        return RobertaConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=130,
            type_vocab_size=1,
            num_labels=2,
        )
    if full:
        return RobertaConfig(
            vocab_size=50265,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            num_labels=2,
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


def _base(full: bool, dev: torch.device) -> RobertaForSequenceClassification:
    """One randomly initialised backbone per (config, device); every case deep-copies it,
    so all methods start from the same weights and the costly init runs once."""
    key = (full, str(dev))
    if key not in _BASES:
        torch.manual_seed(0)
        with torch.device(dev):
            _BASES[key] = RobertaForSequenceClassification(roberta_config(full))
    return _BASES[key]


def build(
    method: str,
    full: bool,
    dev: torch.device,
    *,
    total_steps: int = 10**6,
    delta_t: int = 10,
    rank: int = RANK,
):
    """peft model: method "lora" (LoRA r=8, α=16, no dropout) or "adalora" (same targets)."""
    base = copy.deepcopy(_base(full, dev))
    torch.manual_seed(1)  # the same adapter init for every case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "adalora":
            # The budget phase for the whole measured window (tinit = 0, tfinal = 0, a long
            # total_step): every step updates the importance EMAs, every delta_t-th one also
            # masks to the budget, as in real training between tinit and total - tfinal.
            cfg = AdaLoraConfig(
                task_type="SEQ_CLS",
                init_r=ADALORA_INIT_R,
                target_r=rank,
                lora_alpha=2 * rank,
                lora_dropout=0.0,
                target_modules=TARGETS,
                total_step=total_steps,
                tinit=0,
                tfinal=0,
                deltaT=delta_t,
                orth_reg_weight=ADALORA_ORTH_REG,
            )
        elif method == "lora":
            cfg = LoraConfig(
                task_type="SEQ_CLS",
                r=rank,
                lora_alpha=2 * rank,
                lora_dropout=0.0,
                target_modules=TARGETS,
            )
        else:
            raise ValueError(f"method: expected 'lora' or 'adalora', got {method!r}")
        model = get_peft_model(base, cfg)
    return model.to(dev)


def lora_shapes_model(dev: torch.device, seed: int = 0):
    """roberta-base with LoRA (r = 8) for timing optimizer steps only.

    The 125 M-parameter backbone is frozen and never read by an optimizer step, so it is
    allocated without initialisation (meta device, then `to_empty`); the trainable tensors
    (72 LoRA pairs of the real shapes and the classifier head) get random values, B ≠ 0
    so that the penalty's products are not of zeros.
    """
    with torch.device("meta"):
        base = RobertaForSequenceClassification(roberta_config(True))
    base = base.to_empty(device=dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = LoraConfig(
            task_type="SEQ_CLS",
            r=RANK,
            lora_alpha=2 * RANK,
            lora_dropout=0.0,
            target_modules=TARGETS,
        )
        model = get_peft_model(base, cfg)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.02, generator=gen)
    return model


def batch(full: bool, dev: torch.device, batch_size: int | None = None, seq: int | None = None):
    """Synthetic tokens: roberta-base runs (full) use batch 32 × 128 tokens, CPU 8 × 64."""
    cfg = roberta_config(full)
    bs = batch_size or (4 if tiny() else 32 if full else 8)
    length = seq or (16 if tiny() else 128 if full else 64)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, cfg.vocab_size, (bs, length), generator=gen)
    labels = torch.randint(0, 2, (bs,), generator=gen)
    return {
        "input_ids": ids.to(dev),
        "attention_mask": torch.ones_like(ids).to(dev),
        "labels": labels.to(dev),
    }


def largest_weight_grad_bytes(model) -> int:
    """One layer's weight gradient: the largest adapted (out × in) frozen weight, in the
    dtype its gradient would have (the parameter's, fp32 here, also under bf16 autocast)."""
    return max(
        m.base_layer.weight.numel() * m.base_layer.weight.element_size()
        for m in model.modules()
        if hasattr(m, "base_layer") and hasattr(m, "lora_A")
    )
