"""Figures as PDF and PNG, named as in the paper: `{run}_confusion_matrix`, learning curves,
comparison bar charts, and the layer × module-type importance heatmap."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fwlora.harness.artefacts import group_runs
from fwlora.harness.metrics import primary_metric
from fwlora.harness.run_metrics import RunMetrics

FORMATS = ("pdf", "png")


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    return paths


def confusion_matrix_plot(run: RunMetrics, out_dir: Path) -> list[Path]:
    cm = np.asarray(run["epochs"][-1]["confusion_matrix"])
    names = run["data"]["label_names"]
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black"
        )
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{run.label} (final epoch)", fontsize=10)
    return save_figure(fig, out_dir, f"{run.run}_confusion_matrix")


def eval_acc_curve(run: RunMetrics, out_dir: Path) -> list[Path]:
    rows = [h for h in run["epochs"] if "eval_acc" in h]  # evaluate="final": one point
    epochs = [h["epoch"] for h in rows]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.plot(epochs, [h["eval_acc"] for h in rows], "o-", label="accuracy")
    ax.plot(epochs, [h["eval_f1"] for h in rows], "s--", label="F1", alpha=0.7)
    if run.get("primary_metric", primary_metric(run["task"])) == "mcc":
        ax.plot(epochs, [h["eval_mcc"] for h in rows], "^-", label="Matthews corr.")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation metric")
    ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(run.label, fontsize=10)
    return save_figure(fig, out_dir, f"{run.run}_eval_acc_learning_curve")


def train_loss_curve(run: RunMetrics, out_dir: Path) -> list[Path]:
    losses = np.asarray(run["train_loss_steps"], dtype=float)
    steps = np.arange(1, len(losses) + 1)
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.plot(steps, losses, color="0.7", lw=0.8, label="per step")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.6, label=f"moving mean ({window} steps)")
    ends = [h["global_step"] for h in run["epochs"]]
    ax.plot(ends, [h["train_loss"] for h in run["epochs"]], "o", label="epoch mean")
    k = run.fisher.warmup_steps if run.fisher else None
    if k and k < len(losses):
        ax.axvline(k, ls=":", color="k", lw=1)
        ax.annotate(f"K={k}", (k, ax.get_ylim()[1]), va="top", ha="left", fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(run.label, fontsize=10)
    return save_figure(fig, out_dir, f"{run.run}_train_loss_learning_curve")


def comparison_bar_chart(runs: list[RunMetrics], key: str, out_dir: Path) -> list[Path]:
    groups = group_runs(runs)
    labels = list(groups)
    values = [[r[key] for r in groups[label]] for label in labels]
    means = [float(np.mean(v)) for v in values]
    stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
    fig = Figure(figsize=(max(4.0, 1.3 * len(labels) + 1.5), 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(labels))], alpha=0.8)
    for i, v in enumerate(values):
        ax.plot(np.full(len(v), i), v, "k.", ms=5)
        ax.annotate(
            f"{means[i]:.4g}",
            (i, means[i]),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax.set_xticks(
        x,
        labels,
        rotation=20 if len(labels) > 3 else 0,
        ha="right" if len(labels) > 3 else "center",
    )
    ax.set_ylabel(key)
    if key.endswith("acc"):
        low = min(min(v) for v in values)
        ax.set_ylim(max(0.0, low - 0.1), min(1.0, max(max(v) for v in values) + 0.05))
    ax.grid(axis="y", alpha=0.3)
    n = max(len(v) for v in values)
    ax.set_title(f"{key} (mean ± std over {n} seed{'s' if n > 1 else ''})", fontsize=10)
    return save_figure(fig, out_dir, f"comparison_{key}_bar_chart")


_LAYER = re.compile(r"layers?\.(\d+)\.(.+)$")


def module_position(name: str) -> tuple[int | None, str]:
    """(layer index, module type) of a qualified name, e.g. (3, 'attention.output')."""
    match = _LAYER.search(name)
    if not match:
        return None, name.split(".")[-1]
    kind = match.group(2).removeprefix("attention.self.").removeprefix("self_attn.")
    return int(match.group(1)), kind.removesuffix(".dense")


def importance_grid(importance: dict[str, float]) -> tuple[list[int], list[str], np.ndarray]:
    cells = {module_position(n): v for n, v in importance.items()}
    layers = sorted({layer for layer, _ in cells if layer is not None})
    kinds: list[str] = []
    for _, kind in cells:
        if kind not in kinds:
            kinds.append(kind)
    grid = np.full((len(layers), len(kinds)), np.nan)
    for (layer, kind), v in cells.items():
        if layer is not None:
            grid[layers.index(layer), kinds.index(kind)] = v
    return layers, kinds, grid


def importance_heatmap(run: RunMetrics, out_dir: Path) -> list[Path]:
    importance = run.fisher.importance if run.fisher else None
    if not importance:
        return []
    layers, kinds, grid = importance_grid(importance)
    fig = Figure(figsize=(1.2 * len(kinds) + 2.5, 0.45 * len(layers) + 1.8))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="importance $I_m$")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v < np.nanmax(grid) / 2 else "black",
            )
    ax.set_xticks(range(len(kinds)), kinds, rotation=25, ha="right")
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("module type")
    ax.set_ylabel("layer")
    ax.set_title(f"{run.label}: frozen importances", fontsize=10)
    return save_figure(fig, out_dir, f"{run.run}_importance_heatmap")


def all_plots(runs: list[RunMetrics], out_dir: Path) -> list[Path]:
    """Every figure of an experiment into out_dir; returns the written paths."""
    paths: list[Path] = []
    for run in runs:
        paths += confusion_matrix_plot(run, out_dir)
        paths += eval_acc_curve(run, out_dir)
        paths += train_loss_curve(run, out_dir)
        paths += importance_heatmap(run, out_dir)
    paths += comparison_bar_chart(runs, "best_eval_acc", out_dir)
    paths += comparison_bar_chart(runs, "runtime_sec", out_dir)
    return paths


# ------------------------------------------------------------------ sweeps (fwlora sweep)
_SERIES_STYLE = {"fw-lora (sum)": "o-", "fw-lora (max)": "s-", "l2-lora": "^--"}


def _series_style(name: str, index: int) -> tuple[str, str]:
    return _SERIES_STYLE.get(name, "d-"), f"C{index}"


_AXIS_LABEL = {
    "lam": "λ (penalty strength)",
    "target_ratio": "target ratio ‖∇P‖/‖∇L_task‖ at calibration (λ = auto)",
}


def sweep_lambda_curve(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Held-out metric vs λ, or vs the target ratio λ was calibrated to (log axis): mean ±
    95 % t-CI over seeds per series; plain LoRA as a horizontal band (its mean ± CI). `doc`
    is sweep_tests.json."""
    curve = doc["curve"]
    axis = curve.get("axis", "lam")
    fig = Figure(figsize=(5.6, 3.9))
    ax = fig.add_subplot()
    lora = curve.get("lora")
    if lora:
        ci = lora["ci95"]
        ax.axhline(ci["mean"], color="0.35", lw=1.2, label=f"LoRA (n={ci['n']})")
        if ci["low"] is not None:
            ax.axhspan(ci["low"], ci["high"], color="0.85", alpha=0.8, lw=0)
    count = len(curve["series"])
    for i, (name, points) in enumerate(curve["series"].items()):
        style, color = _series_style(name, i)
        # a small offset along the log axis per series, so that error bars do not overlap
        lams = np.array([p[axis] for p in points]) * 10 ** (0.04 * (i - (count - 1) / 2))
        means = np.array([p["ci95"]["mean"] for p in points])
        lows = np.array(
            [p["ci95"]["low"] if p["ci95"]["low"] is not None else m for p, m in zip(points, means)]
        )
        highs = np.array(
            [
                p["ci95"]["high"] if p["ci95"]["high"] is not None else m
                for p, m in zip(points, means)
            ]
        )
        n = max(p["ci95"]["n"] for p in points)
        ax.errorbar(
            lams,
            means,
            yerr=[means - lows, highs - means],
            fmt=style,
            color=color,
            capsize=3,
            ms=5,
            label=f"{name} (n={n})",
        )
    ax.set_xscale("log")
    ax.set_xlabel(_AXIS_LABEL[axis])
    metric = curve["metric"].replace("final_eval_", "held-out ")
    ax.set_ylabel(f"{metric} (final epoch)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    what = "λ" if axis == "lam" else "target ratio"
    ax.set_title(f"Accuracy vs {what}: mean ± 95% CI over seeds", fontsize=10)
    return save_figure(fig, out_dir, "sweep_lambda_curve")


def penalty_ratio_curve(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """‖∇P‖/‖∇L_task‖ vs λ, or vs the target ratio (log-log): how strongly the penalty acts;
    the dotted line is the 1e-2 level below which it barely changes training; with target
    ratios, the dashed line is median = target."""
    curve = doc["curve"]
    axis = curve.get("axis", "lam")
    fig = Figure(figsize=(5.6, 3.9))
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(curve["series"].items()):
        style, color = _series_style(name, i)
        pts = [p for p in points if p["penalty_grad_ratio"]]
        if pts:
            ax.plot(
                [p[axis] for p in pts],
                [p["penalty_grad_ratio"] for p in pts],
                style,
                color=color,
                ms=5,
                label=name,
            )
    ax.axhline(1e-2, ls=":", color="k", lw=1)
    ax.annotate(
        "1e-2: penalty barely acts below",
        (0.02, 1e-2),
        xycoords=("axes fraction", "data"),
        va="bottom",
        fontsize=8,
    )
    if axis == "target_ratio":
        xs = sorted({p[axis] for points in curve["series"].values() for p in points})
        ax.plot(xs, xs, "--", color="0.4", lw=1, label="median = target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_AXIS_LABEL[axis])
    ax.set_ylabel("‖∇P‖ / ‖∇L_task‖ (median)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("Penalty gradient relative to the task gradient", fontsize=10)
    return save_figure(fig, out_dir, "sweep_penalty_ratio")
