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
