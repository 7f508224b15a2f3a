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
    # ... which are FW-LoRA's own defaults, defined once (fwlora.optim.options).
    from fwlora.optim.options import DEFAULTS

    assert (cfg.fisher_warmup, cfg.fisher_alpha, cfg.fisher_lam) == (
        DEFAULTS.warmup,
        DEFAULTS.alpha,
        DEFAULTS.lam,
    )
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


# ------------------------------------------------- one typed schema (issue 10, item 7)
def test_yaml_text_numbers_are_coerced(tmp_path):
    # YAML 1.1 reads `1e-3` (no dot) as the string "1e-3"; it is unambiguous: a number.
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nfisher_lam: 5e-4\nepochs: '2'\n")
    raw = read_config_file(path)
    assert raw["lr"] == "1e-3"
    cfg = build_config(raw)
    assert (cfg.lr, cfg.fisher_lam, cfg.epochs) == (1e-3, 5e-4, 2)


def test_toml_text_for_an_integer_names_key_and_type(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = "one"\n')
    with pytest.raises(HarnessError, match=r"^epochs: expected an integer >= 1, got 'one'$"):
        build_config(read_config_file(path))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": -1e-3}, r"^lr: expected a number > 0, got -0\.001$"),
        ({"lr": "-1e-3"}, r"^lr: expected a number > 0, got '-1e-3'$"),
        ({"lora_dropout": 1.5}, r"^lora_dropout: expected a number in \[0, 1\), got 1\.5$"),
        ({"max_train_samples": -5}, r"^max_train_samples: expected an integer >= 1, got -5$"),
        ({"epochs": True}, r"^epochs: expected an integer >= 1 \(not true/false\), got True$"),
        ({"epochs": 2.5}, r"^epochs: expected an integer >= 1, got 2\.5$"),
        ({"lr": "nan"}, r"^lr: expected a number > 0 \(finite\), got 'nan'$"),
        ({"target_modules": ""}, r"^target_modules: expected comma-separated, non-empty items"),
        ({"target_modules": "query,,value"}, r"^target_modules: expected comma-separated"),
        ({"quiet": "maybe"}, r"^quiet: expected true or false, got 'maybe'$"),
        ({"model": 3}, r"^model: expected a string, got 3$"),
        ({"seed": -1}, r"^seed: expected an integer in \[0, 4294967295\], got -1$"),
        ({"eval_fraction": 1}, r"^eval_fraction: expected a number in \(0, 1\), got 1$"),
    ],
)
def test_the_schema_refuses_naming_key_and_expected_type(overrides, message):
    with pytest.raises(HarnessError, match=message):
        build_config(overrides)


def test_several_errors_report_the_first_and_count_the_rest():
    with pytest.raises(HarnessError, match=r"^lr: .* \(and 1 more\)$"):
        build_config({"lr": 0, "epochs": 0})


def test_replace_validates_like_build():
    cfg = build_config()
    with pytest.raises(HarnessError, match=r"^rank: expected an integer >= 1, got 0$"):
        cfg.replace(rank=0)


@pytest.mark.parametrize(
    ("harness_key", "option", "value"),
    [
        ("fisher_alpha", "alpha", 1.0),
        ("fisher_warmup", "warmup", 0),
        ("fisher_lam", "lam", -1.0),
        ("fisher_normalization", "normalization", "l1"),
    ],
)
def test_fw_lora_options_are_judged_by_their_one_definition(harness_key, option, value):
    """The harness does not re-check FW-LoRA's options: FisherOptions' own message comes
    through, under the harness's key."""
    from fwlora.optim.options import FisherOptions

    with pytest.raises(ValueError) as core:
        FisherOptions(**{option: value})
    reason = str(core.value).split(": ", 1)[1]
    with pytest.raises(HarnessError) as harness:
        build_config({harness_key: value})
    assert str(harness.value) == f"{harness_key}: {reason}"


def test_every_normalization_the_optimizer_knows_is_accepted():
    from fwlora.optim.options import FisherOptions

    # Whatever FisherOptions accepts (e.g. "uniform", the L2 control) the harness accepts.
    for name in ("sum", "max", "uniform"):
        FisherOptions(normalization=name)
        assert build_config({"fisher_normalization": name}).fisher_normalization == name


def test_lists_of_a_compare_are_validated():
    from fwlora.harness.config import run_lists

    defaults = {"methods": ["lora", "fw-lora"], "seeds": [42]}
    lists = run_lists(defaults, {"methods": "lora, adalora", "seeds": "1,2"})
    assert (lists.methods, lists.seeds) == (["lora", "adalora"], [1, 2])
    assert run_lists(defaults, {"methods": None}).methods == ["lora", "fw-lora"]
    for bad, message in (
        ({"methods": ""}, "^methods: expected comma-separated, non-empty items, got ''$"),
        ({"seeds": ","}, "^seeds: expected comma-separated, non-empty items, got ','$"),
        ({"seeds": []}, r"^seeds: expected at least one item, got \[\]$"),
        ({"seeds": "1,x"}, r"^seeds\[1\]: expected an integer in \[0, 4294967295\], got 'x'$"),
        ({"methods": "lora,dora"}, r"^methods\[1\]: unknown value 'dora'; choose one of"),
    ):
        with pytest.raises(HarnessError, match=message):
            run_lists(defaults, bad)


@pytest.mark.parametrize(
    ("suffix", "text", "message"),
    [
        (".yaml", "lr: 0.001\nepochs: 2\nlr: 0.5\n", r"key 'lr' is given twice \(lines 1 and 3\)"),
        (".json", '{"lr": 0.001, "lr": 0.5}', "key 'lr' is given twice"),
        (".toml", "lr = 0.001\nlr = 0.5\n", "cannot parse"),
    ],
)
def test_a_key_given_twice_is_refused_naming_it(tmp_path, suffix, text, message):
    path = tmp_path / f"settings{suffix}"
    path.write_text(text)
    with pytest.raises(HarnessError, match=message):
        read_config_file(path)
