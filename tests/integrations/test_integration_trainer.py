"""transformers.Trainer: FisherAdamW through `optimizers=` and `optimizer_cls_and_kwargs`,
the Trainer's linear schedule, checkpoint resume, clipping, bf16, and FisherCallback."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainerCallback

from fwlora import FisherAdamW, adamw_param_groups, attach_fisher
from fwlora.integrations import IMPORTANCE_FILE, FisherCallback, fisher_adamw_class
from integration_helpers import TinyDataset, reset_accelerate, training_args
from tiny import tiny_lora_model

pytestmark = pytest.mark.slow
FW = {"warmup": 4, "lam": 0.5, "alpha": 0.7}


@pytest.fixture(autouse=True)
def _clean_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def _model():
    return tiny_lora_model(seed=0, dtype=torch.float32)


def _trainer(model, output_dir, optimizer=None, cls_and_kwargs=None, **args):
    return Trainer(
        model=model,
        args=training_args(output_dir, **args),
        train_dataset=TinyDataset(32),
        optimizers=(optimizer, None),
        optimizer_cls_and_kwargs=cls_and_kwargs,
    )


def _lrs(trainer):
    return [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_lam_zero_is_the_trainers_own_adamw(tmp_path):
    """Schedule, clipping and the step loop are the Trainer's: with λ = 0 FisherAdamW in
    `optimizers=` trains exactly like the Trainer's default AdamW."""
    ours, theirs = _model(), _model()
    opt = FisherAdamW(ours, lr=1e-2, weight_decay=0.0, warmup=3, lam=0.0)
    trainer = _trainer(ours, tmp_path / "a", opt)
    trainer.train()
    default = _trainer(theirs, tmp_path / "b", optim="adamw_torch")
    default.train()
    _assert_same(_state(ours), _state(theirs))
    assert opt.phase == "frozen" and opt.fisher_weighting.step == 8
    # The Trainer's linear schedule drove FisherAdamW's lr: 2 warm-up steps, then down to 0.
    assert _lrs(trainer) == _lrs(default)
    assert _lrs(trainer)[:3] == pytest.approx([0.0, 5e-3, 1e-2])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


def test_optimizer_cls_and_kwargs_equals_optimizers_route(tmp_path):
    a, b = _model(), _model()
    opt = FisherAdamW(a, lr=1e-2, weight_decay=0.0, **FW)
    _trainer(a, tmp_path / "a", opt).train()
    cls = fisher_adamw_class(b, **FW)
    trainer = _trainer(b, tmp_path / "b", cls_and_kwargs=(cls, {"lr": 1e-2}))
    trainer.add_callback(FisherCallback(trainer))  # finds the optimizer the Trainer builds
    trainer.train()
    built = trainer.optimizer.optimizer  # inside accelerate's AcceleratedOptimizer
    assert isinstance(built, FisherAdamW)
    assert built.importance == opt.importance
    saved = json.loads((tmp_path / "b" / IMPORTANCE_FILE).read_text())
    assert saved["importance"] == opt.importance
    _assert_same(_state(a), _state(b))


@pytest.mark.parametrize("resume_at", [2, 6])  # mid-warm-up (K = 4), after it
def test_resume_from_checkpoint_ends_like_an_uninterrupted_run(tmp_path, resume_at):
    full_model = _model()
    full_opt = FisherAdamW(full_model, lr=1e-2, flush_every=3, **FW)
    full = _trainer(full_model, tmp_path / "run", full_opt, save_strategy="steps", save_steps=2)
    full.train()

    model = _model()
    opt = FisherAdamW(model, lr=1e-2, flush_every=3, **FW)
    resumed = _trainer(model, tmp_path / "resumed", opt)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / f"checkpoint-{resume_at}"))
    assert opt.fisher_weighting.step == 8
    assert opt.importance == full_opt.importance
    assert opt.fisher == full_opt.fisher
    _assert_same(_state(model), _state(full_model))


class _Recorder(TrainerCallback):
    """Stands in for a `report_to` logger (TensorBoard, W&B): records what it is given."""

    def __init__(self, frozen_names):
        self.logs = []
        self.frozen_names = frozen_names
        self.frozen_grads_seen = []
        self.clipped_norms = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # After the Trainer's clipping, before the optimizer: what clipping saw and did.
        grads = {n: p.grad for n, p in model.named_parameters()}
        self.frozen_grads_seen += [n for n in self.frozen_names if grads[n] is not None]
        trainable = [g for n, g in grads.items() if g is not None]
        self.clipped_norms.append(
            float(
                torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in trainable])
                )
            )
        )


