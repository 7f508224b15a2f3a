"""The optimizer's edges (issue 18, B.10): attaching twice, frozen LoRA factors, numpy option
values, and a loaded state saved with other options. Each against the literal reference
(tests/reference.py: W_m given requires_grad, float64) or the run it must equal."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from peft import PeftModel

from fwlora import FisherAdamW, FisherOptions, FisherWeighting, adamw_param_groups, attach_fisher
from reference import ReferenceFWLoRA
from tiny import batches, loss_of, tiny_lora_model

KW = {"warmup": 2, "lam": 0.5, "alpha": 0.9}


def _step(model, opt, batch) -> None:
    opt.zero_grad()
    loss_of(model, batch).backward()
    opt.step()


def _trained(model) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad and "base_layer" not in n
    }


def _assert_same_weights(a, b, rtol=1e-9, atol=1e-12) -> None:
    pa, pb = _trained(a), _trained(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=rtol, atol=atol, msg=name)


# ----------------------------------------------------------------- attaching twice
def test_attaching_twice_is_refused_or_idempotent_and_lam_counts_once():
    """A second FisherWeighting on the same optimizer is refused (it would add λ·∇P twice);
    attaching the same one again changes nothing: the run equals the reference with λ once."""
    data = batches(5)
    ours, theirs = tiny_lora_model(seed=3), tiny_lora_model(seed=3)
    opt = torch.optim.AdamW(adamw_param_groups(ours, 0.01), lr=5e-3, foreach=False)
    fw = attach_fisher(opt, ours, **KW)
    with pytest.raises(ValueError, match=r"already has FW-LoRA.*penalty twice.*detach\(\)"):
        attach_fisher(opt, ours, **KW)
    with pytest.raises(ValueError, match="already has FW-LoRA"):
        FisherWeighting(ours, **KW).attach(opt)
    hooks = len(opt._optimizer_step_pre_hooks)
    assert fw.attach(opt) is fw and len(opt._optimizer_step_pre_hooks) == hooks
    ref = ReferenceFWLoRA(theirs, lr=5e-3, weight_decay=0.01, **KW)
    for batch in data:
        _step(ours, opt, batch)
        ref.step(batch)
        _assert_same_weights(ours, theirs)
    assert fw.importance == pytest.approx(ref.importance(), rel=1e-10)
    assert fw.step == len(data)  # each step counted once


def test_attaching_to_fisher_adamw_is_refused_and_detach_frees_the_optimizer():
    model = tiny_lora_model()
    opt = FisherAdamW(model, **KW)
    with pytest.raises(ValueError, match="FisherAdamW has FW-LoRA built in"):
        attach_fisher(opt, model, **KW)
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    first = attach_fisher(sgd, model, **KW)
    with pytest.raises(ValueError, match="already attached to another optimizer"):
        first.attach(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
    first.detach()
    second = attach_fisher(sgd, model, **KW)  # detached: the optimizer takes FW-LoRA again
    assert second is not first


# ------------------------------------------------------------- frozen LoRA factors
def test_frozen_lora_factors_are_named_as_the_cause(tmp_path):
    """An adapter loaded for inference (PeftModel.from_pretrained without is_trainable) has
    frozen factors: the message says so and how to unfreeze, not "build it from the same
    model"."""
    tiny_lora_model(seed=0).save_pretrained(tmp_path)
    base = tiny_lora_model(seed=0).get_base_model()
    frozen = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    with pytest.raises(ValueError, match=r"requires_grad=False.*is_trainable=True"):
        FisherAdamW(frozen, **KW)
    sgd = torch.optim.SGD(list(frozen.parameters()), lr=0.1)  # holds them, cannot train them
    with pytest.raises(ValueError, match=r"requires_grad=False.*is_trainable=True"):
        attach_fisher(sgd, frozen, **KW)
    trainable = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    FisherAdamW(trainable, **KW)  # the way out works
    # Frozen after construction: bind (attach) says the same.
    model = tiny_lora_model()
    fw = FisherWeighting(model, **KW)
    next(p for n, p in model.named_parameters() if "lora_B" in n).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        fw.attach(torch.optim.SGD(list(model.parameters()), lr=0.1))


