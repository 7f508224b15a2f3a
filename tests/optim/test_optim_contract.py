"""torch's optimizer contract for FisherAdamW and attach_fisher: a step a GradScaler skips
is no FW-LoRA step; a factor without a gradient (grad-less step, requires_grad=False) gets no
update at all (no penalty, no decay); lr and betas may be tensors."""

from __future__ import annotations

import pytest
import torch

from fwlora import FisherAdamW, adamw_param_groups, attach_fisher, find_adapter_matrices
from tiny import batches, loss_of, tiny_lora_model

WARMUP = 2


def _factors(model):
    return {
        n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n and p.ndim == 2
    }


def _options(penalty):
    """lam for the coupled penalty; decoupled scales weight decay instead (no lam)."""
    if penalty == "decoupled":
        return {"penalty": "decoupled", "weight_decay": 0.1}
    return {"lam": 1.0}


def _past_warmup(model, opt, data):
    for batch in data[: WARMUP + 1]:
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    assert opt.phase == "frozen" if hasattr(opt, "phase") else True


@pytest.mark.parametrize("penalty", ["coupled", "decoupled"])
def test_a_step_without_gradients_moves_no_factor(penalty):
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=WARMUP, **_options(penalty))
    _past_warmup(model, opt, batches(4))
    before = _factors(model)
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        opt.step()  # no backward: AdamW skips every parameter, so must FW-LoRA
    after = _factors(model)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("penalty", ["coupled", "decoupled"])
def test_a_frozen_factor_is_left_alone_after_warmup(penalty):
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=WARMUP, **_options(penalty))
    data = batches(6)
    _past_warmup(model, opt, data)
    frozen = find_adapter_matrices(model)[0].lora_A  # LoRA-FA style: A frozen
    frozen.requires_grad_(False)
    value = frozen.detach().clone()
    others = {n: p.detach().clone() for n, p in _factors(model).items()}
    for batch in data[WARMUP + 1 :]:
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    assert frozen.grad is None and torch.equal(frozen, value)
    moved = [n for n, p in _factors(model).items() if not torch.equal(p, others[n])]
    assert moved  # the other factors still train


def test_attach_fisher_leaves_gradless_factors_alone_on_sgd():
    model = tiny_lora_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    attach_fisher(opt, model, warmup=WARMUP, lam=1.0)
    for batch in batches(WARMUP + 1):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    before = _factors(model)
    opt.zero_grad(set_to_none=True)
    opt.step()
    for name, value in _factors(model).items():
        assert torch.equal(before[name], value), name


