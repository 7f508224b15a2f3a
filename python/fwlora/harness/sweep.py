"""Sweeps across methods: methods × λ × normalisation × seeds, and what they are for.

The question a sweep answers is whether the *Fisher weighting* matters, not only "some L2
on ΔW": `l2-lora` is FW-LoRA with uniform importances (I_m = 1/M, the same penalty path and
the same total weight Σ(1 − I_m) = M − 1), so at each λ fw-lora and l2-lora differ only in
where the penalty falls. Plain LoRA (no penalty) and AdaLoRA have no λ: one run per seed.

Run labels: `lora`, `adalora`, `fw-lora-{normalization}-lam{λ}`, `l2-lora-lam{λ}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from fwlora.harness import stats
from fwlora.harness.config import RunConfig, run_lists
from fwlora.harness.errors import HarnessError

DEFAULT_METHODS = ("lora", "fw-lora", "l2-lora")
DEFAULT_LAMS = (1e-4, 1e-2, 1e-1)
DEFAULT_NORMALIZATIONS = ("sum",)
GRID_NORMALIZATIONS = ("sum", "max")  # uniform is the l2-lora method, not a normalisation here


def grid_label(method: str, lam: float | None = None, normalization: str | None = None) -> str:
    """`lora`, `fw-lora-sum-lam0.01`, `l2-lora-lam0.01`."""
    if method == "fw-lora":
        return f"fw-lora-{normalization}-lam{lam:g}"
    if method == "l2-lora":
        return f"l2-lora-lam{lam:g}"
    return method


def _check_grid(lams: Sequence[float], normalizations: Sequence[str]) -> None:
    if not lams:
        raise HarnessError("lams: expected at least one λ")
    if not normalizations:
        raise HarnessError("normalizations: expected at least one of sum, max")
    for lam in lams:
        if not lam > 0:
            raise HarnessError(f"lams: expected numbers > 0, got {lam!r}")
    for norm in normalizations:
        if norm not in GRID_NORMALIZATIONS:
            raise HarnessError(
                f"normalizations: unknown value {norm!r}; choose from sum, max (the uniform "
                "control is the method l2-lora)"
            )
    if len(set(lams)) != len(lams) or len(set(normalizations)) != len(normalizations):
        raise HarnessError("lams / normalizations: a value is given twice")


def plan_grid(
    base: RunConfig,
    methods: Sequence[str] = DEFAULT_METHODS,
    lams: Sequence[float] = DEFAULT_LAMS,
    normalizations: Sequence[str] = DEFAULT_NORMALIZATIONS,
    seeds: Sequence[int] = (42,),
) -> list[RunConfig]:
    """Every (method, λ, normalisation) of the grid for every seed, seed-major (so an
    interrupted sweep has whole seeds done). λ and normalisation apply only where they
    mean something: fw-lora takes both, l2-lora takes λ (its normalisation is uniform),
    lora and adalora take neither."""
    _check_grid(lams, normalizations)
    cells: list[tuple[str, str | None, dict]] = []  # (method, variant, changes)
    for method in methods:
        if method == "fw-lora":
            for norm in normalizations:
                for lam in lams:
                    changes = {"fisher_lam": lam, "fisher_normalization": norm}
                    cells.append((method, grid_label(method, lam, norm), changes))
        elif method == "l2-lora":
            for lam in lams:
                changes = {"fisher_lam": lam, "fisher_normalization": None}
                cells.append((method, grid_label(method, lam), changes))
        else:
            cells.append((method, None, {}))
    return [
        base.replace(method=method, seed=seed, variant=variant, **changes)
        for seed in seeds
        for method, variant, changes in cells
    ]


def _items(key: str, value: Any) -> list[Any]:
    """A list from a config-file list, comma-separated text or one number; empty items
    refused."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (int, float)) and not isinstance(items, bool):
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise HarnessError(f"{key}: expected a list (or comma-separated text), got {value!r}")
    items = [x.strip() if isinstance(x, str) else x for x in items]
    if not items or any(x == "" for x in items):
        raise HarnessError(f"{key}: expected comma-separated, non-empty items, got {value!r}")
    return items


