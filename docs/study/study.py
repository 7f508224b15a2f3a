"""Every number of the study page (docs/study/index.html), computed from the committed data
in docs/study/data/ with the harness's own statistics. `build_page.py` renders these
numbers; `tests/harness/test_study_page.py` recomputes them and checks the page states them.

    round 1 (data/metrics.json): the λ sweep at weak strengths (targets 0.03, 0.1, 0.3),
        lora, l2-lora, fw-lora (sum, max), seeds 1-10;
    round 2 (data/round2/bind_metrics.json): l2-lora and fw-lora (max) at targets 1, 3, 10,
        the same seeds and recipe; plain LoRA is round 1's (same recipe, seeds and torch);
    premise (data/round2/targeting.json): one all-adapter model per seed, five arms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fwlora.harness import stats
from fwlora.harness.metrics import classification_metrics
from fwlora.harness.sweep import sweep_document

MARGIN = 0.01  # accuracy (and macro-F1) units: ±3.79 of the 379 held-out reviews
NEUTRAL = 1  # drugreview3's label order: negative, neutral, positive


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of a metrics document ({"runs": {name: run}}), each with macro-F1, per-class
    recall and the final confusion matrix (recomputed from the final epoch's confusion
    matrix for runs written before the harness reported them)."""
    runs = list(json.loads(path.read_text())["runs"].values())
    for run in runs:
        if "final_eval_macro_f1" in run:
            continue
        cm = np.asarray(run["epochs"][-1]["confusion_matrix"])
        labels = np.repeat(np.arange(len(cm)), cm.sum(axis=1))
        preds = np.concatenate([np.repeat(np.arange(len(cm)), row) for row in cm])
        m = classification_metrics(labels, preds, len(cm))
        assert abs(m["acc"] - run["final_eval_acc"]) < 1e-12, run["run"]
        run["final_eval_macro_f1"] = m["macro_f1"]
        run["final_eval_recall"] = m["recall"]
        run["final_confusion_matrix"] = cm.tolist()
    return sorted(runs, key=lambda r: (r["label"], r["seed"]))