# ---------------------------------------------------------------- numpy option values
def test_numpy_scalars_are_taken_exactly_like_python_numbers():
    """np.float32 / np.int64 / np.float64 options give the run the same Python values give
    (np.float32's value is its float: 0.3 in float32 is 0.30000001192092896)."""
    data = batches(4)
    lam32 = np.float32(0.3)
    numpy_kw = {
        "lr": np.float32(5e-3),
        "weight_decay": np.float64(0.01),
        "betas": (np.float32(0.9), np.float64(0.999)),
    }
    python_kw = {
        "lr": float(np.float32(5e-3)),
        "weight_decay": 0.01,
        "betas": (float(np.float32(0.9)), 0.999),
    }
    a, b = tiny_lora_model(seed=5), tiny_lora_model(seed=5)
    opt_a = FisherAdamW(a, warmup=np.int64(2), lam=lam32, alpha=np.float32(0.5), **numpy_kw)
    opt_b = FisherAdamW(b, warmup=2, lam=float(lam32), alpha=0.5, **python_kw)
    options = opt_a.fisher_weighting.options
    assert options == opt_b.fisher_weighting.options
    assert type(options.warmup) is int and type(options.lam) is float
    assert type(opt_a.param_groups[0]["lr"]) is float
    for batch in data:
        _step(a, opt_a, batch)
        _step(b, opt_b, batch)
    for name, p in _trained(a).items():
        assert torch.equal(p, _trained(b)[name]), name
    assert FisherOptions(sketch_dim=np.int32(4), seed=np.uint8(3)).sketch_dim == 4


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"warmup": np.bool_(True)}, "warmup"),  # refused like True
        ({"warmup": np.float32(3.0)}, "warmup"),  # refused like 3.0
        ({"lam": np.float32("nan")}, "lam"),
        ({"lr": np.bool_(True)}, "lr"),
    ],
)
def test_numpy_scalars_are_refused_where_python_ones_are(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        FisherAdamW(tiny_lora_model(), **kwargs)


# -------------------------------------------------- loading a state saved with other options
def test_state_saved_with_other_options_is_adopted_with_a_warning_naming_them():
    """torch optimizers adopt saved param groups; FW-LoRA adopts the saved λ, K, α, ... too,
    and says which differ. The resumed run then equals the uninterrupted one."""
    data = batches(5)
    model = tiny_lora_model(seed=7)
    opt = FisherAdamW(model, lr=1e-2, warmup=3, lam=0.3, alpha=0.8)
    for batch in data[:2]:
        _step(model, opt, batch)
    state = copy.deepcopy(opt.state_dict())
    clone = copy.deepcopy(model)
    resumed = FisherAdamW(clone, lr=1e-2, warmup=5, lam=1e-4, alpha=0.8, normalization="max")
    with pytest.warns(UserWarning, match="saved with") as caught:
        resumed.load_state_dict(state)
    message = str(caught[0].message)
    for text in (
        "warmup=3 (constructed with 5)",
        "lam=0.3 (constructed with 0.0001)",
        "normalization='sum' (constructed with 'max')",
        "saved values are used",
    ):
        assert text in message
    assert "alpha" not in message  # equal options are not listed
    fw = resumed.fisher_weighting
    assert (fw.options.warmup, fw.options.lam, fw.options.normalization) == (3, 0.3, "sum")
    for batch in data[2:]:
        _step(model, opt, batch)
        _step(clone, resumed, batch)
    for name, p in _trained(model).items():
        assert torch.equal(p, _trained(clone)[name]), name


def test_state_saved_with_the_same_options_loads_silently():
    model = tiny_lora_model()
    opt = FisherAdamW(model, **KW)
    _step(model, opt, batches(1)[0])
    fresh = FisherAdamW(copy.deepcopy(model), **KW)
    fresh.load_state_dict(opt.state_dict())  # filterwarnings=error: any warning fails
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    fw = attach_fisher(sgd, model, **{**KW, "lam": 0.2})
    with pytest.warns(UserWarning, match=r"lam=0\.5 \(constructed with 0\.2\)"):
        fw.load_state_dict(opt.state_dict()["param_groups"][0]["fwlora"])
