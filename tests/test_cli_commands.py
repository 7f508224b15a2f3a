"""The `fwlora` command line: every command on the tiny model, and bad input answered with
a message (exit status 2, no traceback)."""

import json

import pytest
import yaml

from fwlora.cli import build_parser, main
from fwlora.harness.testing import tiny_settings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_settings(tmp_path_factory.mktemp("cli"))


def _flags(settings, skip=()):
    out = []
    for key, value in settings.items():
        if key in skip:
            continue
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def test_train_writes_artefacts_and_report(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "-o", str(out), "--method", "fw-lora", *_flags(tiny)]) == 0
    printed = capsys.readouterr().out
    assert "fw-lora" in printed and "report:" in printed
    for name in (
        "metrics.json",
        "aggregated_metrics.json",
        "significance_tests.json",
        "experiment.yaml",
        "report/index.html",
    ):
        assert (out / name).is_file(), name
    run_dir = next((out / "runs").iterdir())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["method"] == "fw-lora" and saved["lr"] == tiny["lr"]
    assert saved["target_modules"] == [
        "query",
        "key",
        "value",
        "intermediate.dense",
        "output.dense",
    ]

    # The output exists now: refused without --overwrite, replaced with it.
    assert main(["train", "-o", str(out), *_flags(tiny)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "-o", str(out), "--overwrite", *_flags(tiny)]) == 0
    capsys.readouterr()

    site = tmp_path / "site"
    assert main(["report", str(out), "-o", str(site), "--title", "My title"]) == 0
    assert '<h2 class="paper-title">My title</h2>' in (site / "index.html").read_text()


def test_compare_from_a_config_file(tiny, tmp_path, capsys):
    config = tmp_path / "compare.toml"
    settings = {k: v for k, v in tiny.items() if k != "quiet"} | {
        "epochs": 1,
        "methods": ["lora", "adalora"],
        "seeds": [3, 4],
    }
    config.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items()) + "\n")
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "-o", str(out), "--quiet"]) == 0
    doc = json.loads((out / "aggregated_metrics.json").read_text())
    assert list(doc["groups"]) == ["lora", "adalora"]
    assert doc["groups"]["lora"]["seeds"] == [3, 4]
    assert "adalora − lora" in capsys.readouterr().out


def test_sweep_command(tiny, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "-o",
        str(out),
        "--ks",
        "2",
        "--lams",
        "0.0005",
        "--seeds",
        "1",
        *_flags(tiny | {"epochs": 1}),
    ]
    assert main(args) == 0
    groups = json.loads((out / "aggregated_metrics.json").read_text())["groups"]
    assert "fw-lora-no-fisher-term" in groups and "lora" in groups


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "imdb"], "choose one of sst2, cola, mrpc, qnli, rte, qqp, drugreview, file"),
        (["--method", "dora"], "choose one of lora, fw-lora, adalora"),
        (["--model", "./no/such/dir"], "known names: roberta-base, minilm-l6"),
        (["--model", "bert-base-uncased"], "Point --model at a local directory"),
        (["--target-modules", "q_proj"], "match no Linear layer"),
    ],
)
def test_bad_input_is_a_message_not_a_traceback(tiny, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "bad"
    settings = {k: v for k, v in tiny.items() if f"--{k.replace('_', '-')}" not in args}
    assert main(["train", "-o", str(out), *_flags(settings), *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert err.startswith("fwlora train: error:")


def test_unknown_method_in_compare(capsys):
    assert main(["compare", "--methods", "lora,vera"]) == 2
    assert "choose from lora, fw-lora, adalora" in capsys.readouterr().err


def test_report_of_a_directory_that_is_not_an_experiment(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished experiment directory" in capsys.readouterr().err


def test_every_setting_has_a_flag():
    from fwlora.harness.config import FIELDS

    train = build_parser().parse_args(["train"])
    assert set(FIELDS) <= set(vars(train))
