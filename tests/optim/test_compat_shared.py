"""Issue 9, item 1: a LoRA module called several times per forward, and tied weights.

g_m must be ‖∂L/∂W_m‖²_F of the *summed* gradient of each backward pass, checked against
W_m.grad read directly; with accumulation_steps=N, of the gradient accumulated over the step's
N backward passes (with the default 1: the sum over passes, and a warning).
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


def accumulatedreference_sq_norms(model, passes) -> dict[str, float]:
    """‖Σ_b ∂L_b/∂W_m‖²_F: W_m trainable, W_m.grad accumulated over every pass of the step."""
    from compat_models import lora_layers

    weights = {n: m.get_base_layer().weight for n, m in lora_layers(model)}
    for w in weights.values():
        w.requires_grad_(True)
        w.grad = None
    try:
        for loss_fn in passes:
            loss_fn().backward()
        return {n: w.grad.double().pow(2).sum().item() for n, w in weights.items()}
    finally:
        for w in weights.values():
            w.requires_grad_(False)
            w.grad = None
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("calls", [2, 4])
def test_layer_called_several_times_per_forward_is_exact(calls):
    model = shared_llama(calls)
    batch = lm_batches(1)[0]
    passes = [lambda: model(**batch).loss]
    assert_close_dicts(fisher_sq_norms(model, passes), reference_sq_norms(model, passes))


@pytest.mark.parametrize("n_micro", [2, 4])
def test_albert_shared_layers_with_accumulation_are_exact(n_micro):
    model = tiny_albert(layers=4)
    data = cls_batches(n_micro)
    passes = [lambda b=b: model(**b).loss for b in data]
    assert_close_dicts(
        fisher_sq_norms(model, passes, accumulation_steps=n_micro),
        accumulatedreference_sq_norms(model, passes),
        rel=1e-12,
    )


@pytest.mark.parametrize("n_micro", [2, 4])
def test_shared_layer_with_accumulation_steps_is_the_accumulated_gradient(n_micro):
    model = shared_llama(2)
    data = lm_batches(n_micro)
    passes = [lambda b=b: model(**b).loss for b in data]
    expected = accumulatedreference_sq_norms(model, passes)
    per_pass = reference_sq_norms(model, passes)
    assert max(abs(per_pass[n] / expected[n] - 1) for n in expected) > 1e-3
    got = fisher_sq_norms(model, passes, accumulation_steps=n_micro)
    assert_close_dicts(got, expected, rel=1e-12)


def test_accumulation_without_the_option_sums_passes_and_warns():
    model = tiny_albert(layers=2)
    data = cls_batches(2)
    passes = [lambda b=b: model(**b).loss for b in data]
    with pytest.warns(RuntimeWarning, match=r"2 backward passes in one optimizer step"):
        got = fisher_sq_norms(model, passes)
    assert_close_dicts(got, reference_sq_norms(model, passes))


@pytest.mark.parametrize("n_micro", [1, 2])
@pytest.mark.parametrize("reentrant", [False, True])
def test_shared_layer_under_gradient_checkpointing_is_exact(reentrant, n_micro):
    """Reentrant checkpointing's nested backward passes are not extra passes: no warning
    with one pass per step (filterwarnings=error)."""
    model = shared_llama(3)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        model.enable_input_require_grads()
    model.train()
    data = lm_batches(n_micro)
    passes = [lambda b=b: model(**b).loss for b in data]
    assert_close_dicts(
        fisher_sq_norms(model, passes, accumulation_steps=n_micro),
        accumulatedreference_sq_norms(model, passes),
        rel=1e-12,
    )


@pytest.mark.parametrize("reentrant", [False, True])
def test_eval_forward_under_checkpointing_allocates_no_accumulator(reentrant):
    """A no_grad forward between warm-up steps counts no call (no out × in accumulator),
    also with gradient checkpointing on (eval mode and train mode)."""
    model = tiny_llama(targets=["q_proj", "v_proj", "embed_tokens"])
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        model.enable_input_require_grads()
    a, b = lm_batches(2)
    expected = [reference_sq_norms(model, [lambda x=x: model(**x).loss]) for x in (a, b)]
    opt = FisherAdamW(model, lr=0.0, weight_decay=0.0, warmup=3, alpha=0.5)
    stats = opt.fisher_weighting.statistics
    for x in (a, b):
        model.train()
        opt.zero_grad()
        model(**x).loss.backward()
        opt.step()
        with torch.no_grad():
            model(**b)  # train-mode no_grad forward (checkpointing active)
            model.eval()
            model(**a)  # evaluation
    assert stats._calls == [0] * len(stats.matrices)
    assert not stats.shared
    got = opt.fisher
    want = {n: 0.25 * expected[0][n] + 0.5 * expected[1][n] for n in got}
    assert_close_dicts(got, want)


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
    with pytest.warns(RuntimeWarning, match="2 backward passes"):
        opt.step()
    assert_close_dicts({k: 2.0 * v for k, v in opt.fisher.items()}, expected)


@pytest.mark.parametrize("calls", [2, 3])
def test_zero_grad_between_forward_and_backward_keeps_the_call_count(calls):
    """The loop `loss = model(b).loss; opt.zero_grad(); loss.backward(); opt.step()`."""
    model = shared_llama(calls)
    data = lm_batches(2)
    expected = [reference_sq_norms(model, [lambda b=b: model(**b).loss]) for b in data]
    opt = FisherAdamW(model, lr=0.0, weight_decay=0.0, warmup=3, alpha=0.5)
    for b in data:
        loss = model(**b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    want = {n: 0.25 * expected[0][n] + 0.5 * expected[1][n] for n in expected[0]}
    assert_close_dicts(opt.fisher, want)


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
