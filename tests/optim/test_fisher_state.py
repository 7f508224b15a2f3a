"""state_dict round-trips: a resumed optimizer continues exactly as the uninterrupted run."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fwlora import FisherAdamW, attach_fisher
from tiny import batches, loss_of, tiny_lora_model


def _step(model, opt, batch):
    opt.zero_grad()
    loss_of(model, batch).backward()
    opt.step()


@pytest.mark.parametrize("split", [1, 3, 4, 6])  # mid-warm-up, at K=4 boundary, after
@pytest.mark.parametrize("estimator", ["exact", "sketch"])
def test_lock_step_resume(split, estimator):
    data = batches(9)
    model = tiny_lora_model(seed=7)
    opt = FisherAdamW(model, lr=1e-2, warmup=4, lam=0.3, estimator=estimator, flush_every=2)
    for batch in data[:split]:
        _step(model, opt, batch)
    state = copy.deepcopy(opt.state_dict())
    clone = copy.deepcopy(model)
    resumed = FisherAdamW(clone, lr=1e-2, warmup=4, lam=0.3, estimator=estimator)
    resumed.load_state_dict(state)
    assert resumed.fisher_weighting.step == split
    for batch in data[split:]:
        _step(model, opt, batch)
        _step(clone, resumed, batch)
        for (name, p), q in zip(model.named_parameters(), clone.parameters()):
            assert torch.equal(p, q), name
    assert opt.importance == resumed.importance
    assert opt.fisher == resumed.fisher


def test_state_dict_is_plain_and_survives_torch_save(tmp_path):
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=2)
    _step(model, opt, batches(1)[0])
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=True)
    fresh = FisherAdamW(copy.deepcopy(model), lr=1e-2, warmup=2)
    fresh.load_state_dict(loaded)
    assert fresh.fisher == opt.fisher


def test_state_from_other_lora_matrices_is_refused_and_changes_nothing():
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=3)
    _step(model, opt, batches(1)[0])
    torch.manual_seed(0)
    from transformers import RobertaForSequenceClassification

    other_base = RobertaForSequenceClassification(model.base_model.model.config)
    other = get_peft_model(
        other_base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query"])
    )
    other_opt = FisherAdamW(other.double(), lr=1e-2, warmup=3)
    before = copy.deepcopy(other_opt.state_dict())
    with pytest.raises(ValueError, match="state_dict: saved for other LoRA matrices"):
        other_opt.load_state_dict(opt.state_dict())
    after = other_opt.state_dict()
    assert after["param_groups"][0]["fwlora"] == before["param_groups"][0]["fwlora"]
    assert after["param_groups"] == before["param_groups"]


def test_state_without_fisher_entry_is_refused():
    model = tiny_lora_model()
    opt = FisherAdamW(model, warmup=3)
    plain = torch.optim.AdamW(model.parameters()).state_dict()
    with pytest.raises(ValueError, match="no 'fwlora' entry"):
        opt.load_state_dict(plain)


def test_attached_weighting_round_trips_through_optimizer_hooks():
    data = batches(6)
    model = tiny_lora_model(seed=9)
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    fw = attach_fisher(sgd, model, warmup=3, lam=0.2)
    for batch in data[:2]:
        _step(model, sgd, batch)
    state = copy.deepcopy(sgd.state_dict())
    assert "fwlora" not in state  # one copy, in the first param group
    assert state["param_groups"][0]["fwlora"]["core"]["step"] == 2
    clone = copy.deepcopy(model)
    sgd2 = torch.optim.SGD([p for p in clone.parameters() if p.requires_grad], lr=0.05)
    fw2 = attach_fisher(sgd2, clone, warmup=3, lam=0.2)
    sgd2.load_state_dict(state)
    for batch in data[2:]:
        _step(model, sgd, batch)
        _step(clone, sgd2, batch)
    assert fw.importance == fw2.importance
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_deep_copied_model_does_not_feed_the_original():
    model = tiny_lora_model()
    opt = FisherAdamW(model, warmup=4)
    clone = copy.deepcopy(model)  # carries the statistics hooks along
    batch = batches(1)[0]
    loss_of(clone, batch).backward()
    assert all(v is None for v in opt.fisher_weighting.statistics._pending)


@pytest.mark.parametrize("split", [2, 5])  # mid-warm-up (K = 4), after
@pytest.mark.parametrize("attached", [False, True])
def test_torch_distributed_checkpoint_functions_resume_exactly(tmp_path, split, attached):
    """torch's get_/set_optimizer_state_dict (what accelerate and the Trainer call under
    FSDP2) keep only `state` and `param_groups`: FW-LoRA's entry in the first param group
    goes through them and a DCP save / load, and the resumed run equals the uninterrupted
    one. No warning on the way (filterwarnings=error): torch's zero-gradient initialisation
    step of the fresh optimizer is not a warm-up step with nothing measured."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    def build(model):
        if not attached:
            return FisherAdamW(model, lr=1e-2, warmup=4, lam=0.3)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        attach_fisher(opt, model, warmup=4, lam=0.3)
        return opt

    data = batches(7)
    model = tiny_lora_model(seed=7)
    opt = build(model)
    for batch in data[:split]:
        _step(model, opt, batch)
    saved = get_optimizer_state_dict(model, opt)
    assert set(saved) == {"state", "param_groups"}
    assert saved["param_groups"][0]["fwlora"]["core"]["step"] == split
    dcp.save({"optim": saved}, checkpoint_id=tmp_path / "ckpt", no_dist=True)

    clone = copy.deepcopy(model)
    resumed = build(clone)
    template = {"optim": get_optimizer_state_dict(clone, resumed)}
    dcp.load(template, checkpoint_id=tmp_path / "ckpt", no_dist=True)
    set_optimizer_state_dict(clone, resumed, template["optim"])
    assert all("fwlora" not in g for g in resumed.param_groups)  # not adopted as a setting
    for batch in data[split:]:
        _step(model, opt, batch)
        _step(clone, resumed, batch)
    for (name, p), q in zip(model.named_parameters(), clone.parameters()):
        assert torch.equal(p, q), name
    assert (
        resumed.state_dict()["param_groups"][0]["fwlora"]
        == opt.state_dict()["param_groups"][0]["fwlora"]
    )


