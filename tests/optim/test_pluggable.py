"""The Fisher mechanism on other optimizers: torch AdamW (foreach, fused), SGD, LoRA+."""

from __future__ import annotations

import pytest
import torch
from peft.optimizers import create_loraplus_optimizer

from fwlora import FisherAdamW, adamw_param_groups, attach_fisher
from reference import ReferenceFWLoRA
from tiny import batches, loss_of, tiny_lora_model


def _run(model, opt, data):
    for batch in data:
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()


@pytest.mark.parametrize("flavour", [{"foreach": True}, {"foreach": False}, {"fused": True}])
def test_attached_to_torch_adamw_equals_fisher_adamw(flavour):
    data = batches(6)
    a, b = tiny_lora_model(seed=1), tiny_lora_model(seed=1)
    ours = FisherAdamW(a, lr=1e-2, warmup=2, lam=0.5, foreach=False)
    plain = torch.optim.AdamW(adamw_param_groups(b, 1e-2), lr=1e-2, **flavour)
    fw = attach_fisher(plain, b, warmup=2, lam=0.5)
    _run(a, ours, data)
    _run(b, plain, data)
    assert fw.importance == pytest.approx(ours.importance, rel=1e-12)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)


def test_attached_to_sgd_matches_literal_reference_penalty():
    """SGD + FW-LoRA equals SGD on L_task + λ Σ (1 - I) ‖ΔW‖² via autograd after warm-up."""
    data = batches(5)
    a, b = tiny_lora_model(seed=2), tiny_lora_model(seed=2)
    sgd = torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=0.1)
    fw = attach_fisher(sgd, a, warmup=2, lam=0.5, alpha=0.9)
    ref = ReferenceFWLoRA(b, lr=0.0, warmup=2, lam=0.5, alpha=0.9)  # for F, I and the loss
    ref_sgd = torch.optim.SGD(
        [p for n, p in b.named_parameters() if p.requires_grad and "base_layer" not in n], lr=0.1
    )
    for batch in data:
        sgd.zero_grad()
        loss_of(a, batch).backward()
        sgd.step()
        ref.step(batch)  # lr=0: only bookkeeping and gradients
        ref_sgd.step()  # applies the reference's gradients (penalty inside the loss)
    assert fw.importance == pytest.approx(ref.importance(), rel=1e-10)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if "base_layer" not in name:
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)


def test_attached_to_loraplus_optimizer():
    model = tiny_lora_model(seed=3)
    opt = create_loraplus_optimizer(
        model, optimizer_cls=torch.optim.AdamW, lr=1e-2, loraplus_lr_ratio=4.0
    )
    fw = attach_fisher(opt, model, warmup=2, lam=0.5)
    _run(model, opt, batches(4))
    assert fw.phase == "frozen" and fw.step == 4
    assert sum(fw.importance.values()) == pytest.approx(1.0)
