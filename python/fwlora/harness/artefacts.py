"""Experiment artefacts: metrics.json, aggregated_metrics.json, significance_tests.json."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fwlora.harness import stats
from fwlora.harness.errors import read_saved

METRICS_SCHEMA = "fwlora.metrics/1"
AGGREGATED_SCHEMA = "fwlora.aggregated-metrics/1"
SIGNIFICANCE_SCHEMA = "fwlora.significance-tests/1"
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


def group_runs(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs by label (method or sweep variant), in first-seen order, each sorted by seed."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[run["label"]].append(run)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def metrics_document(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": METRICS_SCHEMA, "runs": {run["run"]: run for run in runs}}


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


def _recall_summary(members: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean (and sample std) over seeds of each class's recall in the final evaluation."""
    if not all(r.get("final_eval_recall") for r in members):
        return None
    arr = np.asarray([r["final_eval_recall"] for r in members], dtype=float)
    std = arr.std(axis=0, ddof=1) if len(arr) > 1 else None
    return {
        "mean": [float(v) for v in arr.mean(axis=0)],
        "std": None if std is None else [float(v) for v in std],
        "display": "/".join(f"{v:.2f}" for v in arr.mean(axis=0)),
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """mean ± std (sample std, ddof=1; null for one seed) of each metric per label."""
    groups = {}
    for label, members in group_runs(runs).items():
        first = members[0]
        groups[label] = {
            "method": first["method"],
            "task": first["task"],
            "model": first["model_display"],
            "seeds": [r["seed"] for r in members],
            "runs": [r["run"] for r in members],
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
    return "lora" if "lora" in labels else labels[0]


def significance(
    runs: list[dict[str, Any]],
    run_dirs: dict[str, Path],
    n_resamples: int = 9999,
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
        base_by_seed = {r["seed"]: r for r in groups[base]}
        pairs = [(r, base_by_seed[r["seed"]]) for r in groups[label] if r["seed"] in base_by_seed]
        if not pairs:
            continue
        per_seed, correct_a, correct_b = [], [], []
        for run, ref in pairs:
            ca, cb = (
                correct_predictions(run_dirs[run["run"]]),
                correct_predictions(run_dirs[ref["run"]]),
            )
            if ca.shape != cb.shape:
                continue  # different evaluation sets: no paired test
            correct_a.append(ca)
            correct_b.append(cb)
            per_seed.append(
                {
                    "seed": run["seed"],
                    "run": run["run"],
                    "baseline_run": ref["run"],
                    "n_examples": len(ca),
                    "acc": float(ca.mean()),
                    "baseline_acc": float(cb.mean()),
                    "mcnemar": stats.mcnemar(ca, cb),
                }
            )
        if not per_seed:
            continue
        seeds = [p["seed"] for p in per_seed]
        by_seed = {r["seed"]: (r, ref) for r, ref in pairs}
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
        comparisons.append(
            {
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
        )
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
