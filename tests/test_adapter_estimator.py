"""estimator="adapter": ĝ from the LoRA factors' own gradients, no hooks.

Where A's rows (and B's columns) are orthonormal up to a scale and r equals the fan-in (and
fan-out), ‖GᵀX·Aᵀ‖² = c²‖GᵀX‖² exactly, so the estimate must equal the exact statistic; that
is the case built here (LoRA on q, k, v of a hidden-16 model with r = 16).
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import RobertaConfig, RobertaForSequenceClassification

from fwlora import FisherAdamW
from tiny import SEQ, VOCAB, batches, loss_of


def _square_lora_model(orthogonal_b: bool):
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ + 4,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    lora = LoraConfig(
        task_type="SEQ_CLS", r=16, lora_alpha=8, target_modules=["query", "key", "value"]
    )
    model = get_peft_model(RobertaForSequenceClassification(config), lora).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or ("lora_B" in name and orthogonal_b):
                q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
                p.copy_(0.3 * q)
    return model


def _fisher_after(model, estimator: str, steps: int) -> dict[str, float]:
    # lr = 0: the factors keep their (orthogonal / zero) structure at every step.
    opt = FisherAdamW(model, lr=0.0, weight_decay=0.0, warmup=steps + 1, estimator=estimator)
    for batch in batches(steps):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    assert opt.fisher_weighting.statistics.attached is (estimator != "adapter")
    return opt.fisher


@pytest.mark.parametrize("orthogonal_b", [False, True], ids=["B=0: ĝ_B", "B≠0: mean of ĝ_B, ĝ_A"])
def test_adapter_estimate_is_exact_for_orthonormal_square_factors(orthogonal_b):
    exact = _fisher_after(_square_lora_model(orthogonal_b), "exact", 3)
    estimate = _fisher_after(_square_lora_model(orthogonal_b), "adapter", 3)
    assert set(exact) == set(estimate)
    for name, value in exact.items():
        assert value > 0 and estimate[name] == pytest.approx(value, rel=1e-9), name


def test_adapter_estimator_places_no_hooks_and_freezes_importances():
    model = _square_lora_model(False)
    opt = FisherAdamW(model, lr=1e-3, warmup=2, estimator="adapter")
    assert not any(m._forward_hooks for m in model.modules())
    for batch in batches(3):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    assert opt.phase == "frozen" and sum(opt.importance.values()) == pytest.approx(1.0)
