"""Unit tests of optim/decoupled.py: which optimizers have a decoupled decay, and the
per-adapter scaling of AdamW's decay by (1 - I_m)."""

from __future__ import annotations

import pytest
import torch

from fwlora import find_adapter_matrices
from fwlora.optim.decoupled import has_decoupled_decay, scale_decoupled_decay
from tiny import tiny_lora_model


def _matrices(seed=0):
    model = tiny_lora_model(seed=seed)
    return model, find_adapter_matrices(model)


def test_decoupled_decay_is_scaled_per_adapter_and_skips_factors_without_gradient():
    _, matrices = _matrices(seed=2)
    params = [p for m in matrices for p in (m.lora_A, m.lora_B)]
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.2)
    for p in params:
        p.grad = torch.zeros_like(p)
    matrices[0].lora_A.grad = None  # AdamW neither updates nor decays it
    before = [p.detach().clone() for p in params]
    weights = [0.25] * len(matrices)
    scale_decoupled_decay(opt, matrices, weights, scale=1.0)
    ratio = (1 - 0.1 * 0.2 * 0.25) / (1 - 0.1 * 0.2)
    for p, old in zip(params, before):
        expected = old if p.grad is None else old * ratio
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0.0)


def test_which_optimizers_have_a_decoupled_decay():
    p = torch.nn.Parameter(torch.ones(2))
    assert has_decoupled_decay(torch.optim.AdamW([p]))
    assert not has_decoupled_decay(torch.optim.SGD([p], lr=0.1))
    assert not has_decoupled_decay(torch.optim.Adam([p]))
    assert has_decoupled_decay(torch.optim.Adam([p], decoupled_weight_decay=True))


def test_scaled_decay_is_exactly_adamw_with_the_decay_times_the_weight():
    """One AdamW step after the scaling = one AdamW step with wd·weight·scale (the claim)."""
    _, matrices = _matrices(seed=3)
    params = [p for m in matrices for p in (m.lora_A, m.lora_B)]
    grads = [torch.randn_like(p) for p in params]
    twins = [p.detach().clone().requires_grad_(True) for p in params]
    weights = [0.1 * (i + 1) for i in range(len(matrices))]
    opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.3)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    scale_decoupled_decay(opt, matrices, weights, scale=0.5)
    opt.step()
    for i, (twin, g) in enumerate(zip(twins, grads)):
        wd = 0.3 * weights[i // 2] * 0.5
        ref = torch.optim.AdamW([twin], lr=0.05, weight_decay=wd)
        twin.grad = g.clone()
        ref.step()
        torch.testing.assert_close(params[i].detach(), twin.detach(), rtol=1e-12, atol=1e-15)


def test_a_decay_that_would_flip_signs_is_refused():
    _, matrices = _matrices()
    params = [p for m in matrices for p in (m.lora_A, m.lora_B)]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(params, lr=2.0, weight_decay=0.5)
    with pytest.raises(ValueError, match=r"lr \* weight_decay = 1\.0 >= 1"):
        scale_decoupled_decay(opt, matrices, [0.5] * len(matrices), scale=1.0)
