"""Issue 10 part A: the l2-lora control, the penalty-strength read-out in the harness, the
methods × λ × normalisation sweep (plan, labels, resume) and its λ curve and tests — on the
tiny BERT and toy data (seconds), and on a fake metrics set for the analysis."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

import fwlora.harness.experiment as experiment_module
from fwlora.cli import main
from fwlora.harness import build_config, run_experiment
from fwlora.harness.errors import HarnessError
from fwlora.harness.sweep import (
    SWEEP_TESTS,
    frontier,
    grid_label,
    lambda_curve,
    paired_fw_vs_l2,
    plan_grid,
    sweep_document,
    sweep_text,
    write_sweep,
)
from fwlora.harness.train import WEAK_PENALTY_RATIO, penalty_message
from tiny import as_written_before_evaluate, settings_flags, tiny_settings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_settings(tmp_path_factory.mktemp("sweep"))


def _runs(out):
    return list(json.loads((out / "metrics.json").read_text())["runs"].values())


# ------------------------------------------------------------------ the l2-lora control
def test_l2_lora_trains_with_uniform_importances(tiny, tmp_path):
    cfg = build_config(tiny, {"method": "l2-lora", "epochs": 1})
    assert cfg.normalization == "uniform"
    exp = run_experiment([cfg], tmp_path / "l2", n_resamples=100)
    fisher = exp.runs[0]["fisher"]
    importance = np.array(list(fisher["importance"].values()))
    assert fisher["normalization"] == "uniform" and fisher["phase"] == "frozen"
    assert len(importance) > 1
    np.testing.assert_allclose(importance, 1.0 / len(importance))
    # The same run with Fisher importances has non-uniform ones (the control differs).
    fw = run_experiment([cfg.replace(method="fw-lora")], tmp_path / "fw", n_resamples=100).runs[0][
        "fisher"
    ]
    assert np.ptp(list(fw["importance"].values())) > 1e-3


def test_normalization_defaults_and_l2_refuses_another(tiny):
    assert build_config(tiny, {"method": "fw-lora"}).normalization == "sum"
    assert (
        build_config(tiny, {"method": "fw-lora", "fisher_normalization": "max"}).normalization
        == "max"
    )
    assert build_config(tiny, {"method": "l2-lora", "fisher_normalization": "uniform"})
    with pytest.raises(
        HarnessError, match=r"^fisher_normalization: l2-lora is the uniform control"
    ):
        build_config(tiny, {"method": "l2-lora", "fisher_normalization": "max"})
    with pytest.raises(HarnessError, match="fisher_normalization"):
        build_config(tiny, {"fisher_normalization": "median"})


def test_cli_refuses_l2_lora_with_sum(tiny, tmp_path, capsys):
    out = tmp_path / "bad"
    args = ["train", "-o", str(out), "--method", "l2-lora", "--fisher-normalization", "sum"]
    assert main([*args, *settings_flags(tiny)]) == 2
    err = capsys.readouterr().err
    assert "fisher_normalization: l2-lora is the uniform control" in err
    assert "Traceback" not in err and not out.exists()


# ------------------------------------------------------------------ penalty strength
def test_penalty_ratio_is_stored_printed_and_grows_with_lambda(tiny, tmp_path, capsys):
    out = tmp_path / "ratio"
    args = ["sweep", "-o", str(out), "--methods", "fw-lora,l2-lora", "--lams", "1e-6,1"]
    assert main([*args, "--seeds", "1", *settings_flags(tiny)]) == 0
    printed = capsys.readouterr().out
    runs = {r["label"]: r for r in _runs(out)}
    assert set(runs) == {
        "fw-lora-sum-lam1e-06",
        "fw-lora-sum-lam1",
        "l2-lora-lam1e-06",
        "l2-lora-lam1",
    }
    for label, run in runs.items():
        fisher = run["fisher"]
        steps_after_k = run["total_steps"] - fisher["warmup_steps"]
        assert fisher["penalised_steps"] == steps_after_k > 0, label
        assert fisher["penalty_grad_ratio"] > 0, label
    # λ 1e6 times larger: the penalty's gradient is far larger relative to the task's.
    for method in ("fw-lora-sum", "l2-lora"):
        weak = runs[f"{method}-lam1e-06"]["fisher"]["penalty_grad_ratio"]
        strong = runs[f"{method}-lam1"]["fisher"]["penalty_grad_ratio"]
        assert strong > 1e3 * weak
    # The summary prints the ratio column and says plainly when the penalty barely acts.
    assert "‖∇P‖/‖∇L‖" in printed
    ratio = runs["l2-lora-lam1"]["fisher"]["penalty_grad_ratio"]
    assert f"{ratio:.2g}" in printed
    assert "note: fw-lora-sum-lam1e-06: penalty barely changes training at λ=1e-06" in printed
    assert "note: l2-lora-lam1e-06: penalty barely changes training" in printed
    assert "note: fw-lora-sum-lam1:" not in printed
    assert any("penalty barely changes" in n for n in runs["l2-lora-lam1e-06"]["notes"])
    assert not any("penalty barely changes" in n for n in runs["l2-lora-lam1"]["notes"])
    # sweep_tests.json: the penalty weights 1 − I_m; uniform for l2-lora, the same total
    # Σ(1 − I_m) = M − 1 for the sum normalisation, spread apart by the Fisher importances.
    series = json.loads((out / SWEEP_TESTS).read_text())["curve"]["series"]
    l2 = series["l2-lora"][0]["penalty_weights"]
    fw = series["fw-lora (sum)"][0]["penalty_weights"]
    m = l2["matrices"]
    assert m == fw["matrices"] == len(runs["l2-lora-lam1"]["fisher"]["importance"]) > 1
    assert l2["min"] == pytest.approx(1 - 1 / m) and l2["max"] == pytest.approx(1 - 1 / m)
    assert l2["total"] == pytest.approx(m - 1) and fw["total"] == pytest.approx(m - 1)
    assert fw["min"] < 1 - 1 / m < fw["max"]


def test_penalty_message_threshold():
    assert penalty_message(None, 1e-4) is None
    assert penalty_message(WEAK_PENALTY_RATIO, 1e-4) is None
    assert penalty_message(0.0, 0.0) is None  # λ = 0: nothing to warn about
    assert "1.7e-03 of the task gradient" in penalty_message(1.7e-3, 1e-4)


def test_k_beyond_the_run_is_said_in_the_terminal(tiny, tmp_path, capsys):
    out = tmp_path / "k"
    args = ["train", "-o", str(out), "--method", "fw-lora"]
    assert main([*args, *settings_flags(tiny | {"fisher_warmup": 1000})]) == 0
    printed = capsys.readouterr().out
    assert "K=1000 >= its" in printed and "never left warm-up" in printed
    assert _runs(out)[0]["fisher"]["penalty_grad_ratio"] is None


# ------------------------------------------------------------------ the plan
def test_plan_grid_labels_and_settings(tiny):
    base = build_config(tiny)
    configs = plan_grid(base, ["lora", "fw-lora", "l2-lora"], [1e-4, 0.01], ["sum", "max"], [1, 2])
    labels = [c.label for c in configs[: len(configs) // 2]]
    assert labels == [
        "lora",
        "fw-lora-sum-lam0.0001",
        "fw-lora-sum-lam0.01",
        "fw-lora-max-lam0.0001",
        "fw-lora-max-lam0.01",
        "l2-lora-lam0.0001",
        "l2-lora-lam0.01",
    ]
    assert [c.seed for c in configs] == [1] * 7 + [2] * 7  # seed-major
    by_label = {c.label: c for c in configs}
    assert by_label["fw-lora-max-lam0.01"].normalization == "max"
    assert by_label["fw-lora-max-lam0.01"].fisher_lam == 0.01
    assert by_label["l2-lora-lam0.01"].method == "l2-lora"
    assert by_label["l2-lora-lam0.01"].normalization == "uniform"
    assert by_label["lora"].method == "lora"
    assert grid_label("adalora") == "adalora"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lams", "0,1e-2"], "lams: expected finite numbers > 0, got '0'"),
        (["--lams", "1e-2,,1"], "lams: expected comma-separated, non-empty items"),
        (["--lams", "big"], "lams: expected finite numbers > 0, got 'big'"),
        (["--normalizations", "uniform"], "the uniform control is the method l2-lora"),
        (["--seeds", ","], "seeds"),
        (["--methods", "fw-lora,dora"], "choose one of lora, fw-lora, adalora, l2-lora"),
    ],
)
def test_sweep_refuses_bad_lists(tiny, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["sweep", "-o", str(out), *args, *settings_flags(tiny)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_sweep_resume_skips_finished_runs(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "resume"
    args = ["sweep", "-o", str(out), "--methods", "lora,l2-lora", "--lams", "0.01"]
    args += ["--seeds", "1", *settings_flags(tiny | {"epochs": 1})]
    assert main(args) == 0
    first = {r["run"]: r["final_eval_acc"] for r in _runs(out)}
    # One run is missing (as if interrupted before it started): only it is trained.
    lost = next(p for p in (out / "runs").iterdir() if p.name.startswith("l2-lora"))
    shutil.rmtree(lost)
    trained = []
    real = experiment_module.train_run

    def counting(cfg, *a, **k):
        trained.append(cfg.label)
        return real(cfg, *a, **k)

    monkeypatch.setattr(experiment_module, "train_run", counting)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert trained == ["l2-lora-lam0.01"]
    assert {r["run"]: r["final_eval_acc"] for r in _runs(out)} == first
    assert (out / SWEEP_TESTS).is_file()
    assert (out / "figures" / "sweep_lambda_curve.pdf").is_file()
    assert "l2-lora λ=0.01" in capsys.readouterr().out


# ------------------------------------------------------------------ the analysis
def _fake_run(label, method, seed, acc, lam=None, norm=None, ratio=None):
    fisher = None
    if method != "lora":
        fisher = {"lam": lam, "normalization": norm, "penalty_grad_ratio": ratio}
    return {
        "run": f"{label}-seed{seed}",
        "label": label,
        "method": method,
        "seed": seed,
        "primary_metric": "acc",
        "final_eval_acc": acc,
        "fisher": fisher,
    }


def _fake_sweep():
    """lora ≈ 0.70; fw-lora (sum) and l2-lora at two λ over 5 seeds, fw better at λ=0.1."""
    seeds = [1, 2, 3, 4, 5]
    lora = [0.70, 0.71, 0.69, 0.70, 0.72]
    runs = [_fake_run("lora", "lora", s, a) for s, a in zip(seeds, lora)]
    for lam, fw, l2 in (
        (1e-4, [0.70, 0.71, 0.69, 0.70, 0.72], [0.70, 0.71, 0.69, 0.70, 0.72]),
        (1e-1, [0.68, 0.69, 0.67, 0.69, 0.70], [0.64, 0.66, 0.63, 0.65, 0.64]),
    ):
        for s, a, b in zip(seeds, fw, l2):
            runs.append(_fake_run(f"fw-lora-sum-lam{lam:g}", "fw-lora", s, a, lam, "sum", lam * 10))
            runs.append(_fake_run(f"l2-lora-lam{lam:g}", "l2-lora", s, b, lam, "uniform", lam * 12))
    return runs


def test_lambda_curve_means_and_t_intervals_from_a_fake_sweep():
    curve = lambda_curve(_fake_sweep())
    assert curve["metric"] == "final_eval_acc"
    assert list(curve["series"]) == ["fw-lora (sum)", "l2-lora"]
    point = curve["series"]["l2-lora"][1]
    values = [0.64, 0.66, 0.63, 0.65, 0.64]
    assert point["lam"] == 0.1 and point["values"] == values
    half = scipy_stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert point["ci95"]["mean"] == pytest.approx(np.mean(values))
    assert point["ci95"]["low"] == pytest.approx(np.mean(values) - half)
    assert point["ci95"]["high"] == pytest.approx(np.mean(values) + half)
    assert point["penalty_grad_ratio"] == pytest.approx(1.2)
    assert curve["lora"]["ci95"]["mean"] == pytest.approx(0.704)


def test_paired_tests_fw_vs_l2_at_each_lambda():
    tests = paired_fw_vs_l2(lambda_curve(_fake_sweep()))
    by_lam = {t["lam"]: t for t in tests}
    assert set(by_lam) == {1e-4, 0.1} and all(t["method"] == "fw-lora (sum)" for t in tests)
    same = by_lam[1e-4]["across_seeds"]
    assert same["mean_difference"] == 0 and same["paired_t"] is None and same["wilcoxon"] is None
    acting = by_lam[0.1]["across_seeds"]
    fw = [0.68, 0.69, 0.67, 0.69, 0.70]
    l2 = [0.64, 0.66, 0.63, 0.65, 0.64]
    assert acting["mean_difference"] == pytest.approx(np.mean(fw) - np.mean(l2))
    expected = scipy_stats.ttest_rel(fw, l2).pvalue
    assert acting["paired_t"]["p_value"] == pytest.approx(expected)
    assert acting["paired_t"]["p_value"] < 0.01
    # Identical runs: a degenerate interval at 0, equivalent within any margin.
    same_paired = by_lam[1e-4]["paired"]["acc"]
    assert same_paired["ci_low"] == same_paired["ci_high"] == 0
    assert same_paired["verdict"] == "equivalent"


def test_every_penalised_point_against_plain_lora_and_the_equal_strength_frontier():
    runs = _fake_sweep()
    doc = sweep_document(runs, margin=0.005)
    assert doc["equivalence_margin"] == 0.005
    cost = {(t["method"], t["lam"]): t["paired"]["acc"] for t in doc["vs_lora"]}
    l2 = cost[("l2-lora", 0.1)]
    assert l2["mean_difference"] == pytest.approx(np.mean([0.64, 0.66, 0.63, 0.65, 0.64]) - 0.704)
    assert l2["verdict"] == "different"
    # Achieved ratios: fw 0.001 and 1.0, l2 0.0012 and 1.2 (log-linear in between). At an
    # achieved 0.5 both curves are interpolated for every seed.
    at = {t["achieved_ratio"]: t for t in doc["frontier_tests"]}
    assert 0.5 in at and at[0.5]["seeds"] == [1, 2, 3, 4, 5]
    x = math.log(0.5)
    fw_low, fw_high = [0.70, 0.71, 0.69, 0.70, 0.72], [0.68, 0.69, 0.67, 0.69, 0.70]
    l2_low, l2_high = fw_low, [0.64, 0.66, 0.63, 0.65, 0.64]
    fw = [np.interp(x, [math.log(1e-3), 0.0], [a, b]) for a, b in zip(fw_low, fw_high)]
    l2v = [np.interp(x, [math.log(1.2e-3), math.log(1.2)], [a, b]) for a, b in zip(l2_low, l2_high)]
    assert at[0.5]["paired"]["acc"]["mean_difference"] == pytest.approx(np.mean(fw) - np.mean(l2v))
    # No extrapolation: 0.0011 lies below l2-lora's lowest achieved ratio (0.0012).
    tests = frontier(lambda_curve(runs), 0.01, grid=(0.0011, 0.5))
    assert [t["achieved_ratio"] for t in tests] == [0.5]
    with pytest.raises(ValueError, match="--equivalence-margin: expected a finite number > 0"):
        sweep_document(runs, margin=float("nan"))


def test_curve_figures_and_tests_from_fake_runs_on_disk(tmp_path):
    """write_sweep on a fake finished experiment: sweep_tests.json (with McNemar from the
    predictions), the PDF + PNG figures, and the terminal text."""
    runs = _fake_sweep()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 100)
    for run in runs:
        folder = tmp_path / "runs" / run["run"]
        folder.mkdir(parents=True)
        correct = rng.random(100) < run["final_eval_acc"]
        preds = np.where(correct, labels, (labels + 1) % 3)
        (folder / "predictions.json").write_text(
            json.dumps({"labels": labels.tolist(), "final": preds.tolist()})
        )
        (folder / "metrics.json").write_text(json.dumps({**run, "status": "complete"}))
    (tmp_path / "metrics.json").write_text(json.dumps({"runs": {r["run"]: r for r in runs}}))
    for name in ("aggregated_metrics.json", "significance_tests.json"):
        (tmp_path / name).write_text("{}")
    text = write_sweep(tmp_path)
    doc = json.loads((tmp_path / SWEEP_TESTS).read_text())
    assert doc == json.loads(
        json.dumps(sweep_document(runs, {r["run"]: tmp_path / "runs" / r["run"] for r in runs}))
    )
    test = next(t for t in doc["fw_vs_l2"] if t["lam"] == 0.1)
    assert [p["seed"] for p in test["mcnemar_per_seed"]] == [1, 2, 3, 4, 5]
    pooled = test["mcnemar_pooled"]
    assert pooled["b"] == sum(p["b"] for p in test["mcnemar_per_seed"])
    for stem in ("sweep_lambda_curve", "sweep_penalty_ratio"):
        for ext in ("pdf", "png"):
            assert (tmp_path / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    assert text == sweep_text(doc)
    assert "fw-lora (sum) − l2-lora at λ=0.1 (acc, 5 seeds) [2]: +0.0420 [95 % CI" in text
    assert doc["family_size"]["fw_vs_l2"] == {"acc": 2}
    acting = test["paired"]["acc"]
    assert acting["verdict"] == "different" and acting["p_difference_holm"] < 0.05
    assert "(penalty barely acts)" in text.splitlines()[2]  # fw-lora (sum) at λ=1e-4: r=1e-3


# ------------------------------------------------------------------ merge (split sweeps)
def _tiny_sweep(tiny, out, seeds, extra=()):
    args = ["sweep", "-o", str(out), "--methods", "lora,fw-lora,l2-lora", "--lams", "0.01"]
    return main([*args, "--seeds", seeds, *settings_flags(tiny | {"epochs": 1}), *extra])


def test_merge_joins_a_sweep_split_by_seeds(tiny, tmp_path, capsys):
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    assert _tiny_sweep(tiny, a, "1") == 0
    assert _tiny_sweep(tiny, b, "2,3") == 0
    capsys.readouterr()
    assert main(["merge", str(a), str(b), "-o", str(merged)]) == 0
    printed = capsys.readouterr().out
    groups = json.loads((merged / "aggregated_metrics.json").read_text())["groups"]
    assert list(groups) == ["lora", "fw-lora-sum-lam0.01", "l2-lora-lam0.01"]
    assert all(g["seeds"] == [1, 2, 3] for g in groups.values())
    # The merged runs are the inputs' runs, unchanged; checkpoints are not copied.
    inputs = {**{r["run"]: r for r in _runs(a)}, **{r["run"]: r for r in _runs(b)}}
    assert {r["run"]: r["final_eval_acc"] for r in _runs(merged)} == {
        k: r["final_eval_acc"] for k, r in inputs.items()
    }
    assert not list((merged / "runs").glob("*/checkpoint.pt"))
    doc = json.loads((merged / SWEEP_TESTS).read_text())
    (test,) = doc["fw_vs_l2"]
    assert test["seeds"] == [1, 2, 3] and len(test["mcnemar_per_seed"]) == 3
    assert "fw-lora (sum) − l2-lora at λ=0.01" in printed and "report:" in printed
    assert (merged / "report" / "index.html").is_file()


def test_merge_refuses_runs_that_differ_beyond_the_seed(tiny, tmp_path, capsys):
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    assert _tiny_sweep(tiny, a, "1") == 0
    assert _tiny_sweep(tiny, b, "2", extra=("--lr", "0.001")) == 0
    capsys.readouterr()
    assert main(["merge", str(a), str(b), "-o", str(merged)]) == 2
    err = capsys.readouterr().err
    assert "runs differ in 'lr'" in err and "only the seed may differ" in err
    assert not merged.exists()
    assert main(["merge", str(a), str(a), "-o", str(merged)]) == 2
    assert "is in both" in capsys.readouterr().err
    assert main(["merge", str(a), str(b), "-o", str(a)]) == 2
    assert "is one of the inputs" in capsys.readouterr().err


def _tiny_train(tiny, out, method, **changes):
    return main(["train", "-o", str(out), "--method", method, *settings_flags(tiny | changes)])


def test_merge_refuses_methods_run_with_different_settings_or_data(tiny, tmp_path, capsys):
    """Issue 18 B3: the merged report says every run shares the settings but the method's
    own; runs of different labels with another lr, epochs or eval file are refused."""
    lora, fw, other_eval = tmp_path / "lora", tmp_path / "fw", tmp_path / "other-eval"
    assert _tiny_train(tiny, lora, "lora", epochs=1) == 0
    assert _tiny_train(tiny, fw, "fw-lora", epochs=2, lr=0.001, fisher_lam=0.01) == 0
    shorter = tmp_path / "eval-short.csv"
    shorter.write_text("\n".join(Path(tiny["eval_file"]).read_text().splitlines()[:13]) + "\n")
    assert _tiny_train(tiny, other_eval, "fw-lora", epochs=1, eval_file=shorter) == 0
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert main(["merge", str(lora), str(fw), "-o", str(merged)]) == 2
    err = capsys.readouterr().err
    assert f"the experiments differ in 'epochs' (1 in {lora}, 2 in {fw}), 'lr' (0.005 in " in err
    assert "'fisher_lam'" not in err  # the method's own option may differ
    assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["merge", str(lora), str(other_eval), "-o", str(merged)]) == 2
    err = capsys.readouterr().err
    assert "'data' (" in err and f"'eval_file' ('{tiny['eval_file']}' in {lora}" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not merged.exists()


@pytest.mark.parametrize("source", ["flags", "config"])
def test_ablation_command_runs_the_papers_k_and_lambda_ablation(tiny, tmp_path, source):
    """From flags, or from a config file (issue 18 B5: its ks, lams and seeds honoured, and
    `seeds: 1` is seed 1, as `--seeds 1` is)."""
    out = tmp_path / "ablation"
    lists = {"ks": "2", "lams": "0.0005", "seeds": "1"}
    if source == "flags":
        args = ["ablation", "-o", str(out), *settings_flags(lists | tiny | {"epochs": 1})]
    else:
        config = tmp_path / "ablation.yaml"
        config.write_text(yaml.safe_dump(tiny | {"epochs": 1, "ks": 2, "lams": "5e-4", "seeds": 1}))
        args = ["ablation", "-o", str(out), "--config", str(config)]
    assert main(args) == 0
    groups = json.loads((out / "aggregated_metrics.json").read_text())["groups"]
    assert list(groups) == [
        "lora",
        "fw-lora-K2-lam0.0001",
        "fw-lora-K4-lam0.0005",
        "fw-lora-no-fisher-term",
    ]
    assert all(g["seeds"] == [1] for g in groups.values())


def test_penalty_ratio_survives_resume(tiny, tmp_path, monkeypatch):
    """The ratio's median covers every penalised step, also across an interruption."""
    import fwlora.harness.train as train_module

    cfg = build_config(tiny, {"method": "l2-lora", "fisher_lam": 0.1, "epochs": 3})
    reference = run_experiment([cfg], tmp_path / "reference", n_resamples=100).runs[0]
    real_evaluate = train_module.evaluate
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment([cfg], tmp_path / "out")
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    resumed = run_experiment([cfg], tmp_path / "out", resume=True, n_resamples=100).runs[0]
    expected = reference["total_steps"] - reference["fisher"]["warmup_steps"]
    assert resumed["fisher"]["penalised_steps"] == reference["fisher"]["penalised_steps"]
    assert resumed["fisher"]["penalised_steps"] == expected
    assert resumed["fisher"]["penalty_grad_ratio"] == pytest.approx(
        reference["fisher"]["penalty_grad_ratio"], rel=1e-4
    )


