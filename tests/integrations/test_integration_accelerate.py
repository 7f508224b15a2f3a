"""accelerate (`Accelerator.prepare`): accumulation counts optimizer steps and, with
`use_accelerator_settings`, g_m is the squared norm of the step's accumulated gradient; the
AcceleratedOptimizer wrapper keeps hooks, state and the GradScaler; bf16 / fp16 autocast;
FSDP and DeepSpeed are refused; the model may move."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer

from fwlora import FisherAdamW, adamw_param_groups, attach_fisher
from fwlora.integrations import find_fisher_weighting, save_importances, use_accelerator_settings
from integration_helpers import reset_accelerate
from tiny import batches, loss_of, reference_sq_norms, tiny_lora_model


@pytest.fixture(autouse=True)
def _clean_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def _accumulate(accelerator, model, opt, micro):
    for batch in micro:
        with accelerator.accumulate(model):
            accelerator.backward(loss_of(model, batch))
            opt.step()
            opt.zero_grad()


def test_accumulation_counts_optimizer_steps_and_measures_the_accumulated_gradient():
    micro = batches(6, seed=4)
    model = tiny_lora_model(seed=12)
    reference = copy.deepcopy(model)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=3)
    model, opt = accelerator.prepare(model, FisherAdamW(model, lr=0.0, warmup=2, alpha=0.5))
    assert isinstance(opt, AcceleratedOptimizer)
    fw = use_accelerator_settings(opt)
    assert fw is find_fisher_weighting(opt) and fw.options.accumulation_steps == 3

    _accumulate(accelerator, model, opt, micro[:3])
    assert fw.step == 1 and fw.phase == "warmup"  # one optimizer step, not three
    # g_m = ‖Σ_i ∂ℓ_i/∂W_m‖²_F, the step's accumulated weight gradient, with ℓ_i the loss each
    # backward differentiated: accelerate divides it by the accumulation steps.
    expected = reference_sq_norms(reference, *micro[:3], factor=1 / 3)
    assert list(fw.fisher.values()) == pytest.approx([0.5 * v for v in expected], rel=1e-9)
    # Not the sum of the per-micro-batch statistics (what accumulation_steps=1 records).
    per_micro = [reference_sq_norms(_Scaled(reference, 1 / 3), b) for b in micro[:3]]
    summed = [sum(v) for v in zip(*per_micro)]
    assert list(fw.fisher.values()) != pytest.approx([0.5 * v for v in summed], rel=1e-3)

    _accumulate(accelerator, model, opt, micro[3:])
    assert fw.step == 2 and fw.phase == "frozen"
    # The state travels through the wrapper's state_dict, and loads back through it.
    state = copy.deepcopy(opt.state_dict())
    assert state["param_groups"][0]["fwlora"]["core"]["step"] == 2
    clone = copy.deepcopy(reference)
    other = accelerator.prepare(FisherAdamW(clone, lr=0.0, warmup=2, alpha=0.5))
    other.load_state_dict(state)
    assert find_fisher_weighting(other).importance == fw.importance


def test_accumulation_without_the_settings_sums_micro_batch_statistics_and_warns():
    """Without use_accelerator_settings FW-LoRA sees 3 backward passes per step: it warns
    (once) and records Σ_i ‖∂ℓ_i/∂W_m‖²_F, which depends on how the batch is split."""
    micro = batches(3, seed=4)
    model = tiny_lora_model(seed=12)
    reference = copy.deepcopy(model)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=3)
    model, opt = accelerator.prepare(model, FisherAdamW(model, lr=0.0, warmup=2, alpha=0.5))
    fw = find_fisher_weighting(opt)
    with pytest.warns(RuntimeWarning, match="3 backward passes in one optimizer step"):
        _accumulate(accelerator, model, opt, micro)
    assert fw.step == 1
    per_micro = [reference_sq_norms(_Scaled(reference, 1 / 3), b) for b in micro]
    expected = [sum(v) for v in zip(*per_micro)]
    assert list(fw.fisher.values()) == pytest.approx([0.5 * v for v in expected], rel=1e-9)


class _Scaled(torch.nn.Module):
    """`model` whose loss is multiplied by `factor` (what accelerator.backward does)."""

    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, **batch):
        out = self.model(**batch)
        out.loss = out.loss * self.factor
        return out


def test_attached_weighting_steps_through_accelerated_optimizer():
    """accelerate calls step(None); the hook-attached FW-LoRA accepts it and matches
    FisherAdamW."""
    data = batches(4)
    a, b = tiny_lora_model(seed=1), tiny_lora_model(seed=1)
    accelerator = Accelerator(cpu=True)
    ours = accelerator.prepare(FisherAdamW(a, lr=1e-2, warmup=2, lam=0.5, foreach=False))
    plain = torch.optim.AdamW(adamw_param_groups(b, 1e-2), lr=1e-2, foreach=False)
    fw = attach_fisher(plain, b, warmup=2, lam=0.5)
    plain = accelerator.prepare(plain)
    for batch in data:
        for model, opt in ((a, ours), (b, plain)):
            opt.zero_grad()
            accelerator.backward(loss_of(model, batch))
            opt.step()
    assert fw.step == 4 and fw.importance == find_fisher_weighting(ours).importance
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_grad_scaler_through_the_wrapper_unscales_and_skips():
    """fp16 loss scaling as accelerate does it: AcceleratedOptimizer(scaler=...) calls
    scaler.step(optimizer); statistics are unscaled, an overflowing step is not observed."""
    data = batches(2, seed=8)
    plain_model = tiny_lora_model(seed=14, dtype=torch.float32)
    scaled_model = tiny_lora_model(seed=14, dtype=torch.float32)
    plain = FisherAdamW(plain_model, lr=0.0, warmup=2, alpha=0.5)
    Accelerator(cpu=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    opt = AcceleratedOptimizer(
        FisherAdamW(scaled_model, lr=0.0, warmup=2, alpha=0.5), scaler=scaler
    )
    fw = use_accelerator_settings(opt)

    plain.zero_grad()
    loss_of(plain_model, data[0]).backward()
    plain.step()

    opt.zero_grad()
    scaler.scale(loss_of(scaled_model, data[1]) * float("inf")).backward()
    opt.step()
    assert opt.step_was_skipped and fw.step == 0

    opt.zero_grad()
    scaler.scale(loss_of(scaled_model, data[0])).backward()
    opt.step()
    assert not opt.step_was_skipped and fw.step == 1
    assert list(fw.fisher.values()) == pytest.approx(list(plain.fisher.values()), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_statistics_close_to_fp32(dtype):
    """bf16 and fp16 (+ GradScaler) autocast on CPU: statistics close to fp32 ones."""
    data = batches(3, seed=5)
    ref_model, amp_model = (tiny_lora_model(seed=15, dtype=torch.float32) for _ in range(2))
    ref = FisherAdamW(ref_model, lr=1e-2, warmup=3, alpha=0.5)
    amp = FisherAdamW(amp_model, lr=1e-2, warmup=3, alpha=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=dtype == torch.float16)
    amp.use_grad_scaler(scaler)
    for batch in data:
        ref.zero_grad()
        loss_of(ref_model, batch).backward()
        ref.step()
        amp.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = loss_of(amp_model, batch)
        scaler.scale(loss).backward()
        scaler.step(amp)
        scaler.update()
    assert amp.fisher_weighting.step == 3 and amp.fisher_weighting.skipped == 0
    a = torch.tensor(list(ref.fisher.values()))
    b = torch.tensor(list(amp.fisher.values()))
    torch.testing.assert_close(b, a, rtol=0.1, atol=0.0)


def test_fp16_statistic_does_not_overflow_where_the_step_does_not():
    """Few tokens → the Gram path (G Gᵀ), whose fp16 entries overflow at a loss scale the
    LoRA gradients survive; the statistic of fp16 gradients is taken in fp32."""
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.out = torch.nn.Linear(64, 64), torch.nn.Linear(64, 1)

        def forward(self, x):
            return self.out(self.lin(x)).square().mean()

    def build():
        torch.manual_seed(0)
        lora = LoraConfig(r=2, target_modules=["lin"], init_lora_weights=False)
        model = get_peft_model(Net(), lora)
        return model, FisherAdamW(model, lr=0.0, warmup=2, alpha=0.5)

    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0)) * 4
    ref_model, ref = build()
    ref_model(x).backward()
    ref.step()
    model, opt = build()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt.use_grad_scaler(scaler)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(x)
    scaler.scale(loss).backward()
    scaler.step(opt)
    assert opt.fisher_weighting.step == 1 and opt.fisher_weighting.skipped == 0
    assert list(opt.fisher.values()) == pytest.approx(list(ref.fisher.values()), rel=1e-3)


def test_bf16_accelerator_prepare():
    model = tiny_lora_model(seed=16, dtype=torch.float32)
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model, opt = accelerator.prepare(model, FisherAdamW(model, lr=1e-2, warmup=2, lam=0.5))
    for batch in batches(3):
        with accelerator.autocast():
            loss = loss_of(model, batch)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
    fw = use_accelerator_settings(opt)  # no scaler under bf16: a no-op
    assert fw.phase == "frozen" and all(v > 0 for v in fw.importance.values())


def test_model_moved_after_the_optimizer_was_built(tmp_path):
    """Trainer and accelerate move the model after FisherAdamW saw it (CPU → GPU); the
    cached penalty coefficients follow. A dtype change stands in for the device move."""
    model = tiny_lora_model(seed=17, dtype=torch.float64)
    opt = FisherAdamW(model, lr=1e-2, warmup=1, lam=0.5)
    model.to(torch.float32)
    for batch in batches(3):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    assert opt.penalty_value().dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    path = save_importances(opt, tmp_path)
    assert path.name == "fwlora_importance.json" and path.exists()


@pytest.mark.parametrize("var", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_fsdp_and_deepspeed_are_refused(monkeypatch, var):
    model = tiny_lora_model()
    opt = FisherAdamW(model, warmup=2)  # built before the launcher's flag is seen ...
    monkeypatch.setenv(var, "true")
    name = "FSDP" if "FSDP" in var else "DeepSpeed"
    opt.zero_grad()
    loss_of(model, batches(1)[0]).backward()
    with pytest.raises(ValueError, match=f"{name}: not supported"):
        opt.step()  # ... refused at the first step
    with pytest.raises(ValueError, match=f"{name}: not supported"):
        FisherAdamW(tiny_lora_model(), warmup=2)


def test_sharded_factors_are_refused():
    model = tiny_lora_model()
    opt = FisherAdamW(model, warmup=2)
    first = opt.fisher_weighting.matrices[0]
    first.lora_A.ds_id = 0  # how DeepSpeed ZeRO-3 marks a partitioned parameter
    with pytest.raises(ValueError, match=r"DeepSpeed: .* ZeRO-partitioned"):
        FisherAdamW(model, warmup=2)
    del first.lora_A.ds_id
    # An optimizer whose params were swapped for flat shards after FW-LoRA was bound.
    opt.param_groups[0]["params"] = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="no longer updates the LoRA factors"):
        opt.step()
