"""FisherAdamW against torch.optim.AdamW (lam=0) and against the literal reference."""

from __future__ import annotations

import copy

import pytest
import torch

from fwlora import FisherAdamW, adamw_param_groups, find_adapter_matrices
from fwlora.optim.penalty import FisherPenalty
from reference import ReferenceFWLoRA
from tiny import batches, loss_of, tiny_lora_model


def _train(model, opt, data):
    for batch in data:
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()


def _params(model):
    # The reference turns requires_grad on for the frozen W_m; they are never updated.
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad and "base_layer" not in n
    }


def _assert_params_close(a, b, rtol=1e-9, atol=1e-12):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=rtol, atol=atol, msg=name)


def test_lam_zero_is_exactly_torch_adamw():
    data = batches(8)
    ours, theirs = tiny_lora_model(), tiny_lora_model()
    opt = FisherAdamW(ours, lr=1e-2, weight_decay=0.1, warmup=3, lam=0.0)
    ref = torch.optim.AdamW(adamw_param_groups(theirs, 0.1), lr=1e-2)
    _train(ours, opt, data)
    _train(theirs, ref, data)
    pa, pb = _params(ours), _params(theirs)
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    assert opt.phase == "frozen"


def test_weight_decay_only_on_matrices():
    model = tiny_lora_model()
    opt = FisherAdamW(model, weight_decay=0.05, warmup=2)
    for group in opt.param_groups:
        for p in group["params"]:
            assert group["weight_decay"] == (0.05 if p.ndim >= 2 else 0.0)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable


@pytest.mark.parametrize("warmup", [1, 3])
@pytest.mark.parametrize("lam", [1e-4, 0.5])
def test_matches_literal_reference(warmup, lam):
    data = batches(7)
    ours, theirs = tiny_lora_model(seed=3), tiny_lora_model(seed=3)
    opt = FisherAdamW(ours, lr=5e-3, weight_decay=0.01, warmup=warmup, lam=lam, alpha=0.9)
    ref = ReferenceFWLoRA(theirs, lr=5e-3, weight_decay=0.01, warmup=warmup, lam=lam, alpha=0.9)
    for t, batch in enumerate(data, start=1):
        opt.zero_grad()
        loss_of(ours, batch).backward()
        opt.step()
        ref.step(batch)
        _assert_params_close(ours, theirs)
        if t <= warmup:
            for name, f in ref.fisher().items():
                assert opt.fisher[name] == pytest.approx(f, rel=1e-10), (t, name)
        if t >= warmup:
            assert opt.importance == pytest.approx(ref.importance(), rel=1e-10)
        else:
            assert opt.importance is None


@pytest.mark.parametrize("normalization", ["uniform", "max"])
def test_other_normalizations_match_literal_reference(normalization):
    """ "uniform" (I = 1/M, the L2 control) and "max" through the same penalty path."""
    data = batches(5)
    ours, theirs = tiny_lora_model(seed=4), tiny_lora_model(seed=4)
    kw = {"lr": 5e-3, "weight_decay": 0.01, "warmup": 2, "lam": 0.3, "alpha": 0.9}
    opt = FisherAdamW(ours, normalization=normalization, **kw)
    ref = ReferenceFWLoRA(theirs, normalization=normalization, **kw)
    for batch in data:
        opt.zero_grad()
        loss_of(ours, batch).backward()
        opt.step()
        ref.step(batch)
        _assert_params_close(ours, theirs)
    assert opt.importance == pytest.approx(ref.importance(), rel=1e-10)
    m = len(opt.importance)
    if normalization == "uniform":
        assert set(opt.importance.values()) == {1.0 / m}
        assert sum(1 - i for i in opt.importance.values()) == pytest.approx(m - 1)