def test_merge_takes_the_finished_runs_of_an_unfinished_experiment(tiny, tmp_path, capsys):
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    assert _tiny_sweep(tiny, a, "1") == 0
    assert _tiny_sweep(tiny, b, "2") == 0
    # b as if still running: no experiment artefacts yet, one run unfinished.
    for name in ("metrics.json", "aggregated_metrics.json", "significance_tests.json"):
        (b / name).unlink()
    unfinished = next(p for p in (b / "runs").iterdir() if p.name.startswith("l2-lora"))
    (unfinished / "metrics.json").unlink()
    capsys.readouterr()
    assert main(["merge", str(a), str(b), "-o", str(merged)]) == 0
    groups = json.loads((merged / "aggregated_metrics.json").read_text())["groups"]
    assert groups["lora"]["seeds"] == [1, 2]
    assert groups["l2-lora-lam0.01"]["seeds"] == [1]
    # A folder fwlora did not write is refused.
    (tmp_path / "mine").mkdir()
    assert main(["merge", str(a), str(tmp_path / "mine"), "-o", str(tmp_path / "m2")]) == 2
    assert "not an experiment folder written by fwlora" in capsys.readouterr().err


# ------------------------------------------------------------------ target ratios (issue 15)
def test_sweep_over_target_ratios_calibrates_each_run(tiny, tmp_path, capsys):
    out = tmp_path / "targets"
    args = ["sweep", "-o", str(out), "--methods", "fw-lora,l2-lora", "--target-ratios", "0.05,0.5"]
    assert main([*args, "--seeds", "1", *settings_flags(tiny | {"epochs": 1})]) == 0
    printed = capsys.readouterr().out
    runs = {r["label"]: r for r in _runs(out)}
    assert set(runs) == {
        "fw-lora-sum-tr0.05",
        "fw-lora-sum-tr0.5",
        "l2-lora-tr0.05",
        "l2-lora-tr0.5",
    }
    for label, run in runs.items():
        assert run["config"]["fisher_lam"] == "auto"
        fisher = run["fisher"]
        assert fisher["target_ratio"] == run["config"]["fisher_target_ratio"]
        assert isinstance(fisher["lam"], float) and fisher["lam"] > 0, label
    # Ten times the target: ten times the λ (the same weights and gradients at K + 1).
    for method in ("fw-lora-sum", "l2-lora"):
        weak, strong = runs[f"{method}-tr0.05"]["fisher"], runs[f"{method}-tr0.5"]["fisher"]
        assert strong["lam"] == pytest.approx(10 * weak["lam"], rel=1e-9)
    doc = json.loads((out / SWEEP_TESTS).read_text())
    assert doc["curve"]["axis"] == "target_ratio"
    point = doc["curve"]["series"]["fw-lora (sum)"][1]
    assert point["target_ratio"] == 0.5 and point["lams"] == [
        runs["fw-lora-sum-tr0.5"]["fisher"]["lam"]
    ]
    assert doc["fw_vs_l2"][0]["axis"] == "target_ratio"
    assert "fw-lora (sum) target ratio=0.5" in printed
    assert (out / "figures" / "sweep_lambda_curve.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "file", "message"),
    [
        (["--target-ratios", "0,0.1"], {}, "target_ratios: expected numbers in (0, 10], got '0'"),
        (["--target-ratios", "11"], {}, "target_ratios: expected numbers in (0, 10]"),
        ([], {"lams": [0.01], "target_ratios": [0.1]}, "lams / target_ratios: give one or"),
        (["--lams", "0.01", "--target-ratios", "0.1"], {}, "not allowed with argument"),
    ],
)
def test_sweep_refuses_bad_target_ratios(tiny, tmp_path, capsys, args, file, message):
    out = tmp_path / "bad"
    extra = []
    if file:
        path = tmp_path / "sweep.json"
        path.write_text(json.dumps(file))
        extra = ["--config", str(path)]
    assert main(["sweep", "-o", str(out), *args, *extra, *settings_flags(tiny)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_target_ratios_from_a_config_file_and_flags_over_it(tiny):
    from fwlora.harness.sweep import sweep_lists

    file = {"target_ratios": [0.03, 0.1]}
    lists = sweep_lists(file)
    assert (lists["lams"], lists["target_ratios"]) == (None, [0.03, 0.1])
    lists = sweep_lists(file, lams="0.01")  # the flags' axis wins
    assert (lists["lams"], lists["target_ratios"]) == ([0.01], None)
    configs = plan_grid(build_config(tiny), ["lora", "fw-lora"], (), ["max"], [1], [0.1])
    assert [c.label for c in configs] == ["lora", "fw-lora-max-tr0.1"]
    assert (configs[1].fisher_lam, configs[1].fisher_target_ratio) == ("auto", 0.1)
    assert grid_label("l2-lora", target_ratio=0.3) == "l2-lora-tr0.3"


def test_run_settings_take_lam_auto_and_name_a_bad_target(tiny):
    cfg = build_config(tiny | {"fisher_lam": "auto", "fisher_target_ratio": "0.2"})
    assert (cfg.fisher_lam, cfg.fisher_target_ratio) == ("auto", 0.2)
    assert build_config(tiny | {"fisher_lam": "1e-3"}).fisher_lam == 1e-3
    with pytest.raises(HarnessError, match='fisher_target_ratio: only with lam="auto"'):
        build_config(tiny | {"fisher_target_ratio": 0.2})
    with pytest.raises(HarnessError, match=r"fisher_target_ratio: expected a number in \(0, 10\]"):
        build_config(tiny | {"fisher_lam": "auto", "fisher_target_ratio": 20})
    with pytest.raises(HarnessError, match='fisher_lam: expected a number >= 0 or "auto"'):
        build_config(tiny | {"fisher_lam": "big"})


def test_merge_takes_runs_written_before_a_setting_existed(tiny, tmp_path, capsys):
    """An experiment from before `evaluate` existed ran with its every-epoch value: it merges
    with one that says so, and not with one that evaluated only the final epoch."""
    old, new, final = tmp_path / "old", tmp_path / "new", tmp_path / "final"
    assert _tiny_train(tiny, old, "lora", epochs=1, seed=1) == 0
    as_written_before_evaluate(old)
    assert _tiny_train(tiny, new, "lora", epochs=1, seed=2) == 0
    assert _tiny_train(tiny, final, "lora", epochs=1, seed=3, evaluate="final") == 0
    capsys.readouterr()
    assert main(["merge", str(old), str(new), "-o", str(tmp_path / "merged")]) == 0
    groups = json.loads((tmp_path / "merged" / "aggregated_metrics.json").read_text())["groups"]
    assert groups["lora"]["seeds"] == [1, 2]
    assert main(["merge", str(old), str(final), "-o", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert "'evaluate' ('every-epoch' in" in err and err.count("\n") == 1
