"""The output folder never loses results (issue 10, items 5 and 8): everything is checked
before the disk is touched, a run is written beside its output and moved into place,
--overwrite and --resume act only on folders fwlora wrote, and Ctrl-C says truly what was
kept. On the tiny BERT; runs through the `fwlora` command line."""

import json

import pytest
import torch

import fwlora.harness.train as train_module
from fwlora.cli import main
from fwlora.harness.output import MARKER
from fwlora.harness.resources import PeakMemory
from tiny import (
    as_written_before_evaluate,
    as_written_before_trainable_modules,
    settings_flags,
    tiny_settings,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_settings(tmp_path_factory.mktemp("tiny"))


def _snapshot(folder):
    """Every file under `folder` (relative path → bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _train(tiny, out, *extra, **changes):
    return main(["train", "-o", str(out), *settings_flags(tiny | changes), *extra])


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished one-epoch output (read-only for the tests: copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    assert _train(tiny, out, epochs=1) == 0
    return out


def _copy(finished, tmp_path):
    import shutil

    out = tmp_path / "old"
    shutil.copytree(finished, out)
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_modules": "foo"}, "target_modules: ['foo'] match no Linear layer"),
        ({"modules_to_save": "nothing_here"}, "modules_to_save: ['nothing_here'] name no module"),
        ({"label_column": "stars"}, "missing column(s) ['stars']"),
        ({"model": "/no/such/model"}, "no such directory"),
        ({"lora_dropout": "1.5"}, "lora_dropout: expected a number in [0, 1), got '1.5'"),
    ],
)
def test_a_refused_overwrite_leaves_the_old_output_intact(
    tiny, finished, tmp_path, capsys, changes, message
):
    old = _copy(finished, tmp_path)
    before = _snapshot(old)
    assert _train(tiny, old, "--overwrite", **changes) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert _snapshot(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no temporary folder left


def test_a_refused_run_leaves_no_folder_behind(tiny, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "out"
    assert _train(tiny, out, target_modules="foo") == 2
    assert "match no Linear layer" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_failure_before_any_checkpoint_leaves_no_folder_behind(
    tiny, tmp_path, monkeypatch, capsys
):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(train_module, "train_step", broken)
    with pytest.raises(RuntimeError, match="boom"):
        _train(tiny, tmp_path / "a" / "out")
    assert list(tmp_path.iterdir()) == []


def test_resume_and_overwrite_refuse_a_folder_fwlora_did_not_write(tiny, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "experiment.yaml").write_text("runs: []\n")  # even one that looks like ours
    before = _snapshot(mine)
    for flag in ("--resume", "--overwrite"):
        assert _train(tiny, mine, flag) == 2
        err = capsys.readouterr().err
        assert f"not written by fwlora (no {MARKER})" in err and flag in err
        assert _snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_the_run_is_written_beside_its_output_and_moved_into_place(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = {}
    real = train_module.train_run

    def spy(cfg, run_dir, *args, **kwargs):
        seen["out_exists"] = out.exists()
        seen["run_dir"] = run_dir
        return real(cfg, run_dir, *args, **kwargs)

    monkeypatch.setattr("fwlora.harness.experiment.train_run", spy)
    assert _train(tiny, out, epochs=1) == 0
    assert seen["out_exists"] is False
    staging = seen["run_dir"].parents[1]
    assert staging.parent == tmp_path and staging.name.startswith(".out.fwlora-")
    assert not staging.exists()
    assert json.loads((out / MARKER).read_text())["schema"] == "fwlora.output/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _interrupt_at_step(monkeypatch, n):
    real = train_module.train_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)


def test_interrupted_overwrite_before_a_checkpoint_keeps_the_old_output(
    tiny, finished, tmp_path, monkeypatch, capsys
):
    old = _copy(finished, tmp_path)
    before = _snapshot(old)
    _interrupt_at_step(monkeypatch, 3)  # epoch 1 has 6 steps: no checkpoint yet
    assert _train(tiny, old, "--overwrite") == 130
    err = capsys.readouterr().err
    assert "interrupted; no epoch had finished, so no checkpoint was written" in err
    assert f"{old} is unchanged" in err and "checkpointed" not in err
    assert _snapshot(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_interrupted_fresh_run_before_a_checkpoint_writes_nothing(
    tiny, tmp_path, monkeypatch, capsys
):
    _interrupt_at_step(monkeypatch, 2)
    assert _train(tiny, tmp_path / "out") == 130
    err = capsys.readouterr().err
    assert "no checkpoint was written; nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_after_a_checkpoint_replaces_and_resumes(
    tiny, finished, tmp_path, monkeypatch, capsys
):
    old = _copy(finished, tmp_path)
    (old / "old-only.txt").write_text("from the previous output")
    _interrupt_at_step(monkeypatch, 8)  # epoch 2, step 2: epoch 1 is checkpointed
    assert _train(tiny, old, "--overwrite") == 130
    err = capsys.readouterr().err
    run = "fw-lora-tiny-bert--train-seed42"
    assert (
        f"kept in {old} (replacing the previous output): run {run} checkpointed after epoch 1"
        in err
    )
    assert "--resume (instead of --overwrite)" in err
    assert not (old / "old-only.txt").exists()
    assert (old / "runs" / run / "checkpoint.pt").is_file()
    assert (old / MARKER).is_file()

    monkeypatch.undo()
    assert _train(tiny, old, "--resume") == 0
    capsys.readouterr()
    metrics = json.loads((old / "runs" / run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["epochs"]] == [1, 2]


def test_interrupted_resume_says_where_the_checkpoint_is(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _interrupt_at_step(monkeypatch, 8)
    assert _train(tiny, out, epochs=3) == 130
    capsys.readouterr()
    _interrupt_at_step(monkeypatch, 2)  # counts afresh: step 2 of epoch 2 of the resumed run
    assert _train(tiny, out, "--resume", epochs=3) == 130
    err = capsys.readouterr().err
    assert f"kept in {out}: run fw-lora-tiny-bert--train-seed42 checkpointed after epoch 1" in err
    assert "continue with the same command and --resume" in err


def test_peak_memory_is_measured_per_run():
    """CPU: a sampled peak of the process's RSS between start and stop, so a later run does
    not inherit an earlier run's peak (the old figure was the process's running maximum)."""
    import numpy as np
    import torch

    with PeakMemory(torch.device("cpu"), interval=0.002) as first:
        assert first.kind == "cpu_rss_sampled_peak"
        base = first.peak_mb()
        block = np.ones(256 * 2**20 // 8)  # 256 MiB, touched
        high = first.peak_mb()
        del block
    with PeakMemory(torch.device("cpu"), interval=0.002) as second:
        low = second.peak_mb()
    assert high - base > 200
    assert low < high - 150


def test_a_failure_after_a_checkpoint_keeps_it_and_says_where(tiny, tmp_path, monkeypatch, capsys):
    real = train_module.train_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="out of memory"):
        _train(tiny, out)
    err = capsys.readouterr().err
    run = "fw-lora-tiny-bert--train-seed42"
    assert f"kept in {out}: run {run} checkpointed after epoch 1" in err
    assert (out / "runs" / run / "checkpoint.pt").is_file() and (out / MARKER).is_file()


# ------------------------------------------------ issue 18, items 1, 2 and 7: nothing lost
RUN = "fw-lora-tiny-bert--train-seed42"


def _during_training(monkeypatch, action):
    """Calls `action()` once, while the (first) run trains."""
    real = train_module.train_run
    done = {}

    def spy(*args, **kwargs):
        if not done:
            done["result"] = action()
        return real(*args, **kwargs)

    monkeypatch.setattr("fwlora.harness.experiment.train_run", spy)
    return done


def test_a_second_run_to_the_same_output_is_refused_while_the_first_writes(
    tiny, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "race"
    done = _during_training(monkeypatch, lambda: (_train(tiny, out, epochs=1), capsys.readouterr()))
    assert _train(tiny, out, epochs=1) == 0
    status, captured = done["result"]
    assert status == 2
    assert "another fwlora run is writing it now (in .race.fwlora-" in captured.err
    _one_line(captured.err, "train")
    assert json.loads((out / "metrics.json").read_text())["runs"]  # the first run's results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race"]


def _results_beside(tmp_path, name):
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith(f"{name}.fwlora-")]
    assert (kept / "metrics.json").is_file() and (kept / MARKER).is_file()
    return kept


def test_an_output_that_appears_during_a_run_is_never_replaced(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"

    def other_run_finishes():  # as if a second run had slipped past the lock
        out.mkdir()
        (out / "other.txt").write_text("another run's results")

    _during_training(monkeypatch, other_run_finishes)
    assert _train(tiny, out, epochs=1) == 2
    err = capsys.readouterr().err
    kept = _results_beside(tmp_path, "out")
    assert f"output {out}: changed while this run was writing" in err
    assert f"this run's results are in {kept}" in err
    _one_line(err, "train")
    assert _snapshot(out) == {"other.txt": b"another run's results"}


def test_overwrite_keeps_a_file_the_user_added_during_the_run(
    tiny, finished, tmp_path, monkeypatch, capsys
):
    old = _copy(finished, tmp_path)
    _during_training(monkeypatch, lambda: (old / "notes.txt").write_text("mine"))
    assert _train(tiny, old, "--overwrite", epochs=1) == 2
    err = capsys.readouterr().err
    assert "changed while this run was writing" in err
    assert (old / "notes.txt").read_text() == "mine"
    assert (old / "metrics.json").read_bytes() == (finished / "metrics.json").read_bytes()
    _results_beside(tmp_path, "old")


def test_an_interrupted_run_whose_output_appeared_keeps_its_checkpoint_beside_it(
    tiny, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    _during_training(monkeypatch, lambda: out.mkdir())
    _interrupt_at_step(monkeypatch, 8)  # epoch 2, step 2: epoch 1 is checkpointed
    assert _train(tiny, out) == 130
    err = capsys.readouterr().err
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith("out.fwlora-")]
    assert f"kept in {kept}: run {RUN} checkpointed after epoch 1" in err
    assert (kept / "runs" / RUN / "checkpoint.pt").is_file()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("target", [".", "..", "/"])
def test_the_current_folder_or_above_is_refused_up_front(
    tiny, tmp_path, monkeypatch, capsys, target
):
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["train", "-o", target, *settings_flags(tiny)]) == 2
    err = capsys.readouterr().err
    assert f"output {target}: the current folder, a folder above it or the root" in err
    _one_line(err, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert list(here.iterdir()) == []


def _one_line(err, command):
    assert err.startswith(f"fwlora {command}: error:") and err.count("\n") == 1, err


def _start(tiny, out, epochs, stdout=None):
    """`fwlora train` in a child process, as a user (or a cluster's scheduler) runs it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import fwlora

    env = dict(os.environ)
    package_root = str(Path(fwlora.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "fwlora.cli", "train", "-o", str(out)]
    argv += settings_flags(tiny | {"epochs": epochs})
    stdout = subprocess.PIPE if stdout is None else stdout
    return subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(process, parent, pattern):
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if list(parent.glob(pattern)):
            assert process.poll() is None, "the run ended before the signal"
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.communicate()}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError("no checkpoint within 300 s")


def test_resume_continues_a_run_killed_after_a_checkpoint(tiny, tmp_path, capsys):
    import signal

    out = tmp_path / "out"
    process = _start(tiny, out, epochs=12)
    _wait_for_checkpoint(process, tmp_path, f".out.fwlora-*/runs/{RUN}/checkpoint.pt")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not out.exists()  # the checkpoint is orphaned beside OUT
    (orphan,) = tmp_path.glob(".out.fwlora-*")
    saved = torch.load(orphan / "runs" / RUN / "checkpoint.pt", weights_only=False)["progress"]
    # The same command without --resume says the killed run's work is there, and how to go on.
    assert _train(tiny, out, epochs=12) == 2
    err = capsys.readouterr().err
    assert f"a killed run left its work (checkpoints) in {orphan.name}; pass --resume" in err
    _one_line(err, "train")
    assert not out.exists() and orphan.is_dir()
    assert _train(tiny, out, "--resume", epochs=12) == 0
    printed = capsys.readouterr().out
    assert f"resuming the run killed while writing {orphan.name} (moved to {out})" in printed
    metrics = json.loads((out / "runs" / RUN / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["epochs"]] == list(range(1, 13))
    # The killed run's epochs are kept as they were (timings included), not trained again.
    assert metrics["epochs"][: saved["epoch"]] == saved["history"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sigterm_keeps_the_checkpoint_like_ctrl_c(tiny, tmp_path):
    import signal

    out = tmp_path / "out"
    process = _start(tiny, out, epochs=12)
    _wait_for_checkpoint(process, tmp_path, f".out.fwlora-*/runs/{RUN}/checkpoint.pt")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "fwlora train: terminated (SIGTERM); kept in " in err and "Traceback" not in err
    assert f"run {RUN} checkpointed after epoch" in err
    assert (out / "runs" / RUN / "checkpoint.pt").is_file() and (out / MARKER).is_file()


def test_resume_names_a_killed_run_it_cannot_tell_from_the_output(tiny, finished, tmp_path, capsys):
    import shutil

    old = _copy(finished, tmp_path)
    orphan = tmp_path / ".old.fwlora-abcd1234"
    shutil.copytree(old, orphan)
    before = _snapshot(old)
    assert _train(tiny, old, "--resume", epochs=1) == 2
    err = capsys.readouterr().err
    assert f"left its checkpoint in {orphan.name}; to continue that run, move {old} away" in err
    _one_line(err, "train")
    assert _snapshot(old) == before and orphan.is_dir()


# ------------------------------------ issue 18, item 9: one line instead of a traceback
def _no_space(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")


def test_a_full_disk_at_the_first_checkpoint_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    import fwlora.harness.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint.torch, "save", _no_space)
    out = tmp_path / "out"
    assert _train(tiny, out) == 2
    err = capsys.readouterr().err
    assert "error: No space left on device (" in err and "checkpoint.tmp)" in err
    assert f"nothing was written ({out} was not created)" in err
    _one_line(err, "train")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_after_the_runs_keeps_them_for_resume(tiny, tmp_path, monkeypatch, capsys):
    import fwlora.harness.artefacts as artefacts

    monkeypatch.setattr(artefacts, "write_json", _no_space)
    out = tmp_path / "out"
    assert _train(tiny, out, epochs=1) == 2
    err = capsys.readouterr().err
    assert "error: No space left on device (/full/disk/file); kept in " in err
    assert "1 finished run(s); continue with the same settings and --resume once" in err
    _one_line(err, "train")
    monkeypatch.undo()
    assert _train(tiny, out, "--resume", epochs=1) == 0
    assert (out / "metrics.json").is_file()


def test_a_damaged_checkpoint_on_resume_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _interrupt_at_step(monkeypatch, 8)  # epoch 1 checkpointed
    assert _train(tiny, out) == 130
    monkeypatch.undo()
    checkpoint = out / "runs" / RUN / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a copy cut short
    capsys.readouterr()
    before = _snapshot(out)
    assert _train(tiny, out, "--resume") == 2
    err = capsys.readouterr().err
    assert f"{checkpoint}: damaged or truncated (" in err
    assert f"delete it to train run {RUN} again from its start" in err
    _one_line(err, "train")
    assert _snapshot(out) == before
    checkpoint.unlink()  # as the line says
    assert _train(tiny, out, "--resume") == 0


@pytest.mark.parametrize(
    ("damaged", "command", "fix"),
    [
        (f"runs/{RUN}/metrics.json", "train", "delete the run folder"),
        ("experiment.yaml", "train", "restore it, or delete it to continue"),
        ("aggregated_metrics.json", "report", "write it again with --resume"),
    ],
)
def test_damaged_files_are_one_line(tiny, finished, tmp_path, capsys, damaged, command, fix):
    old = _copy(finished, tmp_path)
    path = old / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    before = _snapshot(old)
    if command == "train":
        assert _train(tiny, old, "--resume", epochs=1) == 2
    else:
        assert main(["report", str(old), "-o", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: damaged or truncated (" in err and fix in err
    _one_line(err, command)
    assert _snapshot(old) == before


def test_config_files_malformed_or_with_a_bom(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nlr: 3\n")
    assert main(["train", "--config", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"config file {bad}: cannot parse: expected ',' or ']', but got ':' (line 2, " in err
    _one_line(err, "train")
    bom = tmp_path / "bom.json"
    bom.write_text('{"epochs": "one"}', encoding="utf-8-sig")
    assert main(["train", "--config", str(bom), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "epochs: expected an integer >= 1, got 'one'" in err  # read past the BOM
    _one_line(err, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "bom.json"]


def test_a_huge_warmup_is_a_value_error_not_an_overflow(tmp_path, capsys):
    from fwlora.optim.options import FisherOptions

    with pytest.raises(ValueError, match=r"invalid `warmup`: expected an integer below 2\*\*63"):
        FisherOptions(warmup=2**70)
    assert main(["train", "--fisher-warmup", str(2**70), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "fisher_warmup: expected an integer below 2**63" in err
    _one_line(err, "train")


def test_a_reader_that_goes_away_stops_nothing(tiny, tmp_path):
    """`fwlora train ... | head -1`: the run goes on and finishes; no traceback."""
    import os

    out = tmp_path / "out"
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line
    try:
        process = _start({k: v for k, v in tiny.items() if k != "quiet"}, out, 2, stdout=write)
    finally:
        os.close(write)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert (out / "metrics.json").is_file() and (out / "report" / "index.html").is_file()


def test_resume_accepts_an_experiment_written_before_a_setting_existed(
    tiny, finished, tmp_path, capsys
):
    """A setting added later (ADDED_SETTINGS) reads, in an older plan, as the value its runs
    used; a different value is still a different plan."""
    old = _copy(finished, tmp_path)
    as_written_before_evaluate(old)
    before = _snapshot(old)
    assert _train(tiny, old, "--resume", epochs=1, evaluate="final") == 2
    err = capsys.readouterr().err
    assert "--resume needs the same settings" in err
    assert "evaluate: 'every-epoch' then, 'final' now" in err  # the setting that differs
    assert _snapshot(old) == before
    assert _train(tiny, old, "--resume", epochs=1) == 0  # the finished run is kept
    assert json.loads((old / f"runs/{RUN}/metrics.json").read_text()) == json.loads(
        before[f"runs/{RUN}/metrics.json"]
    )
    assert (old / "experiment.yaml").read_text().endswith("format: 3\n")


@pytest.mark.parametrize("settings", ["both", "trainable_modules"])
def test_resume_accepts_an_experiment_of_the_previous_release(tiny, finished, tmp_path, settings):
    """Format 2 (the release before trainable_modules) and format 1 both resume."""
    old = _copy(finished, tmp_path)
    if settings == "both":
        as_written_before_evaluate(old)
    else:
        as_written_before_trainable_modules(old)
        plan = (old / "experiment.yaml").read_text()
        assert plan.endswith("format: 2\n") and "trainable_modules" not in plan
    assert _train(tiny, old, "--resume", epochs=1) == 0
    assert (old / "experiment.yaml").read_text().endswith("format: 3\n")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("format: 3\n", ""), "damaged or truncated (ValueError: run 1"),
        (lambda text: text.replace("format: 3", "format: 4"), "plan format 4, written by a newer"),
        (lambda text: text.replace("  seed:", "  old_seed:"), "run 1 lacks seed (cut short"),
    ],
)
def test_a_plan_in_another_format_is_one_line(tiny, finished, tmp_path, capsys, edit, message):
    old = _copy(finished, tmp_path)
    plan = old / "experiment.yaml"
    plan.write_text(edit(plan.read_text()))
    before = _snapshot(old)
    assert _train(tiny, old, "--resume", epochs=1) == 2
    err = capsys.readouterr().err
    assert message in err
    _one_line(err, "train")
    assert _snapshot(old) == before


def test_a_symlinked_output_is_refused_before_any_work(tiny, tmp_path, capsys):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert _train(tiny, link) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and str(target) in err
    _one_line(err, "train")
    assert link.is_symlink() and list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
