"""Bad input gets a ValueError naming the argument; a non-finite warm-up step is skipped."""

from __future__ import annotations

import pytest
import torch

from fwlora import FisherAdamW, attach_fisher
from tiny import batches, loss_of, tiny_lora_model


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"warmup": 0}, "warmup"),
        ({"warmup": 2.5}, "warmup"),
        ({"lam": -1e-4}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"normalization": "softmax"}, "normalization"),
        ({"penalty": "l1"}, "penalty"),
        ({"estimator": "kfac"}, "estimator"),
        ({"schedule": "cosine"}, "schedule"),
        ({"schedule": "ramp"}, "ramp_steps"),
        ({"warm_up": 10}, "warm_up"),
    ],
)
def test_bad_option_names_the_argument(kwargs, arg):
    model = tiny_lora_model()
    with pytest.raises(ValueError, match=arg):
        FisherAdamW(model, **kwargs)
    # Nothing was attached to the model by the failed construction.
    assert all(not m._forward_hooks for m in model.modules())


def test_model_without_lora_is_refused():
    with pytest.raises(ValueError, match="model: no LoRA layers"):
        FisherAdamW(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"model: expected a torch\.nn\.Module"):
        FisherAdamW([torch.nn.Parameter(torch.zeros(2))])


def test_optimizer_missing_lora_params_is_refused():
    model = tiny_lora_model()
    head_only = [p for n, p in model.named_parameters() if p.requires_grad and "lora" not in n]
    with pytest.raises(ValueError, match="optimizer: does not update the LoRA factors"):
        attach_fisher(torch.optim.SGD(head_only, lr=0.1), model)


def test_decoupled_needs_decoupled_weight_decay():
    model = tiny_lora_model()
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError, match="penalty"):
        attach_fisher(sgd, model, penalty="decoupled")


def test_non_finite_warmup_step_is_skipped_with_a_warning():
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=0.0, warmup=3)
    data = batches(3)
    for t, batch in enumerate(data):
        opt.zero_grad()
        loss = loss_of(model, batch)
        if t == 1:
            loss = loss * float("inf")
        loss.backward()
        for p in model.parameters():  # keep AdamW itself finite; only the statistic sees inf
            if p.grad is not None:
                p.grad.nan_to_num_(0.0, 0.0, 0.0)
        if t == 2:
            with pytest.warns(RuntimeWarning, match="1 warm-up step"):
                opt.step()
        else:
            opt.step()
    fw = opt.fisher_weighting
    assert fw.skipped == 1 and fw.core.step == 3
    assert all(torch.isfinite(torch.tensor(v)) and v > 0 for v in opt.fisher.values())
    assert opt.importance is not None


def test_closure_with_hook_attachment_is_refused():
    model = tiny_lora_model()
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    attach_fisher(sgd, model, warmup=2)
    with pytest.raises(ValueError, match="closure"):
        sgd.step(lambda: loss_of(model, batches(1)[0]))


def test_unknown_option_lists_the_real_options():
    with pytest.raises(ValueError, match="warm_up") as info:
        FisherAdamW(tiny_lora_model(), warm_up=10)
    listed = str(info.value).split("expected some of ")[1]
    assert "alpha" in listed and "lam" in listed
    assert "self" not in listed.split(", ") and "unknown" not in listed.split(", ")


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"schedule": "constant", "ramp_steps": 50}, "ramp_steps"),  # would be dropped silently
        ({"penalty": "decoupled", "lam": 0.5}, "lam"),  # λ is unused in that mode
        ({"sync_ranks": False}, "sync_ranks"),  # removed: replicas would drift apart
    ],
)
def test_options_that_would_be_silently_ignored_are_refused(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        FisherAdamW(tiny_lora_model(), **kwargs)


def test_maximize_is_refused():
    """AdamW with maximize=True would climb the penalty's gradient."""
    with pytest.raises(ValueError, match="maximize"):
        FisherAdamW(tiny_lora_model(), maximize=True)
    model = tiny_lora_model()
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, maximize=True)
    with pytest.raises(ValueError, match="maximize"):
        attach_fisher(sgd, model)


def test_decoupled_without_weight_decay_is_refused():
    with pytest.raises(ValueError, match="weight_decay=0"):
        FisherAdamW(tiny_lora_model(), weight_decay=0.0, penalty="decoupled")


def test_decoupled_state_cannot_be_loaded_into_sgd():
    source = tiny_lora_model()
    saved = FisherAdamW(source, weight_decay=0.1, warmup=2, penalty="decoupled").state_dict()
    model = tiny_lora_model()
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    fw = attach_fisher(sgd, model, warmup=2)
    before = fw.state_dict()
    with pytest.raises(ValueError, match="decoupled"):
        fw.load_state_dict(saved["param_groups"][0]["fwlora"])
    assert fw.state_dict() == before and fw.options.penalty == "coupled"


def test_penalty_value_is_the_term_in_effect():
    """Scaled by the schedule, and 0 where no term is added (warm-up, decoupled)."""
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=0.0, warmup=1, lam=0.5, schedule="ramp", ramp_steps=4)
    data = batches(2)
    assert float(opt.penalty_value()) == 0.0
    opt.zero_grad()
    loss_of(model, data[0]).backward()
    opt.step()  # step 1 = K: the next step (2) has scale 1/4
    fw = opt.fisher_weighting
    full = float(fw.penalty.value(fw.core.base_factors()))
    assert full > 0 and float(opt.penalty_value()) == pytest.approx(full / 4, rel=1e-12)
    other = tiny_lora_model()
    decoupled = FisherAdamW(other, lr=0.0, warmup=1, penalty="decoupled")
    loss_of(other, data[0]).backward()
    decoupled.step()
    assert decoupled.phase == "frozen" and float(decoupled.penalty_value()) == 0.0
