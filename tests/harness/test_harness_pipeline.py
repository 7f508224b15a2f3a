"""End to end on a tiny random BERT and a few dozen toy examples: every method, the
artefacts and their schemas, the figures, resuming, and output-directory safety."""

import json

import numpy as np
import pytest

import fwlora.harness.train as train_module
from fwlora.harness import build_config, plan_compare, plan_sweep, run_experiment
from fwlora.harness.errors import HarnessError
from fwlora.harness.experiment import load_experiment, summary_table
from tiny import tiny_settings

METHODS = ["lora", "fw-lora", "adalora"]
SEEDS = [1, 2]
EPOCH_KEYS = {
    "epoch",
    "global_step",
    "lr",
    "train_loss",
    "train_acc",
    "eval_loss",
    "eval_acc",
    "eval_f1",
    "eval_mcc",
    "eval_macro_f1",
    "eval_recall",
    "confusion_matrix",
    "train_time_sec",
    "eval_time_sec",
    "wall_clock_sec",
    "peak_memory_mb",
    "peak_memory_kind",
}
RUN_KEYS = {
    "schema",
    "status",
    "run",
    "label",
    "method",
    "task",
    "model",
    "model_display",
    "seed",
    "primary_metric",
    "best_epoch",
    "best_eval_acc",
    "best_eval_mcc",
    "best_eval_f1",
    "final_eval_acc",
    "final_eval_f1",
    "final_eval_mcc",
    "final_eval_macro_f1",
    "final_eval_recall",
    "final_confusion_matrix",
    "final_eval_loss",
    "final_train_loss",
    "final_train_acc",
    "runtime_sec",
    "train_time_sec",
    "peak_memory_mb",
    "peak_memory_kind",
    "total_steps",
    "device",
    "precision",
    "torch_version",
    "adapters",
    "data",
    "epochs",
    "train_loss_steps",
    "config",
    "notes",
    "fisher",
    "adalora",
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return tiny_settings(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def experiment(settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "out"
    base = build_config(settings)
    return run_experiment(plan_compare(base, METHODS, SEEDS), out, n_resamples=500)


def _load(path):
    return json.loads(path.read_text())


def test_metrics_json_schema(experiment):
    doc = _load(experiment.out_dir / "metrics.json")
    assert doc["schema"] == "fwlora.metrics/1"
    assert len(doc["runs"]) == len(METHODS) * len(SEEDS)
    for name, run in doc["runs"].items():
        assert set(run) == RUN_KEYS, name
        assert run["run"] == name and run["status"] == "complete"
        assert name == f"{run['method']}-tiny-bert--train-seed{run['seed']}"
        assert [h["epoch"] for h in run["epochs"]] == [1, 2]
        for row in run["epochs"]:
            assert set(row) - {"fisher_phase"} == EPOCH_KEYS
            cm = row["confusion_matrix"]
            assert len(cm) == 2 and sum(map(sum, cm)) == run["data"]["eval_examples"]
            assert 0.0 <= row["eval_acc"] <= 1.0 and -1.0 <= row["eval_mcc"] <= 1.0
            assert row["peak_memory_mb"] > 0
        assert len(run["train_loss_steps"]) == run["total_steps"] == 12
        assert run["best_eval_acc"] == max(h["eval_acc"] for h in run["epochs"])
        assert run["config"]["method"] == run["method"]
        # The label map, explicit: class i of the model is label_names[i].
        assert run["data"]["label_names"] == ["0", "1"]
        assert run["peak_memory_kind"] == "cpu_rss_sampled_peak"
        assert run["adapters"]["target_modules"] == run["config"]["target_modules"]


def test_methods_share_targets_and_budget(experiment):
    runs = {r["method"]: r for r in experiment.runs if r["seed"] == 1}
    lora, fw, ada = runs["lora"], runs["fw-lora"], runs["adalora"]
    assert lora["adapters"]["trainable_params"] == fw["adapters"]["trainable_params"]
    assert lora["adapters"]["adapted_layers"] == ada["adapters"]["adapted_layers"] == 12
    # AdaLoRA's target budget is LoRA's rank; it starts 1.5x larger and prunes.
    assert ada["adapters"]["extra"]["adalora_target_r"] == lora["adapters"]["rank"] == 4
    assert ada["adapters"]["extra"]["adalora_init_r"] == 6
    ranks = ada["adalora"]["final_ranks"]
    assert ranks is not None and len(ranks) == 12
    assert sum(ranks.values()) <= 4 * 12


def test_fw_lora_records_importances(experiment):
    for run in experiment.runs:
        if run["method"] != "fw-lora":
            assert run["fisher"] is None
            continue
        fisher = run["fisher"]
        assert fisher["phase"] == "frozen" and fisher["warmup_steps"] == 4
        assert len(fisher["importance"]) == 12
        assert sum(fisher["importance"].values()) == pytest.approx(1.0)
        exported = _load(experiment.run_dirs[run["run"]] / "fwlora_importance.json")
        assert exported["importance"] == pytest.approx(fisher["importance"])
        assert exported["options"]["warmup"] == 4


def test_aggregated_metrics_schema(experiment):
    doc = _load(experiment.out_dir / "aggregated_metrics.json")
    assert doc["schema"] == "fwlora.aggregated-metrics/1"
    assert list(doc["groups"]) == METHODS
    for label, group in doc["groups"].items():
        assert group["seeds"] == SEEDS
        values = [r["best_eval_acc"] for r in experiment.runs if r["label"] == label]
        summary = group["metrics"]["best_eval_acc"]
        assert summary["values"] == pytest.approx(values)
        assert summary["mean"] == pytest.approx(sum(values) / 2)
        assert summary["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
        assert "±" in summary["display"]
        assert {"runtime_sec", "final_eval_mcc", "peak_memory_mb"} <= set(group["metrics"])


def test_significance_tests_schema(experiment):
    doc = _load(experiment.out_dir / "significance_tests.json")
    assert doc["schema"] == "fwlora.significance-tests/1"
    assert doc["baseline"] == "lora"
    assert [c["method"] for c in doc["comparisons"]] == ["fw-lora", "adalora"]
    for comp in doc["comparisons"]:
        assert comp["seeds"] == SEEDS
        for per_seed in comp["per_seed"]:
            assert set(per_seed["mcnemar"]) == {"b", "c", "statistic", "p_value", "p_value_chi2"}
            assert per_seed["n_examples"] == 24
        assert set(comp["across_seeds"]) == {"final_eval_acc", "best_eval_acc"}
        assert comp["across_seeds"]["final_eval_acc"]["n"] == 2
        ci = comp["bootstrap_ci"]
        assert ci["low"] <= ci["estimate"] <= ci["high"]
        assert ci["n_resamples"] == 500


def test_figures_in_pdf_and_png(experiment):
    figures = experiment.out_dir / "figures"
    stems = ["comparison_best_eval_acc_bar_chart", "comparison_runtime_sec_bar_chart"]
    for run in experiment.runs:
        stems += [
            f"{run['run']}_{k}"
            for k in ("confusion_matrix", "eval_acc_learning_curve", "train_loss_learning_curve")
        ]
        if run["method"] == "fw-lora":
            stems.append(f"{run['run']}_importance_heatmap")
    for stem in stems:
        for fmt, magic in (("pdf", b"%PDF"), ("png", b"\x89PNG")):
            path = figures / f"{stem}.{fmt}"
            assert path.read_bytes()[:4] == magic, path


def test_experiment_reads_back_and_summarises(experiment):
    again = load_experiment(experiment.out_dir)
    assert {r["run"] for r in again.runs} == {r["run"] for r in experiment.runs}
    table = summary_table(again)
    assert "fw-lora − lora" in table and "adalora" in table


def test_existing_output_needs_overwrite_or_resume(experiment, settings):
    cfg = build_config(settings)
    with pytest.raises(HarnessError, match="--overwrite"):
        run_experiment([cfg], experiment.out_dir)
    with pytest.raises(HarnessError, match="exclude each other"):
        run_experiment([cfg], experiment.out_dir, overwrite=True, resume=True)


def _interrupt_at_call(monkeypatch, name, at):
    """Ctrl-C at the `at`-th call of train_module.<name> (monkeypatch.undo() restores it)."""
    real = getattr(train_module, name)
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, name, interrupted)


def test_resume_continues_an_interrupted_run(settings, tmp_path, monkeypatch):
    cfg = build_config(settings, {"method": "fw-lora", "epochs": 3})
    reference = run_experiment([cfg], tmp_path / "reference", n_resamples=100).runs[0]

    _interrupt_at_call(monkeypatch, "evaluate", 2)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_experiment([cfg], out)
    monkeypatch.undo()
    run_dir = next((out / "runs").iterdir())
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "metrics.json").exists()

    with pytest.raises(HarnessError, match="same settings"):
        run_experiment([cfg.replace(lr=1e-3)], out, resume=True)
    resumed = run_experiment([cfg], out, resume=True, n_resamples=100).runs[0]
    assert len(resumed["epochs"]) == 3
    for key in ("train_loss", "eval_loss", "eval_acc"):
        assert [h[key] for h in resumed["epochs"]] == pytest.approx(
            [h[key] for h in reference["epochs"]], rel=1e-5
        )
    assert resumed["fisher"]["importance"] == pytest.approx(reference["fisher"]["importance"])
    # A finished experiment resumes to itself without training again.
    again = run_experiment([cfg], out, resume=True, n_resamples=100).runs[0]
    assert again["epochs"] == resumed["epochs"]


def test_sweep_plans_the_papers_ablations(settings):
    base = build_config(settings)
    configs = plan_sweep(base, [1], ks=[2, 4], lams=[5e-5, 1e-4, 5e-4])
    labels = [c.label for c in configs]
    assert labels == [
        "lora",
        "fw-lora-K2-lam0.0001",
        "fw-lora-K4-lam0.0001",
        "fw-lora-K4-lam5e-05",
        "fw-lora-K4-lam0.0005",
        "fw-lora-no-fisher-term",
    ]
    assert configs[-1].fisher_lam == 0.0 and configs[-1].method == "fw-lora"


def test_sweep_runs_end_to_end(settings, tmp_path):
    base = build_config(settings, {"epochs": 1})
    exp = run_experiment(
        plan_sweep(base, [1], ks=[2], lams=[5e-4]), tmp_path / "s", n_resamples=100
    )
    groups = _load(exp.out_dir / "aggregated_metrics.json")["groups"]
    assert set(groups) == {
        "lora",
        "fw-lora-K2-lam0.0001",
        "fw-lora-K4-lam0.0005",
        "fw-lora-no-fisher-term",
    }
    by_label = {r["label"]: r for r in exp.runs}
    assert by_label["fw-lora-K2-lam0.0001"]["fisher"]["warmup_steps"] == 2
    assert by_label["fw-lora-no-fisher-term"]["config"]["fisher_lam"] == 0.0


def test_budget_percent_sets_the_rank(settings, tmp_path):
    cfg = build_config(
        settings,
        {"method": "lora", "epochs": 1, "budget_percent": 10.0, "modules_to_save": "pooler"},
    )
    run = run_experiment([cfg], tmp_path / "b", n_resamples=100).runs[0]
    adapters = run["adapters"]
    assert adapters["rank"] != 4
    assert adapters["budget_percent"] == pytest.approx(10.0, rel=0.5)
    # The pooler trains with the head (32·32 + 32 more parameters); the settings are intact.
    plain = adapters["adapter_params"] + 2 * 32 + 2
    assert adapters["trainable_params"] == plain + 32 * 32 + 32
    assert cfg.modules_to_save == ["pooler"]
    assert run["config"]["modules_to_save"] == ["pooler"]


def test_overwrite_never_deletes_a_foreign_directory(settings, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(HarnessError, match="not written by fwlora"):
        run_experiment([build_config(settings)], tmp_path, overwrite=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_predictions_keep_the_evaluation_order(experiment, settings):
    import pandas as pd

    labels = pd.read_csv(settings["eval_file"])["label"].tolist()
    for run in experiment.runs:
        pred = _load(experiment.run_dirs[run["run"]] / "predictions.json")
        assert pred["labels"] == labels
        correct = sum(p == t for p, t in zip(pred["final"], labels))
        assert correct / len(labels) == pytest.approx(run["final_eval_acc"])


def test_evaluate_final_skips_the_other_epochs_and_trains_identically(settings, tmp_path):
    """evaluate="final": one evaluation, after the last epoch; the training is the same as
    with per-epoch evaluation (evaluating draws no random numbers and changes no weight)."""
    every = build_config(settings, {"method": "fw-lora", "seed": 3})
    final = every.replace(evaluate="final")
    a = run_experiment([every], tmp_path / "every").runs[0]
    b = run_experiment([final], tmp_path / "final").runs[0]
    assert [("eval_acc" in h) for h in b["epochs"]] == [False, True]
    assert b["train_loss_steps"] == a["train_loss_steps"]
    assert b["final_eval_acc"] == a["final_eval_acc"]
    assert b["best_eval_acc"] == b["final_eval_acc"] and b["best_epoch"] == 2
    assert b["fisher"]["fisher"] == a["fisher"]["fisher"]
    preds = _load(tmp_path / "final" / "runs" / b["run"] / "predictions.json")
    assert preds["best"] == preds["final"]
    figures = tmp_path / "final" / "figures"
    assert (figures / f"{b['run']}_eval_acc_learning_curve.png").is_file()


def test_evaluate_final_resumes_an_interrupted_run_like_an_uninterrupted_one(
    settings, tmp_path, monkeypatch
):
    """Interrupted in epoch 2 (epoch 1 checkpointed, nothing evaluated yet, no predictions
    saved): --resume trains on and evaluates once, as the uninterrupted run does."""
    cfg = build_config(settings, {"method": "fw-lora", "epochs": 3, "evaluate": "final"})
    reference = run_experiment([cfg], tmp_path / "reference", n_resamples=100).runs[0]
    per_epoch = reference["epochs"][0]["global_step"]

    _interrupt_at_call(monkeypatch, "train_step", per_epoch + 2)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_experiment([cfg], out)
    monkeypatch.undo()
    run_dir = next((out / "runs").iterdir())
    assert (run_dir / "checkpoint.pt").is_file() and not list(run_dir.glob("*predictions*"))
    resumed = run_experiment([cfg], out, resume=True, n_resamples=100).runs[0]
    assert [("eval_acc" in h) for h in resumed["epochs"]] == [False, False, True]
    assert [h["train_loss"] for h in resumed["epochs"]] == pytest.approx(
        [h["train_loss"] for h in reference["epochs"]], rel=1e-5
    )
    assert resumed["final_eval_acc"] == reference["final_eval_acc"]
    assert resumed["best_eval_acc"] == resumed["final_eval_acc"]
    preds = _load(run_dir / "predictions.json")
    assert preds["best"] == preds["final"]


def test_macro_f1_and_recall_per_class_of_one_evaluation():
    from fwlora.harness.metrics import classification_metrics

    labels = [0, 0, 1, 1, 2, 2, 2]
    preds = [0, 1, 1, 1, 0, 0, 2]  # class 2's recall 1/3
    m = classification_metrics(labels, preds, 3)
    assert m["recall"] == pytest.approx([0.5, 1.0, 1 / 3])
    # precision / recall per class: 1/3, 1/2 → F1 0.4; 2/3, 1 → 0.8; 1, 1/3 → 0.5
    f1 = [0.4, 0.8, 0.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    never = classification_metrics([0, 1, 2], [0, 0, 0], 3)  # never predicts 1 or 2
    assert never["recall"] == [1.0, 0.0, 0.0] and never["macro_f1"] == pytest.approx(1 / 6)
