"""Sweeps across methods: methods × λ × normalisation × seeds, and what they are for.

The question a sweep answers is whether the *Fisher weighting* matters, not only "some L2
on ΔW": `l2-lora` is FW-LoRA with uniform importances (I_m = 1/M, the same penalty path and
the same total weight Σ(1 − I_m) = M − 1), so at each λ fw-lora and l2-lora differ only in
where the penalty falls. Plain LoRA (no penalty) and AdaLoRA have no λ: one run per seed.

Run labels: `lora`, `adalora`, `fw-lora-{normalization}-lam{λ}`, `l2-lora-lam{λ}`. With
target ratios instead of λ (`--target-ratios`: fisher_lam "auto", λ calibrated per run so that
‖∇P‖/‖∇L_task‖ = target at the first penalised step), `...-tr{target}` instead of `-lam{λ}`;
the curve's axis is then the target ratio, and each point records its runs' calibrated λ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from fwlora._core import MAX_TARGET_RATIO  # the limit, defined once in the Rust core
from fwlora.harness import methods as registry
from fwlora.harness import stats
from fwlora.harness.artefacts import correct_predictions
from fwlora.harness.config import DEFAULT_SEEDS, RunConfig, run_lists
from fwlora.harness.errors import HarnessError
from fwlora.harness.run_metrics import RunMetrics, decode_runs

# `fwlora sweep`'s defaults (its --help shows them from here).
DEFAULT_METHODS = ("lora", "fw-lora", "l2-lora")
DEFAULT_LAMS = (1e-4, 1e-2, 1e-1)
# The curve's x axis: λ given by hand, or the target ratio λ was calibrated to.
AXIS_TEXT = {"lam": "λ", "target_ratio": "target ratio"}
DEFAULT_NORMALIZATIONS = ("sum",)
GRID_NORMALIZATIONS = ("sum", "max")  # uniform is the l2-lora method, not a normalisation here


def grid_label(
    method: str,
    lam: float | None = None,
    normalization: str | None = None,
    target_ratio: float | None = None,
) -> str:
    """`lora`, `fw-lora-sum-lam0.01`, `l2-lora-lam0.01`; `fw-lora-sum-tr0.1` with a target.
    Methods without λ keep their name; a fixed normalisation (l2-lora's) is not in the label."""
    defined = registry.lookup(method)
    if defined is None or not defined.fisher:
        return method
    strength = f"lam{lam:g}" if target_ratio is None else f"tr{target_ratio:g}"
    if defined.fixed_normalization:
        return f"{method}-{strength}"
    return f"{method}-{normalization}-{strength}"


def strength_text(axis: str, value: float) -> str:
    """`λ=0.01` or `target ratio=0.1`: a curve point's x in words."""
    return f"{AXIS_TEXT[axis]}={value:g}"


def _check_grid(
    lams: Sequence[float], normalizations: Sequence[str], key: str = "lams", high: float = math.inf
) -> None:
    if not lams:
        raise HarnessError(f"{key}: expected at least one value")
    if not normalizations:
        raise HarnessError("normalizations: expected at least one of sum, max")
    for lam in lams:
        if not 0 < lam <= high:
            raise HarnessError(f"{key}: expected numbers in (0, {high:g}], got {lam!r}")
    for norm in normalizations:
        if norm not in GRID_NORMALIZATIONS:
            raise HarnessError(
                f"normalizations: unknown value {norm!r}; choose from sum, max (the uniform "
                "control is the method l2-lora)"
            )
    if len(set(lams)) != len(lams) or len(set(normalizations)) != len(normalizations):
        raise HarnessError(f"{key} / normalizations: a value is given twice")


def plan_grid(
    base: RunConfig,
    methods: Sequence[str] = DEFAULT_METHODS,
    lams: Sequence[float] = DEFAULT_LAMS,
    normalizations: Sequence[str] = DEFAULT_NORMALIZATIONS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    target_ratios: Sequence[float] | None = None,
) -> list[RunConfig]:
    """Every (method, λ, normalisation) of the grid for every seed, seed-major (so an
    interrupted sweep has whole seeds done). λ and normalisation apply only where they
    mean something: fw-lora takes both, l2-lora takes λ (its normalisation is uniform),
    lora and adalora take neither. With `target_ratios`, λ is "auto" (calibrated to each
    target) instead of each of `lams`."""
    strengths: list[tuple[dict[str, Any], float | None, float | None]]
    if target_ratios is None:
        _check_grid(lams, normalizations)
        strengths = [({"fisher_lam": lam, "fisher_target_ratio": None}, lam, None) for lam in lams]
    else:
        _check_grid(target_ratios, normalizations, "target_ratios", MAX_TARGET_RATIO)
        strengths = [
            ({"fisher_lam": "auto", "fisher_target_ratio": t}, None, t) for t in target_ratios
        ]
    cells: list[tuple[str, str | None, dict]] = []  # (method, variant, changes)
    for method in methods:
        defined = registry.lookup(method)
        if defined is None or not defined.fisher:
            cells.append((method, None, {}))
            continue
        # A fixed normalisation (l2-lora's) is the method's own; else each of the grid's.
        norms = [None] if defined.fixed_normalization else list(normalizations)
        for norm in norms:
            for strength, lam, target in strengths:
                changes = {**strength, "fisher_normalization": norm}
                cells.append((method, grid_label(method, lam, norm, target), changes))
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


def _lams(value: Any, key: str = "lams", high: float = math.inf) -> list[float]:
    out = []
    for item in _items(key, value):
        try:
            lam = float(item)
        except (TypeError, ValueError):
            lam = math.nan
        if isinstance(item, bool) or not (math.isfinite(lam) and 0 < lam <= high):
            what = "finite numbers > 0" if high == math.inf else f"numbers in (0, {high:g}]"
            raise HarnessError(f"{key}: expected {what}, got {item!r}")
        out.append(lam)
    return out


def _strength_axis(file: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """lams or target_ratios (one or the other): from the flags if either is given there,
    else from the config file, else the default λ."""
    for where, layer in (("flags", flags), ("config file", file)):
        lams, targets = layer.get("lams"), layer.get("target_ratios")
        if lams is not None and targets is not None:
            raise HarnessError(
                f"lams / target_ratios: give one or the other (both in the {where}): λ by "
                "hand, or λ calibrated to each target ratio"
            )
        if targets is not None:
            return {
                "lams": None,
                "target_ratios": _lams(targets, "target_ratios", MAX_TARGET_RATIO),
            }
        if lams is not None:
            return {"lams": _lams(lams), "target_ratios": None}
    return {"lams": list(DEFAULT_LAMS), "target_ratios": None}


def sweep_lists(
    file: Mapping[str, Any],
    methods: Any = None,
    seeds: Any = None,
    lams: Any = None,
    target_ratios: Any = None,
    normalizations: Any = None,
) -> dict[str, Any]:
    """methods, seeds, lams (or target_ratios), normalizations of `fwlora sweep`: each flag
    (None: not given) over the config file's `file` over the defaults, each checked."""
    lists = run_lists(
        {"methods": list(DEFAULT_METHODS), "seeds": list(DEFAULT_SEEDS)},
        {"methods": file.get("methods"), "seeds": file.get("seeds")},
        {"methods": methods, "seeds": seeds},
    )
    if normalizations is None:
        normalizations = file.get("normalizations", DEFAULT_NORMALIZATIONS)
    norms = [str(n) for n in _items("normalizations", normalizations)]
    return {
        "methods": list(lists.methods),
        "seeds": list(lists.seeds),
        **_strength_axis(file, {"lams": lams, "target_ratios": target_ratios}),
        "normalizations": norms,
    }


# ------------------------------------------------------------------ analysis
SWEEP_TESTS = "sweep_tests.json"
SWEEP_SCHEMA = "fwlora.sweep-tests/1"
CURVE_STEM = "sweep_lambda_curve"
RATIO_STEM = "sweep_penalty_ratio"


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


def _penalty_weights(runs: list[RunMetrics]) -> dict[str, Any] | None:
    """The per-matrix penalty weights 1 − I_m of the runs (their frozen importances): the
    range over matrices and runs, and the total Σ_m (1 − I_m) (mean over runs). How far
    they spread is how much the Fisher weighting can differ from a uniform L2."""
    weights = [
        1.0 - np.asarray(list(r.fisher.importance.values()), dtype=float)
        for r in runs
        if r.fisher and r.fisher.importance
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


def _achieved(run: RunMetrics) -> float | None:
    """The run's median ‖∇P‖/‖∇L_task‖ over its penalised steps (None: none penalised)."""
    return run.fisher.penalty_grad_ratio if run.fisher else None


def _cell(runs: list[RunMetrics], metric: str) -> dict[str, Any]:
    runs = sorted(runs, key=_seed)
    values = [float(r[metric]) for r in runs]
    achieved = [_achieved(r) for r in runs]
    ratios = [float(v) for v in achieved if v is not None]
    macro = [r.final_eval_macro_f1 for r in runs]
    return {
        "seeds": [r.seed for r in runs],
        "runs": [r.run for r in runs],
        "values": values,
        # Runs written before macro-F1 existed: None.
        "values_macro_f1": None if None in macro else [float(v or 0.0) for v in macro],
        "achieved_ratios": achieved,
        "ci95": t_interval(values),
        "penalty_weights": _penalty_weights(runs),
        # median over seeds of each run's median ‖∇P‖/‖∇L_task‖
        "penalty_grad_ratio": float(np.median(ratios)) if ratios else None,
    }


def lambda_curve(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Held-out metric (final epoch) per method series and λ, mean ± 95 % t-CI over seeds;
    plain LoRA as one cell (its band). Series: fw-lora (sum), fw-lora (max), l2-lora.

    `axis` is "target_ratio" when every penalised run calibrated λ to a target ratio
    (fisher_lam "auto"): the points are then per target, with the calibrated λ of each seed
    in `lams`; otherwise "lam" (an auto run among λ-runs sits at its calibrated λ). `runs`:
    run records (or their JSON objects)."""
    records = decode_runs(runs)
    primary = records[0].get("primary_metric", "acc") if records else "acc"
    metric = f"final_eval_{primary}"
    penalised = [r for r in records if registry.is_fisher(r.method) and r.fisher]
    auto = bool(penalised) and all(r.fisher.target_ratio for r in penalised if r.fisher)
    axis = "target_ratio" if auto else "lam"
    baseline = registry.baseline().name
    lora = [r for r in records if r.method == baseline]
    return {
        "metric": metric,
        "axis": axis,
        "lora": _cell(lora, metric) if lora else None,
        "series": _series(penalised, axis, metric, auto),
    }


# A series' place among a method's: the grid's normalisations first, in their order.
SERIES_NORMALIZATION_ORDER = {"sum": 0, "max": 1}


def _series(
    penalised: list[RunMetrics], axis: str, metric: str, auto: bool
) -> dict[str, list[dict[str, Any]]]:
    """The curve's series: per series (method, normalisation) its points along `axis`, in
    the methods' order (fw-lora (sum), fw-lora (max), l2-lora)."""
    cells: dict[tuple[str, float], list[RunMetrics]] = {}
    order: dict[str, tuple[int, int]] = {}
    for run in penalised:
        fisher = run.fisher
        if fisher is None or not fisher.value(axis):
            continue
        method = registry.get(run.method)
        name = method.series(fisher.normalization)
        norm = SERIES_NORMALIZATION_ORDER.get(fisher.normalization or "", 2)
        order[name] = (method.order, norm)
        cells.setdefault((name, float(fisher.value(axis))), []).append(run)
    series: dict[str, list[dict[str, Any]]] = {}
    for (name, x), members in sorted(cells.items(), key=lambda kv: (order[kv[0][0]], *kv[0])):
        point = {axis: x, **_cell(members, metric)}
        if auto:  # the λ each seed's run calibrated (None: never calibrated)
            point["lams"] = [r.fisher.lam if r.fisher else None for r in sorted(members, key=_seed)]
        series.setdefault(name, []).append(point)
    return series


def _seed(run: RunMetrics) -> int:
    return int(run.seed)


def curve_axis(curve: dict[str, Any]) -> str:
    """The x of a curve's points: "lam", or "target_ratio" (curves written before it: λ)."""
    return str(curve.get("axis", "lam"))


def _metric_values(cell: dict[str, Any]) -> dict[str, list[float] | None]:
    return {"acc": cell["values"], "macro_f1": cell.get("values_macro_f1")}


def paired_metrics(
    a: dict[str, Any], b: dict[str, Any], seeds: list[int], margin: float
) -> dict[str, Any]:
    """A − B per metric (acc: the curve's metric; macro_f1 where both cells have it) over
    `seeds`, each a `stats.paired_comparison` (verdicts set later, per family)."""
    out = {}
    for name, values_a in _metric_values(a).items():
        values_b = _metric_values(b)[name]
        if values_a is None or values_b is None:
            continue
        out[name] = stats.paired_comparison(
            [values_a[a["seeds"].index(s)] for s in seeds],
            [values_b[b["seeds"].index(s)] for s in seeds],
            margin,
        )
    return out


def _classify(tests: list[dict[str, Any]]) -> dict[str, int]:
    """Holm over each metric's family of `tests` (their "paired" entries); the sizes."""
    sizes = {}
    for metric in ("acc", "macro_f1"):
        family = [t["paired"][metric] for t in tests if metric in t.get("paired", {})]
        if family:
            sizes[metric] = stats.classify_family(family)
    return sizes


def against_lora(curve: dict[str, Any], margin: float) -> list[dict[str, Any]]:
    """Every penalised point minus plain LoRA, pairing seeds: what the penalty costs."""
    lora = curve.get("lora")
    if not lora:
        return []
    axis = curve_axis(curve)
    tests = []
    for name, points in curve["series"].items():
        for point in points:
            seeds = [s for s in point["seeds"] if s in lora["seeds"]]
            if not seeds:
                continue
            tests.append(
                {
                    "method": name,
                    "control": registry.baseline().name,
                    axis: point[axis],
                    "axis": axis,
                    "seeds": seeds,
                    "achieved_ratio": point["penalty_grad_ratio"],
                    "paired": paired_metrics(point, lora, seeds, margin),
                }
            )
    return tests


# The achieved strengths (median ‖∇P‖/‖∇L_task‖) at which FW-LoRA and l2-lora are compared.
FRONTIER_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def _seed_curve(points: list[dict[str, Any]], seed: int, metric: str):
    """(log achieved ratio, metric) of one seed's runs along a series, sorted by ratio."""
    xs, ys = [], []
    for p in points:
        values = _metric_values(p)[metric]
        if seed not in p["seeds"] or values is None:
            continue
        i = p["seeds"].index(seed)
        ratio = (p.get("achieved_ratios") or [None] * len(p["seeds"]))[i]
        if ratio is not None and ratio > 0:
            xs.append(math.log(ratio))
            ys.append(values[i])
    order = np.argsort(xs)
    return np.asarray(xs)[order], np.asarray(ys)[order]


def frontier(
    curve: dict[str, Any], margin: float, grid: Sequence[float] = FRONTIER_GRID
) -> list[dict[str, Any]]:
    """Each fw-lora series minus l2-lora at equal ACHIEVED strength: per seed, the metric is
    interpolated linearly in log(achieved ratio) along that seed's own runs of each series
    (no extrapolation: a seed counts at a strength both of its curves reach), then paired
    over seeds at each strength of FRONTIER_GRID."""
    control_name = registry.control().name  # l2-lora
    control = curve["series"].get(control_name)
    if not control:
        return []
    seeds = sorted({s for p in control for s in p["seeds"]})
    tests = []
    for name, points in curve["series"].items():
        if name == control_name:
            continue
        for x in grid:
            paired: dict[str, Any] = {}
            used: list[int] = []
            for metric in ("acc", "macro_f1"):
                a, b, used_m = [], [], []
                for s in seeds:
                    xa, ya = _seed_curve(points, s, metric)
                    xb, yb = _seed_curve(control, s, metric)
                    lx = math.log(x)
                    if len(xa) < 2 or len(xb) < 2:
                        continue
                    if not (xa[0] <= lx <= xa[-1] and xb[0] <= lx <= xb[-1]):
                        continue
                    a.append(float(np.interp(lx, xa, ya)))
                    b.append(float(np.interp(lx, xb, yb)))
                    used_m.append(s)
                if len(used_m) >= 2:
                    paired[metric] = stats.paired_comparison(a, b, margin)
                    used = used if metric != "acc" else used_m
            if paired:
                tests.append(
                    {
                        "method": name,
                        "control": control_name,
                        "achieved_ratio": x,
                        "seeds": used,
                        "paired": paired,
                    }
                )
    return tests


def paired_fw_vs_l2(
    curve: dict[str, Any], run_dirs: dict[str, Path] | None = None, margin: float = 0.01
) -> list[dict[str, Any]]:
    """fw-lora (each normalisation) vs l2-lora at each λ, pairing seeds: paired t and
    Wilcoxon over the seeds' final metric, McNemar per seed and pooled over seeds (from the
    runs' predictions.json, when `run_dirs` is given)."""
    axis = curve_axis(curve)
    control_name = registry.control().name  # l2-lora
    control = {p[axis]: p for p in curve["series"].get(control_name, [])}
    tests = []
    for name, points in curve["series"].items():
        if name == control_name:
            continue
        for point in points:
            ref = control.get(point[axis])
            if ref is None:
                continue
            seeds = [s for s in point["seeds"] if s in ref["seeds"]]
            a = [point["values"][point["seeds"].index(s)] for s in seeds]
            b = [ref["values"][ref["seeds"].index(s)] for s in seeds]
            test: dict[str, Any] = {
                "method": name,
                "control": control_name,
                axis: point[axis],
                "axis": axis,
                "seeds": seeds,
                "metric": curve["metric"],
                "across_seeds": stats.paired_tests(a, b) if seeds else None,
                "paired": paired_metrics(point, ref, seeds, margin) if seeds else {},
                "mcnemar_per_seed": None,
                "mcnemar_pooled": None,
            }
            if run_dirs is not None and seeds:
                per_seed, all_a, all_b = [], [], []
                for s in seeds:
                    ca = correct_predictions(run_dirs[point["runs"][point["seeds"].index(s)]])
                    cb = correct_predictions(run_dirs[ref["runs"][ref["seeds"].index(s)]])
                    per_seed.append({"seed": s, **stats.mcnemar(ca, cb)})
                    all_a.append(ca)
                    all_b.append(cb)
                test["mcnemar_per_seed"] = per_seed
                test["mcnemar_pooled"] = stats.mcnemar(np.concatenate(all_a), np.concatenate(all_b))
            tests.append(test)
    return tests


def sweep_document(
    runs: Sequence[Mapping[str, Any]],
    run_dirs: dict[str, Path] | None = None,
    margin: float = stats.DEFAULT_MARGIN,
) -> dict[str, Any]:
    """sweep_tests.json: the λ curve, fw-lora vs l2-lora at each λ (or target), every
    penalised point vs plain LoRA, and fw-lora vs l2-lora at equal achieved strength."""
    margin = stats.check_margin(margin)
    curve = lambda_curve(runs)
    fw_vs_l2 = paired_fw_vs_l2(curve, run_dirs, margin)
    vs_lora = against_lora(curve, margin)
    at_equal = frontier(curve, margin)
    return {
        "schema": SWEEP_SCHEMA,
        "metric": curve["metric"] + " (final epoch: no selection on the evaluation set)",
        "ci": "mean ± 95 % t-interval over seeds (scipy.stats.t; null for one seed)",
        "penalty_grad_ratio": "median over seeds of each run's median ‖∇P‖/‖∇L_task‖ over "
        "its penalised steps",
        "axis": "lam: λ given by hand; target_ratio: fisher_lam 'auto', λ calibrated so that "
        "‖∇P‖/‖∇L_task‖ = target at the first penalised step (each seed's λ in 'lams')",
        "tests": {
            "across_seeds": "paired t-test and Wilcoxon signed-rank over seeds of "
            "fw-lora minus l2-lora (null when undefined)",
            "mcnemar_per_seed": "exact McNemar on the final predictions; b = fw-lora right "
            "& l2-lora wrong",
            "mcnemar_pooled": "McNemar on all seeds' predictions together (the same examples "
            "recur once per seed, so its p-value is optimistic)",
        },
        "equivalence_margin": margin,
        "paired": "per metric (acc, macro_f1 of the final evaluation): mean difference with "
        "its 95 % paired t-interval, two-sided paired t (different) and TOST against "
        "±equivalence_margin (equivalent), Holm-adjusted within each family (family_size: "
        "the members with a defined test); verdict different / equivalent / inconclusive; "
        "mde_80 is a planning figure (80 % power at the observed SD), not evidence",
        "frontier": "fw-lora minus l2-lora at equal achieved ‖∇P‖/‖∇L_task‖: each seed's "
        "metric interpolated linearly in log(achieved ratio) along its own runs of each "
        "series, no extrapolation",
        "family_size": {
            "fw_vs_l2": _classify(fw_vs_l2),
            "vs_lora": _classify(vs_lora),
            "frontier": _classify(at_equal),
        },
        "curve": curve,
        "fw_vs_l2": fw_vs_l2,
        "vs_lora": vs_lora,
        "frontier_tests": at_equal,
    }


def _p(test: dict[str, Any] | None) -> str:
    return "n/a" if not test else f"{test['p_value']:.3g}"


def sweep_text(doc: dict[str, Any]) -> str:
    """Terminal lines: per series and λ, mean ± CI and the penalty ratio; then the tests."""
    curve = doc["curve"]
    axis = curve_axis(curve)
    lines = [
        f"{AXIS_TEXT[axis]} sweep ({curve['metric']}, mean ± 95% CI half-width over seeds; "
        "r = ‖∇P‖/‖∇L_task‖):"
    ]

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
            lams = point.get("lams")
            calibrated = (
                f", calibrated λ {', '.join('n/a' if v is None else f'{v:.2g}' for v in lams)}"
                if lams
                else ""
            )
            lines.append(
                f"  {name} {strength_text(axis, point[axis])}: {fmt(point)}, r={r}{weak}"
                f"{calibrated}"
            )
    for name, points in curve["series"].items():
        w = series_weights(points)
        if w:
            lines.append(
                f"  {name}: penalty weights 1 − I_m in [{w['min']:.3f}, {w['max']:.3f}] over "
                f"{w['matrices']} matrices, total {w['total']:.2f}"
            )
    margin = doc.get("equivalence_margin", stats.DEFAULT_MARGIN)
    lines.append(
        f"paired over seeds: Δ [95 % CI], TOST against ±{margin:g}, verdict after Holm "
        "(family size in brackets):"
    )
    for test in doc["fw_vs_l2"]:
        pooled = test["mcnemar_pooled"]
        mc = (
            "" if not pooled else f"; McNemar pooled b={pooled['b']} c={pooled['c']} p={_p(pooled)}"
        )
        lines += _paired_lines(
            f"{test['method']} − l2-lora at {strength_text(axis, test[axis])}", test, mc
        )
    for test in doc.get("vs_lora", []):
        lines += _paired_lines(
            f"{test['method']} − lora at {strength_text(axis, test[axis])}", test, ""
        )
    for test in doc.get("frontier_tests", []):
        lines += _paired_lines(
            f"{test['method']} − l2-lora at equal achieved ratio {test['achieved_ratio']:g}",
            test,
            "",
        )
    return "\n".join(lines)


def _paired_lines(title: str, test: dict[str, Any], tail: str) -> list[str]:
    out = []
    for metric, comp in (test.get("paired") or {}).items():
        out.append(
            f"  {title} ({metric}, {comp['n']} seeds) [{comp.get('family_size', 1)}]: "
            f"{stats.comparison_text(comp)}{tail if metric == 'acc' else ''}"
        )
    return out


def write_sweep(out_dir: Path, margin: float = stats.DEFAULT_MARGIN) -> str:
    """sweep_tests.json and figures/sweep_lambda_curve.{pdf,png} (+ sweep_penalty_ratio) in
    a finished experiment folder; returns the terminal text ("" when the experiment has no
    fw-lora / l2-lora runs)."""
    from fwlora.harness.experiment import load_experiment
    from fwlora.harness.plots import penalty_ratio_curve, sweep_lambda_curve

    exp = load_experiment(out_dir)
    doc = sweep_document(exp.runs, exp.run_dirs, margin)
    if not doc["curve"]["series"]:
        return ""
    (out_dir / SWEEP_TESTS).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    sweep_lambda_curve(doc, out_dir / "figures")
    penalty_ratio_curve(doc, out_dir / "figures")
    return sweep_text(doc)