def _scaled_training(model, opt, data, overflow_at):
    """fp16-style loop with a CPU GradScaler; an inf planted in one step's gradients."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    opt.use_grad_scaler(scaler)  # statistics on unscaled gradients (fused: known per step)
    for i, batch in enumerate(data):
        opt.zero_grad()
        scaler.scale(loss_of(model, batch)).backward()
        if i == overflow_at:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("inf"))
        scaler.step(opt)
        scaler.update()


@pytest.mark.parametrize("impl", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_a_step_skipped_by_the_grad_scaler_is_not_a_fw_lora_step(impl):
    data = batches(6)
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=3, lam=1e-2, **impl)
    with torch.autocast("cpu", enabled=False):
        _scaled_training(model, opt, data, overflow_at=1)
    adam_steps = {int(s["step"]) for s in opt.state.values() if "step" in s}
    assert adam_steps == {5}  # AdamW took 5 of 6
    assert opt.fisher_weighting.step == 5 and opt.fisher_weighting.skipped == 0


def test_fused_under_a_grad_scaler_equals_foreach_after_warmup():
    """fused optimizers get still-scaled gradients: the penalty is scaled to match."""
    data = batches(6)
    models = [tiny_lora_model(), tiny_lora_model()]
    opts = [
        FisherAdamW(models[0], lr=1e-2, warmup=2, lam=1e-1, fused=True),
        FisherAdamW(models[1], lr=1e-2, warmup=2, lam=1e-1, foreach=True),
    ]
    for model, opt in zip(models, opts):
        _scaled_training(model, opt, data, overflow_at=-1)
    a, b = _factors(models[0]), _factors(models[1])
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    fa, fb = opts[0].fisher, opts[1].fisher
    for name in fa:
        assert fa[name] == pytest.approx(fb[name], rel=1e-5)


@pytest.mark.parametrize("foreach", [False])  # torch refuses a tensor lr with foreach=True
def test_tensor_lr_and_betas_equal_the_float_case(foreach):
    data = batches(6)
    models = [tiny_lora_model(), tiny_lora_model()]
    floats = FisherAdamW(models[0], lr=1e-2, betas=(0.9, 0.99), warmup=2, lam=1e-2, foreach=foreach)
    tensors = FisherAdamW(
        models[1],
        lr=torch.tensor(1e-2),
        betas=(torch.tensor(0.9), torch.tensor(0.99)),
        warmup=2,
        lam=1e-2,
        foreach=foreach,
    )
    for model, opt in zip(models, (floats, tensors)):
        for batch in data:
            opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step()
    a, b = _factors(models[0]), _factors(models[1])
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": torch.tensor([1e-3, 1e-3])}, "invalid `lr`: expected a number"),
        ({"lr": torch.tensor(-1.0)}, "invalid `lr`"),
        ({"betas": (torch.tensor(1.0), 0.9)}, r"invalid `betas`: expected betas\[0\]"),
    ],
)
def test_bad_tensor_hyper_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FisherAdamW(tiny_lora_model(), **kwargs)


def test_adamw_groups_skip_frozen_parameters():
    model = tiny_lora_model()
    find_adapter_matrices(model)[0].lora_B.requires_grad_(False)
    ids = {id(p) for g in adamw_param_groups(model) for p in g["params"]}
    assert id(find_adapter_matrices(model)[0].lora_B) not in ids


@pytest.mark.parametrize("copy_with", ["deepcopy", "pickle"])
def test_copies_are_refused_with_the_way_that_works(copy_with):
    import copy
    import pickle

    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=WARMUP, lam=1e-2)
    _past_warmup(model, opt, batches(4))
    before = opt.state_dict()
    with pytest.raises(TypeError, match=r"cannot be pickled or deep-copied.*load_state_dict"):
        copy.deepcopy(opt) if copy_with == "deepcopy" else pickle.dumps(opt)
    # The original is untouched, and the supported route round-trips.
    twin_model = copy.deepcopy(model)
    twin = FisherAdamW(twin_model, lr=1e-2, warmup=WARMUP, lam=1e-2)
    twin.load_state_dict(before)
    assert twin.fisher == opt.fisher and twin.importance == opt.importance
    assert twin.fisher_weighting.step == opt.fisher_weighting.step


def test_complex_lora_factors_are_refused_naming_the_module():
    model = tiny_lora_model()
    matrix = find_adapter_matrices(model)[0]
    matrix.lora_A.data = matrix.lora_A.data.to(torch.complex64)
    with pytest.raises(ValueError, match=r"are complex; .*exclude="):
        FisherAdamW(model, warmup=WARMUP)


def test_a_lam_that_overflows_the_penalty_is_reported_once_with_its_value():
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=WARMUP, lam=1e300)
    data = batches(6)
    with pytest.warns(
        RuntimeWarning,
        match=r"λ=1e\+300",
    ):
        _past_warmup(model, opt, data)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not again
        for batch in data[WARMUP + 1 :]:
            opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step()


# ------------------------------------------------------------------ torch's generic conventions
SETUPS = ["fisher-adamw-lam0", "fisher-adamw-penalised", "adamw+attach", "sgd+attach"]


def _setup(kind, model, **adamw):
    """(optimizer, its FW-LoRA handle) for one of SETUPS."""
    if kind == "fisher-adamw-lam0":
        opt = FisherAdamW(model, lr=1e-2, warmup=WARMUP, lam=0.0, **adamw)
        return opt, opt.fisher_weighting
    if kind == "fisher-adamw-penalised":
        opt = FisherAdamW(model, lr=1e-2, warmup=WARMUP, lam=1e-1, **adamw)
        return opt, opt.fisher_weighting
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adamw+attach":
        opt = torch.optim.AdamW(params, lr=1e-2, **adamw)
    else:
        opt = torch.optim.SGD(params, lr=1e-1, momentum=0.9)
    return opt, attach_fisher(opt, model, warmup=WARMUP, lam=1e-1)


def _steps(model, opt, data):
    for batch in data:
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()


@pytest.mark.parametrize("kind", SETUPS)
def test_state_dict_round_trip_continues_in_lock_step(kind):
    data = batches(8)
    model = tiny_lora_model()
    opt, _ = _setup(kind, model)
    _steps(model, opt, data[:4])
    import copy

    twin_model = copy.deepcopy(model)
    twin, _ = _setup(kind, twin_model)
    # Deep-copied as torch's own tests do: load_state_dict keeps tensors that need no cast, so
    # a shared state would be updated by both optimizers.
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert repr(twin) == repr(opt)  # printing works and shows the same groups
    _steps(model, opt, data[4:])
    _steps(twin_model, twin, data[4:])
    for (name, a), b in zip(model.named_parameters(), twin_model.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", SETUPS)
def test_user_hooks_run_once_per_step_in_order(kind):
    model = tiny_lora_model()
    opt, _ = _setup(kind, model)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    _steps(model, opt, batches(3))
    assert calls == ["pre", "post"] * 3


def test_attach_fisher_refuses_a_closure_naming_the_way_out():
    model = tiny_lora_model()
    opt, _ = _setup("adamw+attach", model)
    with pytest.raises(ValueError, match=r"closure: .*use FisherAdamW"):
        opt.step(lambda: loss_of(model, batches(1)[0]))


def test_param_groups_with_their_own_lr_and_weight_decay_equal_adamw_at_lam_zero():
    data = batches(5)
    ours, theirs = tiny_lora_model(), tiny_lora_model()

    def groups(model):
        lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        rest = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
        return [{"params": lora, "lr": 3e-2, "weight_decay": 0.2}, {"params": rest, "lr": 1e-3}]

    opt = FisherAdamW(ours, params=groups(ours), lr=1e-2, warmup=WARMUP, lam=0.0)
    ref = torch.optim.AdamW(groups(theirs), lr=1e-2)
    _steps(ours, opt, data)
    _steps(theirs, ref, data)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", ["fisher-adamw-penalised", "adamw+attach"])
def test_add_param_group_after_construction(kind):
    model = tiny_lora_model()
    extra = torch.nn.Parameter(torch.ones(3, dtype=next(model.parameters()).dtype))
    opt, fw = _setup(kind, model)
    _steps(model, opt, batches(2))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    for batch in batches(3):
        opt.zero_grad()
        (loss_of(model, batch) + extra.sum()).backward()
        opt.step()
    assert not torch.equal(extra.detach(), torch.ones(3, dtype=extra.dtype))
    assert fw.step == 5 and fw.phase == "frozen"


@pytest.mark.parametrize("impl", [{"foreach": False}, {"fused": True}])
def test_for_loop_and_fused_equal_foreach_after_warmup(impl):
    data = batches(6)
    models = [tiny_lora_model(), tiny_lora_model()]
    base, _ = _setup("fisher-adamw-penalised", models[0], foreach=True)
    other, _ = _setup("fisher-adamw-penalised", models[1], **impl)
    _steps(models[0], base, data)
    _steps(models[1], other, data)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("kind", SETUPS)
def test_a_step_with_zeroed_gradients_is_an_ordinary_step(kind):
    """zero_grad(set_to_none=False): the gradients exist and are 0; every optimizer steps
    (moments, decay) and FW-LoRA counts the step and penalises as if the term were in the
    loss."""
    model = tiny_lora_model()
    opt, fw = _setup(kind, model)
    _steps(model, opt, batches(WARMUP + 1))
    opt.zero_grad(set_to_none=False)
    opt.step()
    assert fw.step == WARMUP + 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
