"""Unit tests of optim/sharding.py and optim/launcher.py, in process (no process group): the
refusals of FSDP1, DeepSpeed and accelerate's launch flags, and re-adopting LoRA factors that
were replaced after FW-LoRA was built (what fully_shard does), or refusing when the optimizer
still updates the old ones. The FSDP2 runs themselves are in test_fsdp2.py."""

from __future__ import annotations

import pytest
import torch

from fwlora import FisherAdamW, find_adapter_matrices
from fwlora.optim import distributed as fw_dist
from fwlora.optim import launcher
from fwlora.optim.sharding import current_matrices
from tiny import batches, loss_of, tiny_lora_model


def test_fsdp1_flat_parameters_are_refused():
    model = tiny_lora_model()
    opt = FisherAdamW(model, warmup=2)
    first = opt.fisher_weighting.matrices[0]
    # How FSDP1 marks every parameter it flattens (FSDP1 needs an accelerator to build).
    first.lora_B._fsdp_flattened = True
    try:
        with pytest.raises(ValueError, match=r"FSDP: .* FSDP1 .*FSDP2 \(fully_shard\)"):
            FisherAdamW(model, warmup=2)
        loss_of(model, batches(1)[0]).backward()
        with pytest.raises(ValueError, match=r"FSDP: .* FSDP1"):  # wrapped after building
            opt.step()
    finally:
        del first.lora_B._fsdp_flattened


def test_fsdp1_wrapper_in_the_model_is_refused():
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = tiny_lora_model()
    # An FSDP1 wrapper in the module tree (a real one needs an accelerator to build).
    wrapper = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    torch.nn.Module.__init__(wrapper)
    model.base_model.model.add_module("fsdp1", wrapper)
    with pytest.raises(ValueError, match=r"FSDP: the model is wrapped by FSDP1"):
        fw_dist.check_model(model)
    fw_dist.check_model(tiny_lora_model())  # a plain peft model passes


@pytest.mark.parametrize(
    ("version", "refused"), [(None, True), ("1", True), ("2", False)], ids=["unset", "1", "2"]
)
def test_accelerate_fsdp_launch_flags(monkeypatch, version, refused):
    monkeypatch.setattr(launcher, "_accelerate_shared_state", dict)  # no Accelerator yet
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    if version is None:
        monkeypatch.delenv("FSDP_VERSION", raising=False)
    else:
        monkeypatch.setenv("FSDP_VERSION", version)
    if refused:
        with pytest.raises(ValueError, match=r"FSDP: not supported .*use fsdp_version 2"):
            FisherAdamW(tiny_lora_model(), warmup=2)
    else:
        FisherAdamW(tiny_lora_model(), warmup=2)  # FSDP2: accepted


@pytest.mark.parametrize(
    ("state", "refused"),
    [
        ({"distributed_type": "MULTI_CPU"}, False),  # accelerate fell back to DDP (CPU)
        ({"distributed_type": "FSDP", "fsdp_plugin": type("P", (), {"fsdp_version": 1})}, True),
        ({"distributed_type": "FSDP", "fsdp_plugin": type("P", (), {"fsdp_version": 2})}, False),
    ],
    ids=["fell-back-to-ddp", "fsdp1", "fsdp2"],
)
def test_trainer_fsdp_on_cpu_falls_back_to_ddp_and_is_accepted(monkeypatch, state, refused):
    """The Trainer sets ACCELERATE_USE_FSDP; on CPU accelerate then runs DDP: nothing is
    sharded, so FW-LoRA works as under DDP (docs/distributed.md)."""
    monkeypatch.setattr(launcher, "_accelerate_shared_state", lambda: state)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    if refused:
        with pytest.raises(ValueError, match=r"FSDP: not supported with FSDP version 1"):
            FisherAdamW(tiny_lora_model(), warmup=2)
    else:
        FisherAdamW(tiny_lora_model(), warmup=2)


def test_deepspeed_is_refused_pointing_to_fsdp2(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match=r"DeepSpeed: not supported.*FSDP2"):
        FisherAdamW(tiny_lora_model(), warmup=2)


def test_sharding_refusal_names_the_engine_and_its_source():
    assert launcher.sharding_refusal() is None
    assert launcher.sharding_refusal(fsdp_version=2) is None
    assert launcher.sharding_refusal(deepspeed=True, source="x") == "DeepSpeed: not supported (x)"
    text = launcher.sharding_refusal(fsdp_version=1, source="the Trainer")
    assert text is not None and text.startswith("FSDP: not supported with FSDP version 1")
    assert "(the Trainer)" in text and "fsdp_version 2" in text


def test_no_launcher_flags_means_no_refusal(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert launcher.launcher_refusal() is None


def _replace_factors(matrix):
    """What fully_shard does to a LoRA layer: new parameter objects for A and B."""
    layer = matrix.module
    for factors in (layer.lora_A, layer.lora_B):
        old = factors[matrix.adapter].weight
        factors[matrix.adapter].weight = torch.nn.Parameter(old.detach().clone())


def test_unchanged_factors_need_no_adoption():
    model = tiny_lora_model()
    matrices = find_adapter_matrices(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    assert current_matrices(matrices, opt) is None


def test_replaced_factors_are_adopted_when_the_optimizer_updates_them():
    model = tiny_lora_model()
    matrices = find_adapter_matrices(model)
    _replace_factors(matrices[0])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    fresh = current_matrices(matrices, opt)
    assert fresh is not None and len(fresh) == len(matrices)
    assert fresh[0].lora_A is matrices[0].module.lora_A[matrices[0].adapter].weight
    assert fresh[0].lora_A is not matrices[0].lora_A  # the stale one was replaced
    assert all(f is m for f, m in zip(fresh[1:], matrices[1:]))  # the rest kept as they were


def test_replaced_factors_with_a_stale_optimizer_are_refused():
    model = tiny_lora_model()
    matrices = find_adapter_matrices(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    _replace_factors(matrices[0])  # after the optimizer was built, never remapped
    with pytest.raises(ValueError, match=r"replaced after FW-LoRA was built .*Build the optimizer"):
        current_matrices(matrices, opt)


def test_fisher_adamw_adopts_factors_replaced_before_its_first_step():
    """End to end: the optimizer is remapped to the new factors (as accelerate's prepare does
    after fully_shard); FW-LoRA adopts them at the first step and observes them."""
    model = tiny_lora_model()
    opt = FisherAdamW(model, warmup=2)
    matrix = opt.fisher_weighting.matrices[0]
    _replace_factors(matrix)
    new = dict(zip(["A", "B"], matrix.current_factors()))
    old = {"A": matrix.lora_A, "B": matrix.lora_B}
    for group in opt.param_groups:
        group["params"] = [
            new["A"] if q is old["A"] else new["B"] if q is old["B"] else q for q in group["params"]
        ]
    loss_of(model, batches(1)[0]).backward()
    opt.step()
    assert opt.fisher_weighting.matrices[0].lora_A is new["A"]
    assert opt.fisher_weighting.step == 1