def test_penalty_grad_ratio_matches_autograd():
    """‖∇P‖ / ‖∇L_task‖ over the LoRA factors, each penalised step, against autograd."""
    data = batches(6)
    ours, theirs = tiny_lora_model(seed=6), tiny_lora_model(seed=6)
    kw = {"lr": 5e-3, "weight_decay": 0.01, "warmup": 2, "lam": 0.05}
    opt = FisherAdamW(ours, **kw)
    ref = ReferenceFWLoRA(theirs, **kw)
    for t, batch in enumerate(data, start=1):
        opt.zero_grad()
        loss_of(ours, batch).backward()
        opt.step()
        ref.step(batch)
        if t <= 2:
            assert opt.penalty_grad_ratio is None and opt.penalty_grad_ratios() == []
    assert len(ref.ratios) == 4
    assert opt.penalty_grad_ratios() == pytest.approx(ref.ratios, rel=1e-9)
    assert opt.penalty_grad_ratio == pytest.approx(ref.ratios[-1], rel=1e-9)
    assert all(r > 0 for r in ref.ratios)


def test_penalty_grad_ratio_measured_on_documented_steps():
    """‖∇L_task‖ costs a pass over the gradients, so the ratio is measured on the first
    `every` penalised steps, then every `every`-th, and on a step forced by force_next();
    measured values equal autograd's, and unmeasured steps are penalised all the same."""
    data = batches(9)
    ours, theirs = tiny_lora_model(seed=6), tiny_lora_model(seed=6)
    kw = {"lr": 5e-3, "weight_decay": 0.01, "warmup": 2, "lam": 0.05}
    opt = FisherAdamW(ours, ratio_every=3, **kw)
    ref = ReferenceFWLoRA(theirs, **kw)
    for t, batch in enumerate(data, start=1):
        if t == 7:
            opt.fisher_weighting.strength.force_next()
        opt.zero_grad()
        loss_of(ours, batch).backward()
        opt.step()
        ref.step(batch)
    _assert_params_close(ours, theirs)
    # Penalised steps j = t - K = 1..7: j <= 3, j % 3 == 0, and the forced j = 5.
    steps = opt.penalty_grad_ratio_steps()
    assert steps == [3, 4, 5, 7, 8]
    assert opt.penalty_grad_ratios() == pytest.approx([ref.ratios[t - 3] for t in steps], rel=1e-9)
    assert opt.penalty_grad_ratio == pytest.approx(ref.ratios[8 - 3], rel=1e-9)


def test_ratio_every_one_measures_every_penalised_step():
    """ratio_every=1 (what the harness uses): one read-out per penalised step, each equal to
    autograd's, so a median over penalty_grad_ratios() is the median over the run; a value
    below 1 is refused naming the option."""
    data = batches(7)
    ours, theirs = tiny_lora_model(seed=7), tiny_lora_model(seed=7)
    kw = {"lr": 5e-3, "weight_decay": 0.01, "warmup": 2, "lam": 0.05}
    opt = FisherAdamW(ours, ratio_every=1, **kw)
    ref = ReferenceFWLoRA(theirs, **kw)
    _train(ours, opt, data)
    for batch in data:  # the reference is independent of `ours`: no lock-step needed
        ref.step(batch)
    _assert_params_close(ours, theirs)
    assert opt.penalty_grad_ratio_steps() == [3, 4, 5, 6, 7]
    assert opt.penalty_grad_ratios() == pytest.approx([ref.ratios[j] for j in range(5)], rel=1e-9)
    with pytest.raises(ValueError, match="ratio_every"):
        FisherAdamW(tiny_lora_model(seed=7), ratio_every=0)


def test_penalty_grad_norm_from_grams_matches_autograd():
    """‖∇P‖² from the r × r Gram matrices (no pass over the gradients) equals the squared
    norm of autograd's gradient of the scaled penalty, and the added gradient is that one."""
    model = tiny_lora_model(seed=3, random_b=True)
    matrices = find_adapter_matrices(model)
    factors = torch.linspace(0.1, 0.9, len(matrices), dtype=torch.float64).tolist()
    penalty = FisherPenalty(matrices)
    penalty.set_factors(factors)
    assert len(penalty.groups) > 1  # several shape groups are summed
    params = [p for m in matrices for p in (m.lora_A, m.lora_B)]
    for p in params:
        p.grad = torch.zeros_like(p)
    sq = penalty.add_gradients(0.7, measure=True)
    assert sq is not None and sq.dtype == torch.float64
    value = 0.7 * sum(
        f * (m.scaling * m.lora_B @ m.lora_A).pow(2).sum() for f, m in zip(factors, matrices)
    )
    expected = torch.autograd.grad(value, params)
    assert float(sq) == pytest.approx(float(sum(g.pow(2).sum() for g in expected)), rel=1e-9)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-15)