def sum_normalisation(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How far FW-LoRA (sum) can differ from l2-lora: its per-matrix weights 1 − I_m against
    the control's 1 − 1/M, over every sum run's frozen importances."""
    weights = [
        1.0 - np.asarray(list(r["fisher"]["importance"].values()))
        for r in runs
        if r["method"] == "fw-lora" and r["fisher"]["normalization"] == "sum"
    ]
    m = len(weights[0])
    control = 1.0 - 1.0 / m
    per_run = [(float(w.min()), float(w.max())) for w in weights]
    return {
        "runs": len(weights),
        "matrices": m,
        "control_weight": control,
        "min": min(lo for lo, _ in per_run),
        "max": max(hi for _, hi in per_run),
        "median": float(np.median(np.concatenate(weights))),
        "relative_min": min(lo for lo, _ in per_run) / control,
        "relative_max": max(hi for _, hi in per_run) / control,
        "per_run_spread_median": float(np.median([hi - lo for lo, hi in per_run])),
    }


def never_predicts(runs: list[dict[str, Any]], label: int = NEUTRAL) -> dict[str, int]:
    return {
        "runs": len(runs),
        "never": int(
            sum(np.asarray(r["final_confusion_matrix"])[:, label].sum() == 0 for r in runs)
        ),
        "support": int(np.asarray(runs[0]["final_confusion_matrix"])[label].sum()),
    }


def _verdicts(tests: list[dict[str, Any]], metric: str) -> dict[str, int]:
    out = dict.fromkeys(stats.VERDICTS, 0)
    for t in tests:
        if metric in t["paired"]:
            out[t["paired"][metric]["verdict"]] += 1
    return out


def _compact(comp: dict[str, Any]) -> dict[str, Any]:
    """The figures of one paired comparison the page states."""
    keys = (
        "n",
        "mean_a",
        "mean_b",
        "mean_difference",
        "ci_low",
        "ci_high",
        "p_difference_holm",
        "p_equivalence_holm",
        "mde_80",
        "verdict",
        "family_size",
        "margin",
    )
    out = {k: comp.get(k) for k in keys}
    w = comp.get("wilcoxon")
    out["wilcoxon"] = None if not w else {k: w[k] for k in ("p_value", "method", "nonzero_pairs")}
    return out


def round1(runs: list[dict[str, Any]]) -> dict[str, Any]:
    doc = sweep_document(runs, margin=MARGIN)
    axis = doc["curve"]["axis"]
    tests = [
        {
            "method": t["method"],
            "target": t[axis],
            "seeds": len(t["seeds"]),
            **{m: _compact(c) for m, c in t["paired"].items()},
        }
        for t in doc["fw_vs_l2"]
    ]
    ratios = {
        f"{name} {p[axis]:g}": p["penalty_grad_ratio"]
        for name, points in doc["curve"]["series"].items()
        for p in points
    }
    return {
        "family_size": doc["family_size"]["fw_vs_l2"],
        "fw_vs_l2": tests,
        "verdicts": {m: _verdicts(doc["fw_vs_l2"], m) for m in ("acc", "macro_f1")},
        "achieved_ratios": ratios,
        "max_achieved_ratio": max(v for v in ratios.values() if v is not None),
        "lora_acc": doc["curve"]["lora"]["ci95"]["mean"],
    }


def round2(lora: list[dict[str, Any]], bind: list[dict[str, Any]]) -> dict[str, Any]:
    seeds = sorted({r["seed"] for r in bind})
    runs = [r for r in lora if r["seed"] in seeds] + bind
    doc = sweep_document(runs, margin=MARGIN)
    axis = doc["curve"]["axis"]
    points = {
        f"{name} {p[axis]:g}": {
            "target": p[axis],
            "seeds": len(p["seeds"]),
            "acc": p["ci95"]["mean"],
            "macro_f1": float(np.mean(p["values_macro_f1"])),
            "achieved_ratio_median": p["penalty_grad_ratio"],
        }
        for name, points in doc["curve"]["series"].items()
        for p in points
    }
    cost = [
        {
            "method": t["method"],
            "target": t[axis],
            "achieved_ratio": t["achieved_ratio"],
            **{m: _compact(c) for m, c in t["paired"].items()},
        }
        for t in doc["vs_lora"]
    ]
    same_target = [
        {
            "method": t["method"],
            "target": t[axis],
            **{m: _compact(c) for m, c in t["paired"].items()},
        }
        for t in doc["fw_vs_l2"]
    ]
    equal_strength = [
        {
            "method": t["method"],
            "achieved_ratio": t["achieved_ratio"],
            "seeds": len(t["seeds"]),
            **{m: _compact(c) for m, c in t["paired"].items()},
        }
        for t in doc["frontier_tests"]
    ]
    return {
        "seeds": seeds,
        "runs": len(bind),
        "points": points,
        "cost": cost,
        "same_target": same_target,
        "equal_strength": equal_strength,
        "family_size": doc["family_size"],
        "curve": doc["curve"],
    }


def premise(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "k": doc["k"],
        "matrices": doc["adaptable_matrices"],
        "seeds": doc["seeds"],
        "spearman_mean": doc["ranking_stability"]["spearman_mean"],
        "spearman_min": doc["ranking_stability"]["spearman_min"],
        "rankings": {},
    }
    for ranking, section in doc["rankings"].items():
        out["rankings"][ranking] = {
            "seeds_complete": section["seeds_complete"],
            "arms": {
                w: {
                    "acc": a["acc"]["mean"],
                    "macro_f1": a["macro_f1"]["mean"],
                    "lora_params": a["lora_params_mean"],
                    "never_predicts": a["never_predicts"],
                }
                for w, a in section["arms"].items()
            },
            "comparisons": {
                key: {m: _compact(c) for m, c in comp.items()}
                for key, comp in section["comparisons"].items()
            },
            "top_where": section["top_where"],
            # How many of TOP's k matrices each control shares, per seed: a control that
            # mostly repeats TOP can differ from it only a little.
            "overlap_with_top": {
                w: [
                    len(
                        set(rec["rankings"][ranking]["arms"][w]["set"])
                        & set(rec["rankings"][ranking]["arms"]["top"]["set"])
                    )
                    for rec in doc["per_seed"]
                ]
                for w in ("random", "type", "layer", "bottom")
            },
        }
    return out


def numbers(data: Path) -> dict[str, Any]:
    """Every number of the page, from the committed data folder."""
    first = read_runs(data / "metrics.json")
    out: dict[str, Any] = {
        "margin": MARGIN,
        "eval_examples": first[0]["data"]["eval_examples"],
        "sum_normalisation": sum_normalisation(first),
        "round1": round1(first),
        "round1_never_neutral": never_predicts(first),
    }
    bind_path = data / "round2" / "bind_metrics.json"
    if bind_path.is_file():
        bind = read_runs(bind_path)
        lora = [r for r in first if r["method"] == "lora"]
        out["round2"] = round2(lora, bind)
        out["round2_never_neutral"] = never_predicts(bind)
    premise_path = data / "round2" / "targeting.json"
    if premise_path.is_file():
        out["premise"] = premise(json.loads(premise_path.read_text()))
    return out