def test_callback_logs_to_reporters_and_saves_importances(tmp_path):
    model = _model()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in frozen}
    opt = FisherAdamW(model, lr=1e-2, **FW)
    recorder = _Recorder(frozen)
    trainer = _trainer(
        model,
        tmp_path,
        opt,
        save_strategy="steps",
        save_steps=3,
        max_steps=6,
        max_grad_norm=1e-3,
    )
    trainer.add_callback(FisherCallback(trainer))
    trainer.add_callback(recorder)
    trainer.train()
    trainer.save_model(str(tmp_path))

    # Every training log is followed by an FW-LoRA log, through the Trainer's log mechanism.
    ours = [log for log in recorder.logs if "fwlora/phase" in log]
    assert [log["fwlora/step"] for log in ours] == [1, 2, 3, 4, 5, 6]
    assert [log["fwlora/phase"] for log in ours] == [0, 0, 0, 1, 1, 1]
    assert [log["fwlora/penalty"] > 0 for log in ours] == [False] * 3 + [True] * 3
    assert ours[-1]["fwlora/penalty"] == pytest.approx(float(opt.penalty_value()))
    # ‖∇P‖/‖∇L_task‖ from the first penalised step (K + 1 = 5) on: the optimizer's own values.
    ratios = [log.get("fwlora/penalty_grad_ratio") for log in ours]
    assert ratios[:4] == [None] * 4
    assert ratios[4:] == pytest.approx(opt.penalty_grad_ratios())
    assert len(opt.penalty_grad_ratios()) == 2 and all(r > 0 for r in ratios[4:])
    with_importance = [log for log in ours if any("importance" in k for k in log)]
    assert len(with_importance) == 1 and with_importance[0]["fwlora/step"] == 4  # once, frozen
    logged = {
        k.removeprefix("fwlora/importance/"): v
        for k, v in with_importance[0].items()
        if k.startswith("fwlora/importance/")
    }
    assert list(logged.values()) == list(opt.importance.values())
    assert all(name.endswith(short) for name, short in zip(opt.importance, logged))
    assert sum(1 for h in trainer.state.log_history if "fwlora/phase" in h) == 6

    # JSON beside each checkpoint and beside the final adapter.
    at3 = json.loads((tmp_path / "checkpoint-3" / IMPORTANCE_FILE).read_text())
    assert at3["phase"] == "warmup" and at3["step"] == 3 and at3["importance"] is None
    at6 = json.loads((tmp_path / "checkpoint-6" / IMPORTANCE_FILE).read_text())
    assert at6["importance"] == opt.importance
    assert (tmp_path / "adapter_model.safetensors").exists()
    final = json.loads((tmp_path / IMPORTANCE_FILE).read_text())
    assert final["importance"] == opt.importance and final["phase"] == "frozen"

    # Clipping never saw the frozen weights (no grads) and they never changed; it did clip.
    assert recorder.frozen_grads_seen == []
    assert max(recorder.clipped_norms) <= 1e-3 * (1 + 1e-4)
    for name, value in before.items():
        assert torch.equal(dict(model.named_parameters())[name], value), name


def test_bf16_trainer_on_cpu(tmp_path):
    """bf16 autocast (TrainingArguments(bf16=True)): statistics from bf16 activations and
    gradients give importances close to the fp32 run's, and the run finishes frozen."""
    fp32_model, bf16_model = _model(), _model()
    fp32 = FisherAdamW(fp32_model, lr=1e-2, **FW)
    bf16 = FisherAdamW(bf16_model, lr=1e-2, **FW)
    _trainer(fp32_model, tmp_path / "fp32", fp32, max_steps=4).train()
    _trainer(bf16_model, tmp_path / "bf16", bf16, max_steps=4, bf16=True).train()
    assert bf16.phase == "frozen"
    a = torch.tensor(list(fp32.importance.values()))
    b = torch.tensor(list(bf16.importance.values()))
    assert torch.isfinite(b).all()
    torch.testing.assert_close(b, a, rtol=0.1, atol=2e-3)