def _lams(value: Any) -> list[float]:
    out = []
    for item in _items("lams", value):
        try:
            lam = float(item)
        except (TypeError, ValueError):
            lam = math.nan
        if isinstance(item, bool) or not (math.isfinite(lam) and lam > 0):
            raise HarnessError(f"lams: expected finite numbers > 0, got {item!r}")
        out.append(lam)
    return out


def sweep_lists(file: dict[str, Any], args: Any) -> dict[str, list[Any]]:
    """methods, seeds, lams, normalizations of `fwlora sweep`: flags over the config file
    over the defaults, each checked."""

    def pick(key: str, default: Any) -> Any:
        flag = getattr(args, key, None)
        return flag if flag is not None else file.get(key, default)

    lists = run_lists(
        {"methods": list(DEFAULT_METHODS), "seeds": [42]},
        {"methods": file.get("methods"), "seeds": file.get("seeds")},
        {"methods": getattr(args, "methods", None), "seeds": getattr(args, "seeds", None)},
    )
    norms = [
        str(n) for n in _items("normalizations", pick("normalizations", DEFAULT_NORMALIZATIONS))
    ]
    return {
        "methods": list(lists.methods),
        "seeds": list(lists.seeds),
        "lams": _lams(pick("lams", DEFAULT_LAMS)),
        "normalizations": norms,
    }


# ------------------------------------------------------------------ analysis
SWEEP_TESTS = "sweep_tests.json"
SWEEP_SCHEMA = "fwlora.sweep-tests/1"
CURVE_STEM = "sweep_lambda_curve"
RATIO_STEM = "sweep_penalty_ratio"


def _series_name(method: str, normalization: str | None) -> str:
    return f"fw-lora ({normalization})" if method == "fw-lora" else method


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """mean and the t-interval over seeds (low/high None for fewer than two values)."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    out: dict[str, Any] = {"n": len(arr), "mean": mean, "low": None, "high": None}
    if len(arr) >= 2:
        half = (
            float(scipy_stats.t.ppf(0.5 + confidence / 2, len(arr) - 1))
            * float(arr.std(ddof=1))
            / math.sqrt(len(arr))
        )
        out.update(low=mean - half, high=mean + half)
    return out


def _penalty_weights(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The per-matrix penalty weights 1 − I_m of the runs (their frozen importances): the
    range over matrices and runs, and the total Σ_m (1 − I_m) (mean over runs). How far
    they spread is how much the Fisher weighting can differ from a uniform L2."""
    weights = [
        1.0 - np.asarray(list(r["fisher"]["importance"].values()), dtype=float)
        for r in runs
        if r.get("fisher") and r["fisher"].get("importance")
    ]
    if not weights:
        return None
    return {
        "matrices": len(weights[0]),
        "min": float(min(w.min() for w in weights)),
        "max": float(max(w.max() for w in weights)),
        "total": float(np.mean([w.sum() for w in weights])),
    }


