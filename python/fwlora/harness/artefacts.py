"""Experiment artefacts: metrics.json, aggregated_metrics.json, significance_tests.json."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fwlora.harness import methods, stats
from fwlora.harness.errors import read_saved
from fwlora.harness.run_metrics import RunMetrics, encode_run

METRICS_SCHEMA = "fwlora.metrics/1"
AGGREGATED_SCHEMA = "fwlora.aggregated-metrics/1"
SIGNIFICANCE_SCHEMA = "fwlora.significance-tests/1"
# Bootstrap resamples of the significance tests' interval.
N_RESAMPLES = 9999
# Per-run scalars summarised over seeds.
AGGREGATED_KEYS = (
    "best_eval_acc",
    "best_eval_f1",
    "best_eval_mcc",
    "final_eval_acc",
    "final_eval_f1",
    "final_eval_mcc",
    "final_eval_macro_f1",
    "final_eval_loss",
    "final_train_loss",
    "final_train_acc",
    "runtime_sec",
    "train_time_sec",
    "peak_memory_mb",
)


def group_runs(runs: list[RunMetrics]) -> dict[str, list[RunMetrics]]:
    """Runs by label (method or sweep variant), in first-seen order, each sorted by seed."""
    groups: dict[str, list[RunMetrics]] = defaultdict(list)
    for run in runs:
        groups[run.label].append(run)
    return {k: sorted(v, key=lambda r: r.seed) for k, v in groups.items()}


def metrics_document(runs: list[RunMetrics]) -> dict[str, Any]:
    """The experiment's metrics.json: every run's record (`run_metrics`' codec) by name."""
    return {"schema": METRICS_SCHEMA, "runs": {run.run: encode_run(run) for run in runs}}


def _summary(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return {
        "mean": float(arr.mean()),
        "std": std,
        "n": len(arr),
        "values": [float(v) for v in arr],
        "display": f"{arr.mean():.4f} ± {std:.4f}" if std is not None else f"{arr.mean():.4f}",
    }


def _recall_summary(members: list[RunMetrics]) -> dict[str, Any] | None:
    """Mean (and sample std) over seeds of each class's recall in the final evaluation."""
    if not all(r.final_eval_recall for r in members):
        return None
    arr = np.asarray([r.final_eval_recall for r in members], dtype=float)
    std = arr.std(axis=0, ddof=1) if len(arr) > 1 else None
    return {
        "mean": [float(v) for v in arr.mean(axis=0)],
        "std": None if std is None else [float(v) for v in std],
        "display": "/".join(f"{v:.2f}" for v in arr.mean(axis=0)),
    }


def aggregate(runs: list[RunMetrics]) -> dict[str, Any]:
    """mean ± std (sample std, ddof=1; null for one seed) of each metric per label."""
    groups = {}
    for label, members in group_runs(runs).items():
        first = members[0]
        groups[label] = {
            "method": first.method,
            "task": first["task"],
            "model": first["model_display"],
            "seeds": [r.seed for r in members],
            "runs": [r.run for r in members],
            "trainable_params": first["adapters"]["trainable_params"],
            "adapter_params": first["adapters"]["adapter_params"],
            "budget_percent": first["adapters"]["budget_percent"],
            "rank": first["adapters"]["rank"],
            # Runs written before a metric existed (macro-F1) leave it out of their group.
            "metrics": {
                k: _summary([r[k] for r in members])
                for k in AGGREGATED_KEYS
                if all(k in r for r in members)
            },
            "final_eval_recall": _recall_summary(members),
        }
    return {"schema": AGGREGATED_SCHEMA, "std": "sample (ddof=1)", "groups": groups}


def correct_predictions(run_dir: Path) -> np.ndarray:
    """Per evaluation example: did the run's final epoch classify it correctly."""
    fix = f"delete the run folder {run_dir} to train that run again"
    pred = read_saved(run_dir / "predictions.json", lambda p: json.loads(p.read_text()), fix)
    return np.asarray(pred["final"]) == np.asarray(pred["labels"])


def baseline_label(labels: list[str]) -> str:
    """The baseline method's label (plain LoRA) if present, else the first."""
    base = methods.baseline().name
    return base if base in labels else labels[0]


def _per_seed(
    pairs: list[tuple[RunMetrics, RunMetrics]], run_dirs: dict[str, Path]
) -> tuple[list[dict[str, Any]], list[np.ndarray], list[np.ndarray]]:
    """McNemar per seed of a label's runs against their baseline runs, and each side's
    correct predictions (seeds evaluated on different sets are left out)."""
    per_seed: list[dict[str, Any]] = []
    correct_a, correct_b = [], []
    for run, ref in pairs:
        ca, cb = correct_predictions(run_dirs[run.run]), correct_predictions(run_dirs[ref.run])
        if ca.shape != cb.shape:
            continue  # different evaluation sets: no paired test
        correct_a.append(ca)
        correct_b.append(cb)
        per_seed.append(
            {
                "seed": run.seed,
                "run": run.run,
                "baseline_run": ref.run,
                "n_examples": len(ca),
                "acc": float(ca.mean()),
                "baseline_acc": float(cb.mean()),
                "mcnemar": stats.mcnemar(ca, cb),
            }
        )
    return per_seed, correct_a, correct_b


def _comparison(
    label: str,
    base: str,
    pairs: list[tuple[RunMetrics, RunMetrics]],
    run_dirs: dict[str, Path],
    n_resamples: int,
    margin: float,
) -> dict[str, Any] | None:
    """One label against the baseline (None: no seed with a paired test)."""
    per_seed, correct_a, correct_b = _per_seed(pairs, run_dirs)
    if not per_seed:
        return None
    seeds = [p["seed"] for p in per_seed]
    by_seed = {r.seed: (r, ref) for r, ref in pairs}
    across = {
        key: stats.paired_tests(
            [by_seed[s][0][key] for s in seeds], [by_seed[s][1][key] for s in seeds]
        )
        for key in ("final_eval_acc", "best_eval_acc")
    }
    # The final evaluation (no selection on the evaluation set), per metric: interval,
    # TOST against ±margin and a verdict (Holm over every comparison of the experiment).
    paired = {
        key: stats.paired_comparison(
            [by_seed[s][0][key] for s in seeds], [by_seed[s][1][key] for s in seeds], margin
        )
        for key in ("final_eval_acc", "final_eval_macro_f1")
        if all(key in by_seed[s][0] and key in by_seed[s][1] for s in seeds)
    }
    return {
        "method": label,
        "baseline": base,
        "seeds": seeds,
        "per_seed": per_seed,
        "across_seeds": across,
        "paired": paired,
        "bootstrap_ci": stats.bootstrap_difference_ci(
            np.stack(correct_a), np.stack(correct_b), n_resamples=n_resamples
        ),
    }


def significance(
    runs: list[RunMetrics],
    run_dirs: dict[str, Path],
    n_resamples: int = N_RESAMPLES,
    margin: float = stats.DEFAULT_MARGIN,
) -> dict[str, Any]:
    """Every label against the baseline (plain LoRA if present), pairing runs by seed."""
    groups = group_runs(runs)
    labels = list(groups)
    base = baseline_label(labels)
    comparisons = []
    for label in labels:
        if label == base:
            continue
        base_by_seed = {r.seed: r for r in groups[base]}
        pairs = [(r, base_by_seed[r.seed]) for r in groups[label] if r.seed in base_by_seed]
        comparison = (
            _comparison(label, base, pairs, run_dirs, n_resamples, margin) if pairs else None
        )
        if comparison is not None:
            comparisons.append(comparison)
    return {
        "schema": SIGNIFICANCE_SCHEMA,
        "baseline": base,
        "predictions": "final epoch (no selection on the evaluation set)",
        "difference": "method minus baseline",
        "tests": {
            "per_seed": "McNemar, exact binomial two-sided (p_value) and chi2 with "
            "continuity correction (p_value_chi2); b = method right & baseline wrong",
            "across_seeds": "paired t-test and Wilcoxon signed-rank on per-seed metrics "
            "(null when undefined: < 2 seeds or constant differences)",
            "bootstrap_ci": "percentile bootstrap over examples of the seed-averaged "
            "final accuracy difference",
            "paired": "per metric of the final evaluation: mean difference with its 95 % "
            "paired t-interval, two-sided paired t (different) and TOST against ±margin "
            "(equivalent), both Holm-adjusted over every comparison of this experiment "
            "(family_size); verdict different / equivalent / inconclusive; mde_80 is a "
            "planning figure, not evidence",
        },
        "equivalence_margin": margin,
        "family_size": {key: _classify(comparisons, key) for key in _paired_keys(comparisons)},
        "comparisons": comparisons,
    }


def _paired_keys(comparisons: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for c in comparisons:
        keys += [k for k in c["paired"] if k not in keys]
    return keys


def _classify(comparisons: list[dict[str, Any]], key: str) -> int:
    return stats.classify_family([c["paired"][key] for c in comparisons if key in c["paired"]])


def write_json(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path