def test_callback_refuses_deepspeed_and_fsdp_trainers(tmp_path):
    model = _model()
    opt = FisherAdamW(model, lr=1e-2, **FW)
    trainer = _trainer(model, tmp_path, opt, max_steps=1)
    callback = FisherCallback(trainer)
    begin = (trainer.args, trainer.state, trainer.control)
    trainer.is_fsdp_enabled = True  # what Trainer(args.fsdp=...) sets; FSDP needs GPUs
    with pytest.raises(ValueError, match=r"FSDP: not supported with FSDP version 1.*version': 2"):
        callback.on_train_begin(*begin)  # no plugin version: FSDP1
    # FSDP2 (fsdp_config={"version": 2}) is accepted: the optimizer handles its DTensors.
    fsdp2 = SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=2))
    trainer.accelerator = SimpleNamespace(state=fsdp2, scaler=None)
    callback.on_train_begin(*begin)
    fsdp2.fsdp_plugin.fsdp_version = 1
    with pytest.raises(ValueError, match="FSDP: not supported with FSDP version 1"):
        callback.on_train_begin(*begin)
    trainer.is_fsdp_enabled = False
    trainer.is_deepspeed_enabled = True
    with pytest.raises(ValueError, match="DeepSpeed: not supported"):
        callback.on_train_begin(*begin)


def test_callback_reports_refreshing_phase_and_each_refresh(tmp_path):
    """refresh_every > 0: phase "refreshing" (logged as 2) after warm-up, and the
    importances are logged again each time a refresh changes them."""
    model = _model()
    opt = FisherAdamW(model, lr=1e-2, refresh_every=2, **FW)
    recorder = _Recorder(set())
    trainer = _trainer(model, tmp_path, opt, max_steps=8)
    trainer.add_callback(FisherCallback(trainer))
    trainer.add_callback(recorder)
    seen = []

    class _Importances(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(opt.importance)

    trainer.add_callback(_Importances())
    trainer.train()
    ours = [log for log in recorder.logs if "fwlora/phase" in log]
    assert [log["fwlora/phase"] for log in ours] == [0] * 3 + [2] * 5
    assert opt.phase == "refreshing"
    logged_at = [log["fwlora/step"] for log in ours if any("importance/" in k for k in log)]
    changed_at = [
        step
        for step, (before, now) in enumerate(zip([None, *seen], seen), start=1)
        if now is not None and now != before
    ]
    assert logged_at == changed_at and len(changed_at) >= 2  # frozen at 4, refreshed later


def test_callback_with_a_weighting_attached_to_another_optimizer(tmp_path):
    """FW-LoRA attached to torch AdamW: the callback is given the handle (`weighting=`);
    without it, it says where to find one."""
    model = _model()
    plain = torch.optim.AdamW(adamw_param_groups(model, 0.0), lr=1e-2)
    fw = attach_fisher(plain, model, **FW)
    trainer = _trainer(model, tmp_path, plain, max_steps=6)
    lost = FisherCallback(trainer)
    with pytest.raises(ValueError, match="pass the FisherWeighting that attach_fisher"):
        lost.on_train_begin(trainer.args, trainer.state, trainer.control)
    callback = FisherCallback(trainer, weighting=fw)
    assert callback.weighting is fw
    trainer.add_callback(callback)
    trainer.train()
    assert fw.phase == "frozen" and fw.step == 6
    final = json.loads((tmp_path / IMPORTANCE_FILE).read_text())
    assert final["importance"] == fw.importance and final["step"] == 6
    logs = [h for h in trainer.state.log_history if "fwlora/phase" in h]
    assert [h["fwlora/step"] for h in logs] == [1, 2, 3, 4, 5, 6]


def test_callback_hands_gradient_accumulation_to_fwlora(tmp_path):
    """gradient_accumulation_steps=2: the callback sets accumulation_steps=2, so the statistic
    is that of each step's accumulated gradient — the same importances as FisherAdamW built
    with accumulation_steps=2 — while without either FW-LoRA warns and sums the passes."""

    def run(folder, callback, **options):
        model = _model()
        opt = FisherAdamW(model, lr=1e-2, **FW, **options)
        trainer = _trainer(model, tmp_path / folder, opt, gradient_accumulation_steps=2)
        if callback:
            trainer.add_callback(FisherCallback(trainer))
        trainer.train()
        assert opt.fisher_weighting.step == 8 and opt.phase == "frozen"
        return opt

    via_callback = run("callback", True)
    assert via_callback.fisher_weighting.options.accumulation_steps == 2
    explicit = run("explicit", False, accumulation_steps=2)
    assert via_callback.importance == explicit.importance
    # (pytest.warns would re-emit the Trainer's own FutureWarnings from this module.)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summed = run("summed", False)
    ours = [w for w in caught if "backward passes in one optimizer step" in str(w.message)]
    assert len(ours) == 1 and ours[0].category is RuntimeWarning
    assert "2 backward passes" in str(ours[0].message)
    assert summed.importance != pytest.approx(explicit.importance, rel=1e-6)
