"""Settings: the paper's defaults, config files, overrides, validation, budgets."""

import pytest
import yaml

from fwlora.harness import budget
from fwlora.harness.config import RunConfig, build_config, read_config_file, save_config
from fwlora.harness.errors import HarnessError


def test_defaults_are_the_papers_recipe():
    cfg = build_config()
    assert cfg.model == "roberta-base"
    assert cfg.task == "sst2"
    assert (cfg.rank, cfg.lora_alpha) == (8, 16.0)
    assert cfg.target_modules == ["query", "key", "value", "intermediate.dense", "output.dense"]
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_ratio) == (2e-4, 0.01, 0.06)
    assert (cfg.batch_size, cfg.epochs, cfg.max_length, cfg.seed) == (32, 3, 128, 42)
    assert (cfg.fisher_warmup, cfg.fisher_alpha, cfg.fisher_lam) == (500, 0.98, 1e-4)
    assert cfg.precision == "auto"


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".yaml", "lr: 0.001\ntarget_modules: [query, value]\nfisher-lam: 0.0005\n"),
        (".toml", 'lr = 0.001\ntarget_modules = ["query", "value"]\nfisher-lam = 0.0005\n'),
        (".json", '{"lr": 0.001, "target_modules": ["query", "value"], "fisher-lam": 0.0005}'),
    ],
)
def test_config_files_then_flags_override_defaults(tmp_path, suffix, text):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    cfg = build_config(read_config_file(path), {"seed": 7, "epochs": None})
    assert (cfg.lr, cfg.fisher_lam, cfg.seed, cfg.epochs) == (1e-3, 5e-4, 7, 3)
    assert cfg.target_modules == ["query", "value"]


def test_resolved_config_round_trips(tmp_path):
    cfg = build_config({"method": "adalora", "target_modules": "query, value"})
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert build_config(saved) == cfg
    assert saved["target_modules"] == ["query", "value"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "dora"}, "choose one of lora, fw-lora, adalora"),
        ({"precision": "fp8"}, "choose one of auto, fp32, bf16"),
        ({"learning_rate": 1.0}, "unknown setting 'learning_rate'; known settings:"),
        ({"fisher_alpha": 1.0}, "fisher_alpha"),
        ({"budget_percent": 0.0}, "budget_percent"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_bad_settings_are_named_with_their_choices(overrides, message):
    with pytest.raises(HarnessError, match=message):
        build_config(overrides)


def test_unreadable_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="not found"):
        read_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.ini"
    bad.write_text("x")
    with pytest.raises(HarnessError, match="unknown format"):
        read_config_file(bad)


def test_budget_percentage_becomes_a_rank():
    # roberta-base shapes: per layer q, k, v, attention.output (768→768), intermediate
    # (768→3072) and output (3072→768), 12 layers; ≈ 124.6 M backbone parameters.
    layer = [(768, 768)] * 4 + [(768, 3072), (3072, 768)]
    linears = [
        budget.TargetLinear(f"l{i}.{j}", a, b) for i in range(12) for j, (a, b) in enumerate(layer)
    ]
    backbone = 124_647_170
    per_rank = sum(t.in_features + t.out_features for t in linears)
    assert budget.lora_params(linears, 8) == 8 * per_rank
    for percent in (0.1, 0.2, 0.5):
        rank = budget.rank_for_budget(percent, backbone, linears)
        assert rank == max(1, round(percent / 100 * backbone / per_rank))
        # The chosen rank is the closest to the budget.
        best = min(range(1, 64), key=lambda r: abs(r * per_rank - percent / 100 * backbone))
        assert rank == best
    assert budget.adalora_params(linears, 2) == 2 * (per_rank + len(linears))


def test_run_config_label_defaults_to_method():
    assert RunConfig(method="lora").label == "lora"
    assert RunConfig(method="fw-lora", variant="fw-lora-K300").label == "fw-lora-K300"
