"""Issue 9, item 2: switching the active adapter after the optimizer exists is an error."""

from __future__ import annotations

import pytest
from peft import LoraConfig

from compat_models import lm_batches, tiny_llama
from fwlora import FisherAdamW, find_adapter_matrices
from fwlora.optim.targets import ActiveAdapterGuard, check_active_adapters


def _two_adapter_model():
    model = tiny_llama(targets=["q_proj", "v_proj"])
    model.add_adapter("b", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    return model


def test_check_active_adapters_names_module_adapters_and_way_out():
    model = _two_adapter_model()
    matrices = find_adapter_matrices(model)
    assert {m.adapter for m in matrices} == {"default"}
    check_active_adapters(matrices)  # unchanged: fine
    model.set_adapter("b")
    with pytest.raises(
        ValueError,
        match=r"q_proj changed from 'default'.*\['b'\].*set_adapter\('default'\).*new optimizer",
    ):
        check_active_adapters(matrices)
    model.set_adapter("default")
    check_active_adapters(matrices)


def test_step_after_set_adapter_raises_and_leaves_the_factors_alone():
    """Needs the lead's call of check_active_adapters at the start of every step()."""
    model = _two_adapter_model()
    batch = lm_batches(1)[0]
    opt = FisherAdamW(model, lr=1e-2, warmup=1, lam=1.0)
    opt.zero_grad()
    model(**batch).loss.backward()
    opt.step()  # warm-up done: the penalty applies from the next step
    model.set_adapter("b")
    factors = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    opt.zero_grad()
    model(**batch).loss.backward()
    with pytest.raises(ValueError, match=r"active adapter of .* changed from 'default'"):
        opt.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert all((a == b).all() for a, b in zip(after, factors))


def test_guard_sees_one_layer_switched_and_switched_back():
    """The per-step guard skips the full check while no layer's active adapter was reassigned;
    set_adapter on a single layer is still caught, at every step until it is undone."""
    model = _two_adapter_model()
    matrices = find_adapter_matrices(model)
    guard = ActiveAdapterGuard()
    guard.check(matrices)
    guard.check(matrices)  # unchanged: the cheap path
    layer = matrices[1]
    layer.module.set_adapter("b")
    for _ in range(2):
        with pytest.raises(ValueError, match=rf"{layer.name} changed from 'default'"):
            guard.check(matrices)
    layer.module.set_adapter("default")
    guard.check(matrices)
    model.set_adapter("b")
    with pytest.raises(ValueError, match=r"changed from 'default'"):
        guard.check(matrices)
