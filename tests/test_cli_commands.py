"""The `fwlora` command line: every command on the tiny model, and bad input answered with
a message (exit status 2, no traceback)."""

import json

import pytest
import yaml

from fwlora.cli import build_parser, main
from tiny import settings_flags, tiny_settings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_settings(tmp_path_factory.mktemp("cli"))


def test_train_writes_artefacts_and_report(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "-o", str(out), "--method", "fw-lora", *settings_flags(tiny)]) == 0
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
    assert main(["train", "-o", str(out), *settings_flags(tiny)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "-o", str(out), "--overwrite", *settings_flags(tiny)]) == 0
    capsys.readouterr()

    site = tmp_path / "site"
    assert main(["report", str(out), "-o", str(site), "--title", "My title"]) == 0
    assert '<h2 class="paper-title">My title</h2>' in (site / "index.html").read_text()

    # Issue 18 B4: a folder with the user's own index.html is refused (nothing written)
    # unless --overwrite; a page fwlora wrote is replaced.
    assert main(["report", str(out), "-o", str(site), "--title", "Again"]) == 0
    assert "Again" in (site / "index.html").read_text()
    capsys.readouterr()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("<h1>my homepage</h1>")
    assert main(["report", str(out), "-o", str(mine)]) == 2
    err = capsys.readouterr().err
    assert f"-o {mine}: holds its index.html that fwlora report did not write" in err
    _one_line_error(err, "report")
    assert [p.name for p in mine.iterdir()] == ["index.html"]
    assert (mine / "index.html").read_text() == "<h1>my homepage</h1>"
    assert main(["report", str(out), "-o", str(mine), "--overwrite"]) == 0
    assert "paper-title" in (mine / "index.html").read_text()
    # The report/ folder of an experiment fwlora wrote is fwlora's.
    (out / "report" / "index.html").write_text("an older page without the mark")
    assert main(["report", str(out)]) == 0


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


def test_ablation_command(tiny, tmp_path):
    out = tmp_path / "ablation"
    args = [
        "ablation",
        "-o",
        str(out),
        "--ks",
        "2",
        "--lams",
        "0.0005",
        "--seeds",
        "1",
        *settings_flags(tiny | {"epochs": 1}),
    ]
    assert main(args) == 0
    groups = json.loads((out / "aggregated_metrics.json").read_text())["groups"]
    assert "fw-lora-no-fisher-term" in groups and "lora" in groups


