"""lam="auto": λ calibrated once, at the first penalised step, to a target ‖∇P‖/‖∇L_task‖."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from fwlora import FisherAdamW, FisherCore, FisherCoreError, FisherWeighting, attach_fisher
from fwlora.optim.calibration import DEFAULT_TARGET_RATIO
from tiny import batches, loss_of, tiny_lora_model

K = 3


def _step(model, opt, batch):
    opt.zero_grad()
    loss_of(model, batch).backward()
    opt.step()


def _factors(opt):
    fw = getattr(opt, "fisher_weighting", opt)  # FisherAdamW, or a FisherWeighting
    return [p for m in fw.matrices for p in (m.lora_A, m.lora_B)]


def _norm(tensors) -> float:
    return float(sum(t.double().square().sum() for t in tensors) ** 0.5)


def _record_task_sq(opt, fw=None) -> list[float | None]:
    """‖∇L_task‖² over the LoRA factors at every step() call, read before FW-LoRA's hook."""
    seen: list[float | None] = []
    factors = _factors(fw or opt)

    def record(optimizer, args, kwargs):
        grads = [p.grad for p in factors if p.grad is not None]
        seen.append(_norm(grads) ** 2 if grads else None)

    handle = opt.register_step_pre_hook(record)
    # before FisherWeighting's own pre-hook (attach_fisher), if any
    opt._optimizer_step_pre_hooks.move_to_end(handle.id, last=False)
    return seen


def _average(task_sq, alpha=0.98) -> float:
    """The bias-corrected EMA of the finite values: the calibration's task scale."""
    ema = weight = 0.0
    for g in task_sq:
        if g is not None and math.isfinite(g):
            ema, weight = alpha * ema + (1 - alpha) * g, alpha * weight + (1 - alpha)
    return ema / weight


def _first_ratio(seen, target) -> float:
    """The documented ratio at the calibration step, when it was the last step() recorded."""
    return target * (_average(seen[:-1]) / seen[-1]) ** 0.5


def _reference_lam(opt, target: float, average: float) -> float:
    """target·sqrt(average)/‖∇P_{λ=1}‖ with ∇P by autograd, at the current weights."""
    fw = opt.fisher_weighting
    terms = []
    for m, i in zip(fw.matrices, fw.core.importance):
        a = m.lora_A.detach().clone().requires_grad_(True)
        b = m.lora_B.detach().clone().requires_grad_(True)
        p = (1.0 - i) * m.scaling**2 * (b @ a).square().sum()
        terms.extend(torch.autograd.grad(p, (a, b)))
    return target * average**0.5 / _norm(terms)


def _calibration_step(normalization="sum", schedule="constant", target=0.2, seed=3):
    """Trains K steps, then the first penalised one; the independently measured
    ‖∇P‖/‖∇L_task‖ of that step (grads after the penalty minus the task grads) and λ."""
    model = tiny_lora_model(seed=seed)
    extra = {"ramp_steps": 4} if schedule == "ramp" else {}
    opt = FisherAdamW(
        model,
        lr=1e-2,
        warmup=K,
        lam="auto",
        target_ratio=target,
        normalization=normalization,
        schedule=schedule,
        **extra,
    )
    data = batches(K + 1, seed=seed)
    seen = _record_task_sq(opt)
    for batch in data[:K]:
        _step(model, opt, batch)
    assert opt.lam is None
    opt.zero_grad()
    loss_of(model, data[K]).backward()
    task = [p.grad.clone() for p in _factors(opt)]
    average = _average(seen)  # steps 1..K
    expected_lam = _reference_lam(opt, target, average)
    opt.step()  # AdamW leaves .grad as the penalty left it
    penalty = [p.grad - g for p, g in zip(_factors(opt), task)]
    # the documented relation: ratio at the calibration step = target·sqrt(Ĝ)/‖∇L_task‖
    expected_ratio = target * average**0.5 / _norm(task)
    return opt, _norm(penalty) / _norm(task) / expected_ratio, expected_lam


@pytest.mark.parametrize("normalization", ["sum", "max", "uniform"])
def test_calibration_is_exact(normalization):
    opt, measured_over_expected, expected_lam = _calibration_step(normalization)
    assert measured_over_expected == pytest.approx(1.0, rel=1e-6)
    assert opt.lam == pytest.approx(expected_lam, rel=1e-9)


def test_ramp_calibrates_against_the_full_strength_penalty():
    opt, measured_over_expected, _ = _calibration_step(schedule="ramp")
    constant, _, _ = _calibration_step(schedule="constant")
    assert opt.lam == constant.lam  # same weights and grads up to K + 1: the same λ
    scale = opt.fisher_weighting.core.schedule_scale(K + 1)
    assert scale < 1 and measured_over_expected == pytest.approx(scale, rel=1e-6)


