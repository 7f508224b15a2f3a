"""estimator="adapter": ĝ from the LoRA factors' own gradients, no hooks.

Where A's rows (and B's columns) are orthonormal up to a scale and r equals the fan-in (and
fan-out), ‖GᵀX·Aᵀ‖² = c²‖GᵀX‖² exactly, so the estimate must equal the exact statistic; that
is the case built here (LoRA on q, k, v of a hidden-16 model with r = 16).
"""

from __future__ import annotations

import pytest
import torch

from fwlora import FisherAdamW
from tiny import batches, loss_of, tiny_lora_model


def _square_lora_model(orthogonal_b: bool):
    # q, k, v of the hidden-16 model with r = 16: every factor is square.
    model = tiny_lora_model(rank=16, random_b=False, targets=["query", "key", "value"])
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