def series_weights(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """`penalty_weights` over every λ of a series (the importances freeze at K, before any
    penalty, so they do not depend on λ; the range covers all runs anyway)."""
    found = [p["penalty_weights"] for p in points if p.get("penalty_weights")]
    if not found:
        return None
    return {
        "matrices": found[0]["matrices"],
        "min": min(w["min"] for w in found),
        "max": max(w["max"] for w in found),
        "total": float(np.mean([w["total"] for w in found])),
    }


def _cell(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["seed"])
    values = [float(r[metric]) for r in runs]
    ratios = [
        r["fisher"]["penalty_grad_ratio"]
        for r in runs
        if r.get("fisher") and r["fisher"].get("penalty_grad_ratio") is not None
    ]
    return {
        "seeds": [r["seed"] for r in runs],
        "runs": [r["run"] for r in runs],
        "values": values,
        "ci95": t_interval(values),
        "penalty_weights": _penalty_weights(runs),
        # median over seeds of each run's median ‖∇P‖/‖∇L_task‖
        "penalty_grad_ratio": float(np.median(ratios)) if ratios else None,
    }


def lambda_curve(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out metric (final epoch) per method series and λ, mean ± 95 % t-CI over seeds;
    plain LoRA as one cell (its band). Series: fw-lora (sum), fw-lora (max), l2-lora."""
    primary = runs[0].get("primary_metric", "acc") if runs else "acc"
    metric = f"final_eval_{primary}"
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    lora: list[dict[str, Any]] = []
    for run in runs:
        fisher = run.get("fisher") or {}
        if run["method"] == "lora":
            lora.append(run)
        elif run["method"] in ("fw-lora", "l2-lora") and fisher.get("lam"):
            name = _series_name(run["method"], fisher.get("normalization"))
            cells.setdefault((name, float(fisher["lam"])), []).append(run)
    series: dict[str, list[dict[str, Any]]] = {}
    order = {"fw-lora (sum)": 0, "fw-lora (max)": 1, "l2-lora": 3}
    for (name, lam), members in sorted(
        cells.items(), key=lambda kv: (order.get(kv[0][0], 2), kv[0][0], kv[0][1])
    ):
        series.setdefault(name, []).append({"lam": lam, **_cell(members, metric)})
    return {"metric": metric, "lora": _cell(lora, metric) if lora else None, "series": series}


def _correct(run_dir: Path) -> np.ndarray:
    pred = json.loads((run_dir / "predictions.json").read_text())
    return np.asarray(pred["final"]) == np.asarray(pred["labels"])


def paired_fw_vs_l2(
    curve: dict[str, Any], run_dirs: dict[str, Path] | None = None
) -> list[dict[str, Any]]:
    """fw-lora (each normalisation) vs l2-lora at each λ, pairing seeds: paired t and
    Wilcoxon over the seeds' final metric, McNemar per seed and pooled over seeds (from the
    runs' predictions.json, when `run_dirs` is given)."""
    control = {p["lam"]: p for p in curve["series"].get("l2-lora", [])}
    tests = []
    for name, points in curve["series"].items():
        if name == "l2-lora":
            continue
        for point in points:
            ref = control.get(point["lam"])
            if ref is None:
                continue
            seeds = [s for s in point["seeds"] if s in ref["seeds"]]
            a = [point["values"][point["seeds"].index(s)] for s in seeds]
            b = [ref["values"][ref["seeds"].index(s)] for s in seeds]
            test: dict[str, Any] = {
                "method": name,
                "control": "l2-lora",
                "lam": point["lam"],
                "seeds": seeds,
                "metric": curve["metric"],
                "across_seeds": stats.paired_tests(a, b) if seeds else None,
                "mcnemar_per_seed": None,
                "mcnemar_pooled": None,
            }
            if run_dirs is not None and seeds:
                per_seed, all_a, all_b = [], [], []
                for s in seeds:
                    ca = _correct(run_dirs[point["runs"][point["seeds"].index(s)]])
                    cb = _correct(run_dirs[ref["runs"][ref["seeds"].index(s)]])
                    per_seed.append({"seed": s, **stats.mcnemar(ca, cb)})
                    all_a.append(ca)
                    all_b.append(cb)
                test["mcnemar_per_seed"] = per_seed
                test["mcnemar_pooled"] = stats.mcnemar(np.concatenate(all_a), np.concatenate(all_b))
            tests.append(test)
    return tests


def sweep_document(
    runs: list[dict[str, Any]], run_dirs: dict[str, Path] | None = None
) -> dict[str, Any]:
    """sweep_tests.json: the λ curve and the fw-lora vs l2-lora tests."""
    curve = lambda_curve(runs)
    return {
        "schema": SWEEP_SCHEMA,
        "metric": curve["metric"] + " (final epoch: no selection on the evaluation set)",
        "ci": "mean ± 95 % t-interval over seeds (scipy.stats.t; null for one seed)",
        "penalty_grad_ratio": "median over seeds of each run's median ‖∇P‖/‖∇L_task‖ over "
        "its penalised steps",
        "tests": {
            "across_seeds": "paired t-test and Wilcoxon signed-rank over seeds of "
            "fw-lora minus l2-lora (null when undefined)",
            "mcnemar_per_seed": "exact McNemar on the final predictions; b = fw-lora right "
            "& l2-lora wrong",
            "mcnemar_pooled": "McNemar on all seeds' predictions together (the same examples "
            "recur once per seed, so its p-value is optimistic)",
        },
        "curve": curve,
        "fw_vs_l2": paired_fw_vs_l2(curve, run_dirs),
    }


def _p(test: dict[str, Any] | None) -> str:
    return "n/a" if not test else f"{test['p_value']:.3g}"


def sweep_text(doc: dict[str, Any]) -> str:
    """Terminal lines: per series and λ, mean ± CI and the penalty ratio; then the tests."""
    curve = doc["curve"]
    lines = [f"λ sweep ({curve['metric']}, mean ± 95% CI over seeds; r = ‖∇P‖/‖∇L_task‖):"]

    def fmt(cell: dict[str, Any]) -> str:
        ci = cell["ci95"]
        text = f"{ci['mean']:.4f}"
        if ci["low"] is not None:
            text += f" ± {ci['mean'] - ci['low']:.4f}"
        return text + f" (n={ci['n']})"

    if curve["lora"]:
        lines.append(f"  lora (no penalty): {fmt(curve['lora'])}")
    for name, points in curve["series"].items():
        for point in points:
            ratio = point["penalty_grad_ratio"]
            r = "n/a" if ratio is None else f"{ratio:.2g}"
            weak = "  (penalty barely acts)" if ratio is not None and ratio < 1e-2 else ""
            lines.append(f"  {name} λ={point['lam']:g}: {fmt(point)}, r={r}{weak}")
    for name, points in curve["series"].items():
        w = series_weights(points)
        if w:
            lines.append(
                f"  {name}: penalty weights 1 − I_m in [{w['min']:.3f}, {w['max']:.3f}] over "
                f"{w['matrices']} matrices, total {w['total']:.2f}"
            )
    for test in doc["fw_vs_l2"]:
        across = test["across_seeds"] or {}
        pooled = test["mcnemar_pooled"]
        mc = (
            "" if not pooled else f", McNemar pooled b={pooled['b']} c={pooled['c']} p={_p(pooled)}"
        )
        lines.append(
            f"  {test['method']} − l2-lora at λ={test['lam']:g}: "
            f"Δ {across.get('mean_difference', float('nan')):+.4f} over {len(test['seeds'])} "
            f"seeds, paired t p={_p(across.get('paired_t'))}, "
            f"Wilcoxon p={_p(across.get('wilcoxon'))}{mc}"
        )
    return "\n".join(lines)


def write_sweep(out_dir: Path) -> str:
    """sweep_tests.json and figures/sweep_lambda_curve.{pdf,png} (+ sweep_penalty_ratio) in
    a finished experiment folder; returns the terminal text ("" when the experiment has no
    fw-lora / l2-lora runs)."""
    from fwlora.harness.experiment import load_experiment
    from fwlora.harness.plots import penalty_ratio_curve, sweep_lambda_curve

    exp = load_experiment(out_dir)
    doc = sweep_document(exp.runs, exp.run_dirs)
    if not doc["curve"]["series"]:
        return ""
    (out_dir / SWEEP_TESTS).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    sweep_lambda_curve(doc, out_dir / "figures")
    penalty_ratio_curve(doc, out_dir / "figures")
    return sweep_text(doc)