def test_auto_then_frozen_equals_the_same_lambda_given_by_hand():
    data = batches(K + 5)
    model, twin = tiny_lora_model(seed=1), tiny_lora_model(seed=1)
    auto = FisherAdamW(model, lr=1e-2, warmup=K, lam="auto", target_ratio=0.5)
    for batch in data:
        _step(model, auto, batch)
    fixed = FisherAdamW(twin, lr=1e-2, warmup=K, lam=auto.lam)
    for batch in data:
        _step(twin, fixed, batch)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
    assert auto.penalty_grad_ratios() == fixed.penalty_grad_ratios()
    assert len(set(auto.penalty_grad_ratios())) > 1  # a constant λ, not a controller


def test_read_outs_before_and_after_calibration(tmp_path):
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=K, lam="auto")
    assert (opt.lam, opt.target_ratio) == (None, DEFAULT_TARGET_RATIO)
    for batch in batches(K + 1):
        _step(model, opt, batch)
    summary = json.loads(opt.export_json(tmp_path / "fw.json").read_text())
    assert summary["lam"] == opt.lam > 0
    assert summary["target_ratio"] == DEFAULT_TARGET_RATIO
    assert summary["options"]["lam"] == "auto"
    fixed = FisherAdamW(tiny_lora_model(), warmup=K, lam=0.01)
    assert (fixed.lam, fixed.target_ratio) == (0.01, None)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"lam": 0.01, "target_ratio": 0.1}, "target_ratio"),
        ({"target_ratio": 0.1}, "target_ratio"),
        ({"lam": "auto", "target_ratio": 0.0}, "target_ratio"),
        ({"lam": "auto", "target_ratio": 10.5}, "target_ratio"),
        ({"lam": "auto", "target_ratio": -1.0}, "target_ratio"),
        ({"lam": "auto", "target_ratio": float("nan")}, "target_ratio"),
        ({"lam": "auto", "target_ratio": "0.1"}, "target_ratio"),
        ({"lam": "automatic"}, "lam"),
        ({"lam": "auto", "penalty": "decoupled"}, "lam"),
    ],
)
def test_bad_strength_options_name_the_option(options, named):
    model = tiny_lora_model()
    for build in (
        lambda: FisherAdamW(model, **options),
        lambda: FisherWeighting(model, **options),
        lambda: attach_fisher(torch.optim.SGD(model.parameters(), lr=0.1), model, **options),
    ):
        with pytest.raises(ValueError, match=f"`{named}`"):
            build()


def test_target_ratio_bounds_are_inclusive_at_ten():
    assert FisherAdamW(tiny_lora_model(), lam="auto", target_ratio=10).target_ratio == 10.0


@pytest.mark.parametrize("split", [K - 1, K, K + 1, K + 3])  # before, at, just after calibration
def test_resume_is_exact_before_and_after_calibration(split):
    data = batches(K + 6)
    model = tiny_lora_model(seed=5)
    opt = FisherAdamW(model, lr=1e-2, warmup=K, lam="auto", target_ratio=0.3, flush_every=2)
    for batch in data[:split]:
        _step(model, opt, batch)
    state = copy.deepcopy(opt.state_dict())
    clone = copy.deepcopy(model)
    resumed = FisherAdamW(clone, lr=1e-2, warmup=K, lam="auto", target_ratio=0.3)
    resumed.load_state_dict(state)
    assert resumed.lam == opt.lam
    for batch in data[split:]:
        _step(model, opt, batch)
        _step(clone, resumed, batch)
        for (name, p), q in zip(model.named_parameters(), clone.parameters()):
            assert torch.equal(p, q), name
    assert resumed.lam == opt.lam is not None


def test_a_saved_auto_state_brings_its_mode_and_lambda():
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=K, lam="auto", target_ratio=0.3)
    for batch in batches(K + 1):
        _step(model, opt, batch)
    other = FisherAdamW(copy.deepcopy(model), lr=1e-2, warmup=K, lam=1e-4)
    with pytest.warns(UserWarning, match="lam='auto'.*target_ratio=0.3"):
        other.load_state_dict(opt.state_dict())
    assert (other.lam, other.target_ratio) == (opt.lam, 0.3)
    assert other.fisher_weighting.options.lam == "auto"


def test_zero_delta_w_at_k_plus_1_moves_calibration_to_the_first_step_with_one():
    model = tiny_lora_model(random_b=False)  # B = 0: ΔW = 0 until B is trained
    opt = FisherAdamW(model, lr=0.0, warmup=K, lam="auto", target_ratio=0.2)
    seen = _record_task_sq(opt)
    data = batches(K + 4)
    for batch in data[:K]:
        _step(model, opt, batch)
    with pytest.warns(RuntimeWarning, match="nothing to calibrate") as record:
        _step(model, opt, data[K])  # K + 1: ΔW = 0
        for group in opt.param_groups:
            group["lr"] = 1e-2
        _step(model, opt, data[K + 1])  # ΔW still 0 before this update: skipped again
    assert len(record) == 1 and opt.lam is None and opt.penalty_grad_ratio is None
    _step(model, opt, data[K + 2])  # ΔW != 0 now
    assert opt.lam is not None  # steps K + 1 and K + 2 (unpenalised) joined the average:
    assert opt.penalty_grad_ratios() == pytest.approx([_first_ratio(seen, 0.2)], rel=1e-6)