@pytest.mark.parametrize("seeds", [42, "42", [42], ["42"]])
def test_one_seed_is_one_seed_in_every_command(seeds):
    from fwlora.harness.config import ablation_lists, run_lists

    assert ablation_lists({"seeds": seeds, "ks": [1], "lams": [0.0]}).seeds == [42]
    assert run_lists({"methods": "lora", "seeds": seeds}).seeds == [42]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "imdb"], "choose one of sst2, cola, mrpc, qnli, rte, qqp, drugreview, file"),
        (["--method", "dora"], "choose one of lora, fw-lora, adalora"),
        (["--model", "./no/such/dir"], "known names: roberta-base, minilm-l6"),
        (["--model", "bert-base-uncased"], "Point --model at a local directory"),
        (["--target-modules", "q_proj"], "match no Linear layer"),
        (["--max-length", "65"], "max_length: 65 is more than model"),  # issue 18 B6
        (["--max-length", "1"], "max_length: 1 leaves no room for text beside the 2 special"),
    ],
)
def test_bad_input_is_a_message_not_a_traceback(tiny, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "bad"
    settings = {k: v for k, v in tiny.items() if f"--{k.replace('_', '-')}" not in args}
    assert main(["train", "-o", str(out), *settings_flags(settings), *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert err.startswith("fwlora train: error:")


@pytest.mark.parametrize(
    ("max_length", "message"),
    [
        (
            "600",
            "max_length: 600 is more than model minilm-l6 takes (512 tokens); expected an "
            "integer in [3, 512]",
        ),
        ("2", "max_length: 2 leaves no room for text beside the 2 special tokens"),
    ],
)
def test_max_length_is_checked_against_minilm(tiny, tmp_path, capsys, max_length, message):
    """Issue 18 B6: MiniLM has 512 positions; below 3 its tokenizer keeps no text (at 1 it
    did not truncate at all)."""
    out = tmp_path / "out"
    settings = tiny | {"model": "minilm-l6", "max_length": max_length}
    assert main(["train", "-o", str(out), *settings_flags(settings)]) == 2
    err = capsys.readouterr().err
    assert message in err
    _one_line_error(err, "train")
    assert not out.exists()


def test_the_shortest_max_length_truncates(tiny):
    from transformers import AutoTokenizer

    from fwlora.harness.batching import Encoded
    from fwlora.harness.data import Split
    from fwlora.harness.models import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    encoded = Encoded(tokenizer, Split(["a long review of a drug that helped"] * 2, [0, 1]), 3)
    assert encoded.lengths().tolist() == [3, 3]


def test_unknown_method_in_compare(capsys):
    assert main(["compare", "--methods", "lora,vera"]) == 2
    assert "methods[1]: unknown value 'vera'; choose one of lora, fw-lora, adalora" in (
        capsys.readouterr().err
    )


def test_report_of_a_directory_that_is_not_an_experiment(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished experiment directory" in capsys.readouterr().err


def test_every_setting_has_a_flag():
    from fwlora.harness.config import FIELDS

    train = build_parser().parse_args(["train"])
    assert set(FIELDS) <= set(vars(train))


def test_each_commands_defaults_are_held_once_in_the_harness(capsys, monkeypatch):
    """--help shows the defaults the harness applies, from the one place that holds each."""
    from fwlora.harness.config import DEFAULT_SEEDS
    from fwlora.harness.experiment import ABLATION_LAMS, COMPARE_METHODS, COMPARE_SEEDS
    from fwlora.harness.stats import DEFAULT_MARGIN
    from fwlora.harness.sweep import (
        DEFAULT_LAMS,
        DEFAULT_METHODS,
        DEFAULT_NORMALIZATIONS,
        sweep_lists,
    )

    assert COMPARE_METHODS == ("lora", "fw-lora", "adalora") and COMPARE_SEEDS == (42, 43, 44)
    assert DEFAULT_SEEDS == (42,) and ABLATION_LAMS == (5e-5, 1e-4, 2e-4, 5e-4)
    assert sweep_lists({}) == {
        "methods": list(DEFAULT_METHODS),
        "seeds": list(DEFAULT_SEEDS),
        "lams": list(DEFAULT_LAMS),
        "target_ratios": None,
        "normalizations": list(DEFAULT_NORMALIZATIONS),
    }
    flags = sweep_lists({"seeds": [1], "normalizations": "max"}, seeds="2,3", methods="lora")
    assert (flags["methods"], flags["seeds"], flags["normalizations"]) == (
        ["lora"],
        [2, 3],
        ["max"],
    )
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    shown = {}
    for command in ("compare", "sweep", "ablation", "targeting", "demo"):
        assert main([command, "--help"]) == 0
        shown[command] = " ".join(capsys.readouterr().out.split())
    assert "--methods METHODS comma-separated (default: lora,fw-lora,adalora)" in shown["compare"]
    assert "--seeds SEEDS comma-separated (default: 42,43,44)" in shown["compare"]
    assert f"(default: {DEFAULT_MARGIN:g}, in accuracy" in shown["compare"]
    assert "comma-separated λ (default: 1e-4,1e-2,1e-1)" in shown["sweep"]
    assert "fw-lora's, comma-separated: sum, max (default: sum)" in shown["sweep"]
    assert "comma-separated λ (default: 5e-5,1e-4,2e-4,5e-4)" in shown["ablation"]
    assert "or both (default: fisher)" in shown["targeting"]
    for command in ("sweep", "ablation", "targeting", "demo"):
        assert "--seeds SEEDS comma-separated (default: 42)" in shown[command]


# ------------------------------------------- flags and user errors (issue 10, items 7 and 8)
def _one_line_error(err: str, command: str) -> None:
    assert err.startswith(f"fwlora {command}: error:"), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--methods", ""], "argument --methods: expected a value, got an empty one"),
        (["compare", "--seeds", ","], "seeds: expected comma-separated, non-empty items"),
        (["compare", "--seeds", "1,two"], "seeds[1]: expected an integer"),
        (["train", "--max-train-samples=-5"], "max_train_samples: expected an integer >= 1"),
        (["train", "--lr", "-1e-3"], "lr: expected a number > 0, got '-1e-3'"),
        (["train", "--lr", "-5"], "lr: expected a number > 0, got '-5'"),
        (["train", "--lora-dropout", "1.5"], "lora_dropout: expected a number in [0, 1)"),
        (["train", "--epochs", "one"], "epochs: expected an integer >= 1, got 'one'"),
        (["train", "--fisher-alpha", "1"], "fisher_alpha: expected a float strictly between"),
        (["train", "--lr"], "argument --lr: expected one argument"),
        (["train", "--learning-rate", "1"], "unrecognized arguments: --learning-rate 1"),
        (["train", "--ep", "1"], "unrecognized arguments: --ep 1"),  # no abbreviations
        (["demo", "--epochs", "0"], "epochs: expected an integer >= 1, got '0'"),
        (["demo", "--seeds", ""], "argument --seeds: expected a value, got an empty one"),
        (["ablation", "--ks", "300,x"], "ks[1]: expected an integer >= 1, got 'x'"),
        (["ablation", "--lams", "-1"], "lams[0]: expected a number >= 0, got '-1'"),
    ],
)
def test_bad_flags_are_one_line_and_status_2(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main([argv[0], "-o", str(out), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err
    _one_line_error(err, argv[0])
    assert not out.exists()


def test_config_file_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('epochs = "one"\n')
    assert main(["train", "--config", str(config), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "epochs: expected an integer >= 1, got 'one'" in err
    _one_line_error(err, "train")


def test_an_output_under_a_file_is_refused(tiny, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    assert main(["train", "-o", str(blocker / "out"), *settings_flags(tiny)]) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file, not a folder" in err
    _one_line_error(err, "train")
    assert blocker.read_text() == "not a folder"


def test_an_unwritable_output_folder_is_refused(tiny, tmp_path, capsys, monkeypatch):
    # Root may write anywhere, so the permission answer is simulated; the check is real.
    import fwlora.harness.output as output

    monkeypatch.setattr(output.os, "access", lambda path, mode: False)
    assert main(["train", "-o", str(tmp_path / "out"), *settings_flags(tiny)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write in {tmp_path} (permission denied)" in err
    _one_line_error(err, "train")
    assert list(tmp_path.iterdir()) == []


def test_report_into_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "page.html"
    target.write_text("mine")
    assert main(["report", str(tmp_path), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is a file; the report is a folder" in err
    _one_line_error(err, "report")
    assert target.read_text() == "mine"


def test_progress_to_a_pipe_is_plain_lines(tiny, tmp_path, capsys, monkeypatch):
    import fwlora.harness.progress as progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_SEC", 0.0)  # a line after every step
    settings = {k: v for k, v in tiny.items() if k != "quiet"}
    assert main(["train", "-o", str(tmp_path / "out"), *settings_flags(settings)]) == 0
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert "\r" not in stream and "\x1b" not in stream
    run = "fw-lora-tiny-bert--train-seed42"
    assert f"{run} epoch 1/2: 1/6 steps (17%), loss " in captured.err
    assert f"[{run}] epoch 1: train_loss " in captured.out


def test_progress_on_a_terminal_is_a_bar(tiny, tmp_path, capsys, monkeypatch):
    import fwlora.harness.progress as progress

    monkeypatch.setattr(progress, "interactive", lambda: True)
    settings = {k: v for k, v in tiny.items() if k != "quiet"} | {"epochs": 1}
    assert main(["train", "-o", str(tmp_path / "out"), *settings_flags(settings)]) == 0
    assert "\r" in capsys.readouterr().err  # tqdm redraws in place


def test_a_closed_pipe_outside_the_harness_lines_is_status_141(monkeypatch, capsys):
    """Issue 18 B9: no traceback, and no false success (the harness's own lines never raise
    this; see test_harness_output for a run whose reader goes away)."""
    import fwlora.cli as cli
    import fwlora.harness.progress as progress

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    detached = []
    monkeypatch.setitem(cli.COMMANDS, "report", closed)
    monkeypatch.setattr(progress, "detach", detached.append)
    assert main(["report", "somewhere"]) == 141
    assert detached == ["stdout"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["targeting", "--rank-by", ""], "argument --rank-by: expected a value, got an empty one"),
        (["train", "--lr", " "], "argument --lr: expected a value, got an empty one"),
        (["targeting", "--seeds", "1,1", "--k", "2"], "seeds: 1 is given twice"),
        (["compare", "--methods", "lora,lora"], "methods: 'lora' is given twice"),
        (["ablation", "--ks", "3,3"], "ks: 3 is given twice"),
    ],
)
def test_empty_and_repeated_values_are_refused_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