def _leaf_paths(obj, prefix=""):
    """Every leaf path of a nested dict (what torch.distributed.checkpoint flattens to)."""
    if isinstance(obj, dict):
        return {p for k, v in obj.items() for p in _leaf_paths(v, f"{prefix}.{k}")}
    if isinstance(obj, list):
        return {p for i, v in enumerate(obj) for p in _leaf_paths(v, f"{prefix}.{i}")}
    return {prefix}  # a scalar (None, a number, a string): one leaf whatever its value


def test_the_entry_has_one_shape_in_every_phase_and_survives_weights_only_load(tmp_path):
    """DCP loads a checkpoint in place into the fresh optimizer's state dict: the entry's leaf
    paths (its nesting; a None never becomes a list or a dict) are the same before warm-up,
    during it, after it and with lam="auto" before and after calibration;
    torch.load(weights_only=True) reads it back equal."""
    shapes = []
    for lam in (0.3, "auto"):
        model = tiny_lora_model(seed=3)
        opt = FisherAdamW(model, lr=1e-2, warmup=2, lam=lam)
        for t, batch in enumerate([None, *batches(4)]):
            if batch is not None:
                _step(model, opt, batch)
            saved = opt.state_dict()
            torch.save(saved, tmp_path / "opt.pt")
            back = torch.load(tmp_path / "opt.pt", weights_only=True)
            assert back["param_groups"] == saved["param_groups"], (lam, t)
            shapes.append(_leaf_paths(saved["param_groups"][0]["fwlora"]))
    assert all(s == shapes[0] for s in shapes)