@pytest.mark.parametrize("bad", ["zero", "nan"])
def test_a_zero_or_non_finite_task_gradient_skips_that_step_and_warns_once(bad):
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=K, lam="auto", target_ratio=0.2)
    seen = _record_task_sq(opt)
    data = batches(K + 3)
    for batch in data[:K]:
        _step(model, opt, batch)
    factors = _factors(opt)
    with pytest.warns(RuntimeWarning, match="task gradient") as record:
        for _ in range(2):  # two such steps: one warning
            opt.zero_grad()
            if bad == "nan":
                loss_of(model, data[K]).backward()
                factors[0].grad.fill_(float("nan"))
                before = [p.detach().clone() for p in factors]
            opt.step()
            if bad == "nan":
                with torch.no_grad():  # undo the poisoned update
                    for p, q in zip(factors, before):
                        p.copy_(q)
                opt.state.clear()
    assert len(record) == 1 and opt.lam is None
    _step(model, opt, data[K + 1])
    assert opt.lam is not None  # the zero / NaN steps stayed out of the average
    assert opt.penalty_grad_ratios() == pytest.approx([_first_ratio(seen, 0.2)], rel=1e-6)


def test_a_grad_scaler_skipped_step_is_not_the_calibration_step():
    model = tiny_lora_model(dtype=torch.float32)
    opt = FisherAdamW(model, lr=1e-2, warmup=K, lam="auto", target_ratio=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    opt.use_grad_scaler(scaler)
    seen = _record_task_sq(opt)
    data = batches(K + 2)

    def scaled_step(batch, factor=1.0):
        opt.zero_grad()
        scaler.scale(loss_of(model, batch) * factor).backward()
        scaler.step(opt)
        scaler.update()

    for batch in data[:K]:
        scaled_step(batch)
    scaled_step(data[K], float("inf"))  # skipped by the scaler: never reaches the optimizer
    assert opt.lam is None and opt.fisher_weighting.step == K
    scaled_step(data[K + 1])
    assert opt.lam is not None
    assert len(seen) == K + 1  # the skipped step never reached the optimizer
    assert opt.penalty_grad_ratios() == pytest.approx([_first_ratio(seen, 0.2)], rel=1e-5)


def test_attach_fisher_calibrates_too():
    model = tiny_lora_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.05)
    fw = attach_fisher(sgd, model, warmup=K, lam="auto", target_ratio=0.4)
    seen = _record_task_sq(sgd, fw)
    for batch in batches(K + 1):
        _step(model, sgd, batch)
    assert fw.lam is not None
    assert fw.penalty_grad_ratios() == pytest.approx([_first_ratio(seen, 0.4)], rel=1e-6)


def test_core_auto_mode_and_its_dict():
    core = FisherCore(2, warmup=1, target_ratio=0.1)
    assert (core.lam, core.target_ratio, core.base_factors()) == (None, 0.1, None)
    with pytest.raises(FisherCoreError, match="`target_ratio`"):
        FisherCore(2, lam=0.1, target_ratio=0.1)
    with pytest.raises(FisherCoreError, match="`step`"):
        core.calibrate(1.0, 1.0)  # warm-up
    core.observe([1.0, 3.0])
    assert core.calibrate(4.0, 1.0) == pytest.approx(0.2)
    assert FisherCore.from_dict(core.to_dict()) == core
    assert FisherCore.from_bytes(core.to_bytes()) == core
    with pytest.raises(FisherCoreError, match="already calibrated"):
        core.calibrate(4.0, 1.0)


def test_a_version_2_state_dict_loads_as_a_hand_set_lambda():
    core = FisherCore(2, warmup=1, lam=0.5)
    old = core.to_dict()
    old["format_version"] = 2
    del old["target_ratio"]
    assert FisherCore.from_dict(old) == core
    old["format_version"] = 1
    with pytest.raises(FisherCoreError, match="format_version 1"):
        FisherCore.from_dict(old)


def test_the_warm_up_average_travels_in_the_state_dict_until_calibration():
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=K, lam="auto")
    data = batches(K + 1)
    _step(model, opt, data[0])
    entry = opt.state_dict()["param_groups"][0]["fwlora"]["calibration"]
    assert set(entry) == {"task_sq_ema", "weight"} and entry["task_sq_ema"] > 0
    for batch in data[1:]:
        _step(model, opt, batch)
    # Empty: the same keys, None values (a fixed shape, which DCP loads in place).
    empty = {"task_sq_ema": None, "weight": None}
    assert opt.lam is not None
    assert opt.state_dict()["param_groups"][0]["fwlora"]["calibration"] == empty
    fixed = FisherAdamW(tiny_lora_model(), warmup=K, lam=0.01)
    # λ by hand: nothing averaged
    assert fixed.state_dict()["param_groups"][0]["fwlora"]["calibration"] == empty
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["fwlora"]["calibration"] = {"task_sq_ema": -1.0, "weight": 0.5}
    before = opt.lam
    with pytest.raises(ValueError, match="'calibration'"):
        opt.load_state_dict(bad)
    assert opt.lam == before
