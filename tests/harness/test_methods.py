"""The method registry (`fwlora.harness.methods`): every method is one definition, and the
harness asks the registry instead of naming methods — so a method registered by a test is
taken by the settings' schema, trained, labelled in the tables and placed in the sweep."""

from __future__ import annotations

import dataclasses

import pytest

from fwlora.harness import methods
from fwlora.harness.config import (
    DEFAULT_NORMALIZATION,
    FISHER_METHODS,
    METHODS,
    build_config,
    run_lists,
)
from fwlora.harness.errors import HarnessError
from fwlora.harness.experiment import run_experiment, summary_table
from fwlora.harness.sweep import grid_label, lambda_curve, plan_grid
from tiny import tiny_settings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_settings(tmp_path_factory.mktemp("methods"))


def test_every_method_has_one_definition():
    assert METHODS == ("lora", "fw-lora", "adalora", "l2-lora") == methods.names()
    for name in METHODS:
        method = methods.get(name)
        assert method.name == name and callable(method.adapters) and callable(method.optimizer)
    assert FISHER_METHODS == ("fw-lora", "l2-lora")
    assert DEFAULT_NORMALIZATION == {"fw-lora": "sum", "l2-lora": "uniform"}
    assert methods.record_keys() == ("fisher", "adalora")
    assert methods.settings_prefixes() == ("fisher_", "adalora_")
    assert methods.baseline().name == "lora" and methods.control().name == "l2-lora"
    orders = sorted(METHODS, key=lambda n: methods.get(n).order)
    assert orders == ["lora", "fw-lora", "l2-lora", "adalora"]


def test_unknown_and_repeated_methods_are_refused():
    with pytest.raises(HarnessError, match="method: unknown value 'x'; choose one of lora, fw-"):
        methods.get("x")
    assert methods.lookup("x") is None and not methods.is_fisher("x")
    with pytest.raises(ValueError, match="'lora' is already registered"):
        methods.register(methods.get("lora"))


@pytest.fixture
def extra_methods():
    """Two methods registered for one test: `my-lora` (plain LoRA under another name) and
    `my-l2` (a FW-LoRA method with a fixed normalisation, like l2-lora)."""
    mine = dataclasses.replace(methods.get("lora"), name="my-lora", title="My-LoRA", order=7)
    mine = dataclasses.replace(mine, baseline=False, trains_subsets=False)
    l2 = dataclasses.replace(methods.get("l2-lora"), name="my-l2", order=5, control=False)
    for method in (mine, l2):
        methods.register(method)
    yield mine, l2
    for method in (mine, l2):
        methods.unregister(method.name)


def test_a_registered_method_is_accepted_by_the_settings(tiny, extra_methods):
    cfg = build_config(tiny, {"method": "my-lora"})
    assert cfg.method == "my-lora" and cfg.normalization == "sum"
    assert build_config(tiny, {"method": "my-l2"}).normalization == "uniform"
    assert run_lists({"methods": "lora,my-lora", "seeds": [1]}).methods == ["lora", "my-lora"]
    with pytest.raises(
        HarnessError, match="choose one of lora, fw-lora, adalora, l2-lora, my-lora"
    ):
        build_config(tiny, {"method": "nope"})
    with pytest.raises(HarnessError, match="fisher_normalization: my-l2 is the uniform control"):
        build_config(tiny, {"method": "my-l2", "fisher_normalization": "max"})
    with pytest.raises(HarnessError, match="trainable_modules: freezes adapters of plain LoRA"):
        build_config(tiny, {"method": "my-lora", "trainable_modules": "a"})


def test_a_registered_method_is_unknown_again_after_its_test(tiny):
    with pytest.raises(HarnessError, match="method: unknown value 'my-lora'"):
        build_config(tiny, {"method": "my-lora"})


def test_a_registered_method_trains_and_is_labelled_in_the_tables(tiny, tmp_path, extra_methods):
    base = build_config(tiny, {"epochs": 1})
    configs = [base.replace(method=m, seed=1, variant=None) for m in ("lora", "my-lora")]
    exp = run_experiment(configs, tmp_path / "out", n_resamples=100)
    run = next(r for r in exp.runs if r.method == "my-lora")
    assert run.label == "my-lora" and run.fisher is None
    assert run["fisher"] is None and run["adalora"] is None  # every record key, null
    lora = next(r for r in exp.runs if r.method == "lora")
    assert run.final_eval_acc == lora.final_eval_acc  # the same adapters and optimizer
    assert list(exp.aggregated["groups"]) == ["lora", "my-lora"]
    table = summary_table(exp)
    assert table.splitlines()[3].startswith("my-lora ")
    assert "my-lora − lora: Δacc" in table


def test_a_registered_method_has_its_place_in_the_sweep(tiny, extra_methods):
    assert grid_label("my-lora", 0.01, "sum") == "my-lora"
    assert grid_label("my-l2", 0.01, "sum") == "my-l2-lam0.01"
    configs = plan_grid(build_config(tiny), ["my-lora", "my-l2"], [0.01], ["sum", "max"], [1])
    assert [(c.label, c.fisher_normalization) for c in configs] == [
        ("my-lora", None),
        ("my-l2-lam0.01", None),
    ]

    def run(method, norm):
        fisher = {"lam": 0.01, "normalization": norm, "penalty_grad_ratio": 0.1}
        return {"run": f"{method}-{norm}", "label": method, "method": method, "seed": 1}, fisher

    runs = []
    for method, norm in (("my-l2", "uniform"), ("l2-lora", "uniform"), ("fw-lora", "max")):
        record, fisher = run(method, norm)
        runs.append({**record, "final_eval_acc": 0.5, "fisher": fisher})
    # Series in the methods' order: fw-lora (1), l2-lora (2), my-l2 (5).
    assert list(lambda_curve(runs)["series"]) == ["fw-lora (max)", "l2-lora", "my-l2"]
