"""Experiments: one or more runs into one output directory, then artefacts and figures.

Layout of an experiment directory::

    experiment.yaml              every run's resolved settings (checked by --resume)
    runs/{run}/                  config.yaml, checkpoint.pt, predictions.json, metrics.json,
                                 importances.json (FW-LoRA)
    metrics.json                 every run's metrics (per-epoch history included)
    aggregated_metrics.json      mean ± std over seeds per method / variant
    significance_tests.json      each method against plain LoRA
    figures/*.pdf, figures/*.png
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from fwlora.harness import artefacts, plots
from fwlora.harness.config import RunConfig, build_config, result_settings
from fwlora.harness.data import TASKS, TaskData, load_task
from fwlora.harness.errors import HarnessError
from fwlora.harness.models import resolve_model
from fwlora.harness.train import planned_run_name, train_run

PLAN_FILE = "experiment.yaml"


@dataclass
class Experiment:
    out_dir: Path
    runs: list[dict[str, Any]]
    run_dirs: dict[str, Path]
    aggregated: dict[str, Any]
    significance: dict[str, Any]
    figures: list[Path]


def prepare_output(out_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuses to reuse a non-empty directory unless --overwrite or --resume is given."""
    if overwrite and resume:
        raise HarnessError("--overwrite and --resume exclude each other")
    if out_dir.exists() and not out_dir.is_dir():
        raise HarnessError(f"output {out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if overwrite:
            if not (out_dir / PLAN_FILE).is_file():
                raise HarnessError(
                    f"output {out_dir}: not written by fwlora (no {PLAN_FILE}); refusing to "
                    "delete it with --overwrite, choose another --output"
                )
            shutil.rmtree(out_dir)
        elif not resume:
            raise HarnessError(
                f"output {out_dir}: already exists and is not empty; pass --overwrite to "
                "replace it, --resume to continue it, or choose another --output"
            )
    elif resume:
        raise HarnessError(f"output {out_dir}: nothing to resume (directory missing or empty)")
    out_dir.mkdir(parents=True, exist_ok=True)


def plan_compare(base: RunConfig, methods: list[str], seeds: list[int]) -> list[RunConfig]:
    """methods × seeds with otherwise identical settings."""
    return [base.replace(method=m, seed=s, variant=None) for m in methods for s in seeds]


def plan_sweep(
    base: RunConfig,
    seeds: list[int],
    ks: Sequence[int] = (300, 500, 800),
    lams: Sequence[float] = (5e-5, 1e-4, 2e-4, 5e-4),
    include_baseline: bool = True,
) -> list[RunConfig]:
    """The paper's ablations: K sweep (at base λ), λ sweep (at base K), no Fisher term
    (λ = 0: warm-up statistics only), plus the plain-LoRA baseline."""
    settings: list[tuple[int, float]] = [(k, base.fisher_lam) for k in ks]
    settings += [(base.fisher_warmup, lam) for lam in lams]
    variants: list[tuple[str, dict[str, Any]]] = []
    seen = set()
    for k, lam in settings:
        if (k, lam) in seen:
            continue
        seen.add((k, lam))
        variants.append((f"fw-lora-K{k}-lam{lam:g}", {"fisher_warmup": k, "fisher_lam": lam}))
    variants.append(("fw-lora-no-fisher-term", {"fisher_lam": 0.0}))
    configs = []
    for seed in seeds:
        if include_baseline:
            configs.append(base.replace(method="lora", seed=seed, variant=None))
        for label, changes in variants:
            configs.append(
                base.replace(
                    method="fw-lora",
                    seed=seed,
                    variant=label,
                    fisher_warmup_fraction=None,
                    **changes,
                )
            )
    return configs


def check_config(cfg: RunConfig) -> None:
    """Fails fast (before any directory is touched) on an unknown task or model."""
    if cfg.task not in TASKS:
        raise HarnessError(
            f"task: unknown task {cfg.task!r}; choose one of {', '.join(TASKS)} "
            "('file' reads --train-file/--eval-file: CSV, TSV, JSON, JSONL or parquet)"
        )
    if cfg.task == "file" and not cfg.train_file:
        raise HarnessError("task file: pass --train-file (and optionally --eval-file)")
    resolve_model(cfg.model)


def _data_key(cfg: RunConfig) -> tuple:
    return (
        cfg.task,
        cfg.train_file,
        cfg.eval_file,
        cfg.text_column,
        cfg.text_pair_column,
        cfg.label_column,
        cfg.max_train_samples,
        cfg.max_eval_samples,
        cfg.seed if cfg.task == "file" and not cfg.eval_file else None,
    )


def _check_plan(out_dir: Path, configs: list[RunConfig], resume: bool) -> None:
    plan = [result_settings(c) for c in configs]
    path = out_dir / PLAN_FILE
    if resume and path.is_file():
        saved = yaml.safe_load(path.read_text())
        if saved.get("runs") != plan:
            raise HarnessError(
                f"output {out_dir}: --resume needs the same settings as the interrupted "
                f"experiment (see {path}); use --overwrite or another --output to start afresh"
            )
    path.write_text(yaml.safe_dump({"runs": plan}, sort_keys=False))


def run_experiment(
    configs: list[RunConfig],
    out_dir: Path,
    overwrite: bool = False,
    resume: bool = False,
    n_resamples: int = 9999,
) -> Experiment:
    """Trains every config (skipping finished runs on --resume), then writes artefacts."""
    if not configs:
        raise HarnessError("nothing to run")
    labels = [(c.label, c.seed) for c in configs]
    if len(set(labels)) != len(labels):
        raise HarnessError("two runs share a method/variant and seed; give distinct seeds")
    for cfg in configs:
        check_config(cfg)
    data_cache: dict[tuple, TaskData] = {}
    for cfg in configs:  # data errors surface before the output directory is touched
        if _data_key(cfg) not in data_cache:
            data_cache[_data_key(cfg)] = load_task(cfg)
    out_dir = Path(out_dir)
    prepare_output(out_dir, overwrite, resume)
    _check_plan(out_dir, configs, resume)
    quiet = all(c.quiet for c in configs)
    runs: list[dict[str, Any]] = []
    run_dirs: dict[str, Path] = {}
    names = [planned_run_name(c) for c in configs]
    for name, cfg in zip(tqdm(names, desc="runs", disable=quiet or len(configs) == 1), configs):
        slot = out_dir / "runs" / name
        finished = _finished_run(slot)
        if resume and finished is not None:
            metrics = finished
        else:
            metrics = train_run(cfg, slot, data_cache[_data_key(cfg)], resume=resume)
        runs.append(metrics)
        run_dirs[metrics["run"]] = slot
    return write_experiment(out_dir, runs, run_dirs, n_resamples)


def _finished_run(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("status") == "complete" else None


def write_experiment(
    out_dir: Path, runs: list[dict[str, Any]], run_dirs: dict[str, Path], n_resamples: int = 9999
) -> Experiment:
    """metrics.json, aggregated_metrics.json, significance_tests.json and the figures."""
    aggregated = artefacts.aggregate(runs)
    significance = artefacts.significance(runs, run_dirs, n_resamples=n_resamples)
    artefacts.write_json(out_dir / "metrics.json", artefacts.metrics_document(runs))
    artefacts.write_json(out_dir / "aggregated_metrics.json", aggregated)
    artefacts.write_json(out_dir / "significance_tests.json", significance)
    figures = plots.all_plots(runs, out_dir / "figures")
    return Experiment(out_dir, runs, run_dirs, aggregated, significance, figures)


def load_experiment(out_dir: Path) -> Experiment:
    """A finished experiment directory read back (for `fwlora report`)."""
    out_dir = Path(out_dir)
    names = ("metrics.json", "aggregated_metrics.json", "significance_tests.json")
    missing = [n for n in names if not (out_dir / n).is_file()]
    if missing:
        raise HarnessError(
            f"{out_dir}: not a finished experiment directory (missing {', '.join(missing)}); "
            "give directories written by `fwlora train`, `compare`, `sweep` or `demo`"
        )
    runs = list(json.loads((out_dir / "metrics.json").read_text())["runs"].values())
    run_dirs = {}
    for slot in sorted((out_dir / "runs").glob("*")):
        m = _finished_run(slot)
        if m is not None:
            run_dirs[m["run"]] = slot
    return Experiment(
        out_dir,
        runs,
        run_dirs,
        json.loads((out_dir / "aggregated_metrics.json").read_text()),
        json.loads((out_dir / "significance_tests.json").read_text()),
        sorted((out_dir / "figures").glob("*")),
    )


def summary_table(exp: Experiment) -> str:
    """Plain-text table of the aggregated metrics and the significance tests."""
    rows = [
        (
            "method",
            "seeds",
            "best acc",
            "final acc",
            "final F1",
            "final MCC",
            "runtime s",
            "trainable",
        )
    ]
    for label, g in exp.aggregated["groups"].items():
        m = g["metrics"]
        rows.append(
            (
                label,
                str(len(g["seeds"])),
                m["best_eval_acc"]["display"],
                m["final_eval_acc"]["display"],
                m["final_eval_f1"]["display"],
                m["final_eval_mcc"]["display"],
                f"{m['runtime_sec']['mean']:.1f}",
                f"{g['trainable_params']:,}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for comp in exp.significance["comparisons"]:
        ci = comp["bootstrap_ci"]
        mc = ", ".join(
            f"seed {p['seed']}: b={p['mcnemar']['b']} c={p['mcnemar']['c']} "
            f"p={p['mcnemar']['p_value']:.3g}"
            for p in comp["per_seed"]
        )
        lines.append(
            f"{comp['method']} − {comp['baseline']}: Δacc {ci['estimate']:+.4f} "
            f"(95% CI {ci['low']:+.4f} … {ci['high']:+.4f}); McNemar {mc}"
        )
    return "\n".join(lines)


def config_from(file: str | None, overrides: dict[str, Any]) -> RunConfig:
    from fwlora.harness.config import read_config_file

    layer = read_config_file(file) if file else {}
    layer = {k: v for k, v in layer.items() if k not in ("methods", "seeds")}
    return build_config(layer, overrides)
