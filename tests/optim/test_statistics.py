"""The gradient statistic: exact paths against autograd, the sketch, accumulation, GradScaler."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import spearmanr

from fwlora import FisherAdamW
from fwlora.optim.statistics import exact_sq_norm, sketch_sq_norm
from tiny import batches, loss_of, reference_sq_norms, tiny_lora_model


@given(
    tokens=st.integers(1, 40),
    d_in=st.integers(1, 24),
    d_out=st.integers(1, 24),
    seed=st.integers(0, 10_000),
)
def test_exact_statistic_both_paths_equal_the_weight_gradient(tokens, d_in, d_out, seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(tokens, d_out, generator=gen, dtype=torch.float64)
    x = torch.randn(tokens, d_in, generator=gen, dtype=torch.float64)
    expected = (g.T @ x).pow(2).sum()
    torch.testing.assert_close(exact_sq_norm(g, x), expected, rtol=1e-10, atol=1e-12)


def test_sketch_is_unbiased():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(50, 20, generator=gen, dtype=torch.float64)
    x = torch.randn(50, 30, generator=gen, dtype=torch.float64)
    exact = exact_sq_norm(g, x)
    draws = torch.stack(
        [
            sketch_sq_norm(g, x, torch.randn(30, 8, generator=gen, dtype=torch.float64))
            for _ in range(4000)
        ]
    )
    # Mean of 4000 draws: standard error ≈ sqrt(2/8)/sqrt(4000) ≈ 0.8 % of the exact value.
    assert float(draws.mean() / exact) == pytest.approx(1.0, abs=0.04)


def test_hooks_record_exact_weight_gradient_norms():
    model = tiny_lora_model(seed=11)
    batch = batches(1)[0]
    expected = reference_sq_norms(model, batch)
    opt = FisherAdamW(model, lr=0.0, warmup=3, alpha=0.5)
    opt.zero_grad()
    loss_of(model, batch).backward()
    opt.step()
    fisher = list(opt.fisher.values())  # F = (1 - α)·g after one step
    assert fisher == pytest.approx([0.5 * v for v in expected], rel=1e-10)


def test_accumulation_without_the_option_sums_micro_batch_statistics_and_warns_once():
    """accumulation_steps=1 with several backward passes per step: g_m is the sum of the
    micro-batch statistics, and one warning names the cause and the way out."""
    model = tiny_lora_model(seed=12)
    micro = batches(3, seed=4)
    expected = [sum(v) for v in zip(*(reference_sq_norms(model, b) for b in micro))]
    opt = FisherAdamW(model, lr=0.0, warmup=3, alpha=0.5)
    opt.zero_grad()
    for b in micro:
        loss_of(model, b).backward()
    with pytest.warns(RuntimeWarning, match=r"3 backward passes.*accumulation_steps=N"):
        opt.step()
    assert opt.fisher_weighting.step == 1  # one optimizer step, not three
    assert list(opt.fisher.values()) == pytest.approx([0.5 * v for v in expected], rel=1e-10)
    opt.zero_grad()
    for b in micro[:2]:
        loss_of(model, b).backward()
    opt.step()  # once per optimizer: no second warning (filterwarnings=error)


@pytest.mark.parametrize("n_micro", [2, 4])
def test_accumulation_steps_give_the_norm_of_the_accumulated_gradient(n_micro):
    model = tiny_lora_model(seed=12)
    micro = batches(n_micro, seed=4)
    expected = reference_sq_norms(model, *micro)  # of the accumulated gradient
    per_pass = [sum(v) for v in zip(*(reference_sq_norms(model, b) for b in micro))]
    assert max(abs(a / b - 1) for a, b in zip(per_pass, expected)) > 1e-3  # not the same
    opt = FisherAdamW(model, lr=0.0, warmup=3, alpha=0.5, accumulation_steps=n_micro)
    for _ in range(2):  # two steps: the accumulators start afresh at each
        opt.zero_grad()
        for b in micro:
            loss_of(model, b).backward()
        opt.step()
    # F = (1 - α)·g + α·(1 - α)·g = 0.75·g after two equal steps.
    assert list(opt.fisher.values()) == pytest.approx([0.75 * v for v in expected], rel=1e-12)
    assert not opt.fisher_weighting.statistics._acc


def test_sketch_accumulation_sketches_the_accumulated_gradient():
    """accumulation_steps=2 over 2 micro-batches = one backward of the summed loss (same Ω)."""
    micro = batches(2, seed=5)
    accumulated_model, summed_model = tiny_lora_model(seed=15), tiny_lora_model(seed=15)
    kw = {"lr": 0.0, "warmup": 3, "alpha": 0.5, "estimator": "sketch", "sketch_dim": 4}
    accumulated = FisherAdamW(accumulated_model, accumulation_steps=2, **kw)
    summed = FisherAdamW(summed_model, **kw)
    accumulated.zero_grad()
    for b in micro:
        loss_of(accumulated_model, b).backward()
    accumulated.step()
    summed.zero_grad()
    (loss_of(summed_model, micro[0]) + loss_of(summed_model, micro[1])).backward()
    summed.step()
    got, want = list(accumulated.fisher.values()), list(summed.fisher.values())
    assert got == pytest.approx(want, rel=1e-12)
    assert all(v > 0 for v in want)


def test_eval_forward_between_warmup_steps_allocates_no_accumulator():
    model = tiny_lora_model(seed=16)
    data = batches(3, seed=6)
    expected = [reference_sq_norms(model, b) for b in data[:2]]
    opt = FisherAdamW(model, lr=0.0, warmup=3, alpha=0.5)
    stats = opt.fisher_weighting.statistics
    allocated = []
    fold = stats._fold
    stats._fold = lambda: (allocated.extend(stats._acc), fold())  # type: ignore[method-assign]
    for i, b in enumerate(data[:2]):
        opt.zero_grad()
        loss_of(model, b).backward()
        opt.step()
        with torch.no_grad():
            loss_of(model, data[2])  # evaluation between steps
        if i == 0:
            assert stats._calls == [0] * len(stats.matrices)
    assert not stats.shared and not allocated
    # F = α·(1 - α)·g1 + (1 - α)·g2
    want = [0.25 * a + 0.5 * b for a, b in zip(*expected)]
    assert list(opt.fisher.values()) == pytest.approx(want, rel=1e-10)


def test_sketch_importances_rank_like_exact_ones():
    data = batches(12, batch_size=8, seed=6)
    exact_model, sketch_model = tiny_lora_model(seed=13), tiny_lora_model(seed=13)
    kw = {"lr": 0.0, "warmup": 12, "alpha": 0.9}
    exact = FisherAdamW(exact_model, **kw)
    sketch = FisherAdamW(sketch_model, estimator="sketch", sketch_dim=16, **kw)
    for model, opt in ((exact_model, exact), (sketch_model, sketch)):
        for b in data:
            opt.zero_grad()
            loss_of(model, b).backward()
            opt.step()
    a, b = list(exact.importance.values()), list(sketch.importance.values())
    assert spearmanr(a, b).statistic > 0.8


def test_grad_scaler_statistics_are_unscaled_and_skipped_steps_unobserved():
    data = batches(3, seed=8)
    plain_model, scaled_model = (tiny_lora_model(seed=14, dtype=torch.float32) for _ in range(2))
    plain = FisherAdamW(plain_model, lr=0.0, warmup=2, alpha=0.5)
    scaled = FisherAdamW(scaled_model, lr=0.0, warmup=2, alpha=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled.use_grad_scaler(scaler)

    plain.zero_grad()
    loss_of(plain_model, data[0]).backward()
    plain.step()

    # A step whose gradients overflow: the scaler skips it, so it is not observed.
    scaled.zero_grad()
    scaler.scale(loss_of(scaled_model, data[1]) * float("inf")).backward()
    scaler.step(scaled)
    scaler.update()
    assert scaled.fisher_weighting.step == 0

    scaled.zero_grad()
    scaler.scale(loss_of(scaled_model, data[0])).backward()
    scaler.step(scaled)
    scaler.update()
    assert scaled.fisher_weighting.step == 1
    assert list(scaled.fisher.values()) == pytest.approx(list(plain.fisher.values()), rel=1e-4)