def test_decoupled_reading_matches_reference():
    data = batches(6)
    ours, theirs = tiny_lora_model(seed=5), tiny_lora_model(seed=5)
    opt = FisherAdamW(ours, lr=1e-2, weight_decay=0.3, warmup=2, penalty="decoupled")
    ref = ReferenceFWLoRA(theirs, lr=1e-2, weight_decay=0.3, warmup=2, lam=1e-4, decoupled=True)
    _train(ours, opt, data)
    for batch in data:  # the reference is independent of `ours`: no lock-step needed
        ref.step(batch)
    _assert_params_close(ours, theirs)


def test_closure_is_evaluated_before_the_penalty():
    data = batches(5)
    a, b = tiny_lora_model(seed=2), tiny_lora_model(seed=2)
    opt_a = FisherAdamW(a, lr=1e-2, warmup=2, lam=0.5)
    opt_b = FisherAdamW(b, lr=1e-2, warmup=2, lam=0.5)
    for batch in data:

        def closure(batch=batch):
            opt_a.zero_grad()
            loss = loss_of(a, batch)
            loss.backward()
            return loss

        returned = opt_a.step(closure)
        assert returned is not None
        opt_b.zero_grad()
        loss_of(b, batch).backward()
        opt_b.step()
    _assert_params_close(a, b, rtol=0, atol=0)


def test_backbone_stays_frozen_and_hooks_go_after_warmup():
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=2)
    matrices = opt.fisher_weighting.matrices
    assert all(len(m.module._forward_hooks) == 1 for m in matrices)
    _train(model, opt, batches(3))
    assert all(len(m.module._forward_hooks) == 0 for m in matrices)
    for m in matrices:
        w = m.module.base_layer.weight
        assert not w.requires_grad and w.grad is None


def test_foreach_and_fused_paths_agree():
    data = batches(6)
    models = [tiny_lora_model(seed=4, dtype=torch.float32) for _ in range(3)]
    opts = [
        FisherAdamW(models[0], lr=1e-2, warmup=2, lam=0.5, foreach=False),
        FisherAdamW(models[1], lr=1e-2, warmup=2, lam=0.5, foreach=True),
        FisherAdamW(models[2], lr=1e-2, warmup=2, lam=0.5, fused=True),
    ]
    for model, opt in zip(models, opts):
        _train(model, opt, data)
    _assert_params_close(models[0], models[1], rtol=1e-5, atol=1e-6)
    _assert_params_close(models[0], models[2], rtol=1e-5, atol=1e-6)


def test_export_json_and_readouts(tmp_path):
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=2)
    assert opt.importance is None and opt.phase == "warmup"
    _train(model, opt, batches(2))
    imp = opt.importance
    assert imp is not None and sum(imp.values()) == pytest.approx(1.0)
    assert set(imp) == set(opt.fisher)
    import json

    data = json.loads(opt.export_json(tmp_path / "imp.json").read_text())
    assert data["phase"] == "frozen" and data["importance"] == pytest.approx(imp)
    assert data["options"]["warmup"] == 2
    assert float(opt.penalty_value()) > 0.0


def test_copy_of_model_is_independent():
    """A deep copy made while the optimizer's hooks are on the model must not feed it."""
    model = tiny_lora_model()
    opt = FisherAdamW(model, lr=1e-2, warmup=3)
    assert any(m._forward_hooks for m in model.modules())  # warm-up hooks are attached
    clone = copy.deepcopy(model)  # carries the hooks along
    data = batches(3)
    _train(model, opt, data[:1])
    fisher_before = dict(opt.fisher)
    for batch in data[1:]:  # forward/backward on the clone only: nothing may be recorded
        clone.zero_grad()
        loss_of(clone, batch).backward()
    assert opt.fisher_weighting.statistics.take_row(torch.device("cpu")).abs().sum() == 0
    assert opt.fisher == fisher_before and opt.fisher_weighting.step == 1
