"""Issue 9, item 1: a LoRA module called several times per forward, and tied weights.

g_m must be ‖∂L/∂W_m‖²_F of the *summed* gradient of each backward pass (summed over the
backward passes of a step), checked against W_m.grad read directly.
"""

from __future__ import annotations

import pytest
import torch

from compat_models import (
    assert_close_dicts,
    cls_batches,
    fisher_sq_norms,
    lm_batches,
    reference_sq_norms,
    shared_llama,
    tiny_albert,
    tiny_llama,
)
from fwlora import FisherAdamW, find_adapter_matrices


@pytest.mark.parametrize("calls", [2, 4])
def test_layer_called_several_times_per_forward_is_exact(calls):
    model = shared_llama(calls)
    batch = lm_batches(1)[0]
    passes = [lambda: model(**batch).loss]
    assert_close_dicts(fisher_sq_norms(model, passes), reference_sq_norms(model, passes))


def test_albert_shared_layers_with_accumulation_are_exact():
    model = tiny_albert(layers=4)
    data = cls_batches(2)
    passes = [lambda b=b: model(**b).loss for b in data]
    assert_close_dicts(fisher_sq_norms(model, passes), reference_sq_norms(model, passes))


@pytest.mark.parametrize("reentrant", [False, True])
def test_shared_layer_under_gradient_checkpointing_is_exact(reentrant):
    model = shared_llama(3)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        model.enable_input_require_grads()
    model.train()
    data = lm_batches(2)
    passes = [lambda b=b: model(**b).loss for b in data]
    assert_close_dicts(fisher_sq_norms(model, passes), reference_sq_norms(model, passes))


@pytest.mark.parametrize("make", [tiny_llama, lambda: shared_llama(2)], ids=["plain", "shared"])
def test_two_forwards_then_two_backwards_count_each_backward_alone(make):
    model = make()
    data = lm_batches(2)
    expected = reference_sq_norms(model, [lambda b=b: model(**b).loss for b in data])
    opt = FisherAdamW(model, lr=0.0, weight_decay=0.0, warmup=3, alpha=0.5)
    opt.zero_grad()
    losses = [model(**b).loss for b in data]
    for loss in losses:
        loss.backward()
    opt.step()
    assert_close_dicts({k: 2.0 * v for k, v in opt.fisher.items()}, expected)


def test_one_backward_of_two_summed_forwards_is_the_norm_of_the_sum():
    """Two forwards in one loss: each module is called twice in one graph."""
    model = tiny_llama()
    a, b = lm_batches(2)
    passes = [lambda: model(**a).loss + 0.5 * model(**b).loss]
    assert_close_dicts(fisher_sq_norms(model, passes), reference_sq_norms(model, passes))


def test_grad_scaler_skipped_step_of_a_shared_layer_is_dropped():
    data = lm_batches(2, seed=3)
    plain_model, scaled_model = (
        shared_llama(2, dtype=torch.float32),
        shared_llama(2, dtype=torch.float32),
    )
    plain = FisherAdamW(plain_model, lr=0.0, weight_decay=0.0, warmup=3, alpha=0.5)
    scaled = FisherAdamW(scaled_model, lr=0.0, weight_decay=0.0, warmup=3, alpha=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    scaled.use_grad_scaler(scaler)

    plain.zero_grad()
    plain_model(**data[0]).loss.backward()
    plain.step()

    scaled.zero_grad()
    scaler.scale(scaled_model(**data[1]).loss * float("inf")).backward()
    scaler.step(scaled)  # skipped: non-finite gradients
    scaler.update()
    assert scaled.fisher_weighting.step == 0
    scaled.zero_grad()
    scaler.scale(scaled_model(**data[0]).loss).backward()
    scaler.step(scaled)
    scaler.update()
    assert scaled.fisher_weighting.step == 1
    got, want = list(scaled.fisher.values()), list(plain.fisher.values())
    assert got == pytest.approx(want, rel=1e-4)


def test_tied_lm_head_warns_and_measures_the_lora_layer_local_gradient():
    model = tiny_llama(tie=True, targets=["q_proj", "v_proj", "lm_head"])
    inner = model.base_model.model
    assert inner.lm_head.base_layer.weight is inner.model.embed_tokens.weight
    with pytest.warns(UserWarning, match=r"lm_head.*shared with.*embed_tokens.*through this LoRA"):
        find_adapter_matrices(model)
    batch = lm_batches(1)[0]
    with pytest.warns(UserWarning, match="tied weights"):
        got = fisher_sq_norms(model, [lambda: model(**batch).loss])
    # What g measures: the gradient of the lm_head use alone, i.e. that of an untied copy.
    inner.lm_head.base_layer.weight = torch.nn.Parameter(
        inner.model.embed_tokens.weight.detach().clone(), requires_grad=False
    )
    expected = reference_sq_norms(model, [lambda: model(**batch).loss])
    assert_close_dicts(got, expected)
