"""Experiments: one or more runs into one output directory, then artefacts and figures.

Layout of an experiment directory::

    fwlora-output.json           the marker: fwlora wrote this folder (--overwrite/--resume)
    experiment.yaml              every run's resolved settings (checked by --resume)
    runs/{run}/                  config.yaml, checkpoint.pt, predictions.json, metrics.json,
                                 fwlora_importance.json (FW-LoRA)
    metrics.json                 every run's metrics (per-epoch history included)
    aggregated_metrics.json      mean ± std over seeds per method / variant
    significance_tests.json      each method against plain LoRA
    figures/*.pdf, figures/*.png

The folder is written elsewhere first and moved into place (see `output`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fwlora.harness import artefacts, plots
from fwlora.harness.config import (
    LIST_KEYS,
    NON_RESULT_KEYS,
    SETTING_FORMAT,
    RunConfig,
    build_config,
    result_settings,
    with_added_settings,
)
from fwlora.harness.data import TaskData
from fwlora.harness.errors import HarnessError, Interrupted, environment_error, read_saved
from fwlora.harness.output import Staging, check_output
from fwlora.harness.preflight import data_key, preflight
from fwlora.harness.progress import say, steps
from fwlora.harness.run_metrics import METRICS_FILE, RunMetrics, decode_runs, read_run
from fwlora.harness.stats import DEFAULT_MARGIN
from fwlora.harness.train import penalty_message, planned_run_name, train_run

PLAN_FILE = "experiment.yaml"
# The commands' defaults (their --help shows them from here): `fwlora compare`'s methods
# and seeds; `fwlora ablation`'s K and λ sweeps (its seeds: config.DEFAULT_SEEDS).
COMPARE_METHODS = ("lora", "fw-lora", "adalora")
COMPARE_SEEDS = (42, 43, 44)
ABLATION_KS = (300, 500, 800)
ABLATION_LAMS = (5e-5, 1e-4, 2e-4, 5e-4)


@dataclass
class Experiment:
    out_dir: Path
    runs: list[RunMetrics]
    run_dirs: dict[str, Path]
    aggregated: dict[str, Any]
    significance: dict[str, Any]
    figures: list[Path]


def plan_compare(base: RunConfig, methods: list[str], seeds: list[int]) -> list[RunConfig]:
    """methods × seeds with otherwise identical settings."""
    return [base.replace(method=m, seed=s, variant=None) for m in methods for s in seeds]


def _lam_text(lam: float | str) -> str:
    return lam if isinstance(lam, str) else f"{lam:g}"


def plan_sweep(
    base: RunConfig,
    seeds: list[int],
    ks: Sequence[int] = ABLATION_KS,
    lams: Sequence[float] = ABLATION_LAMS,
    include_baseline: bool = True,
) -> list[RunConfig]:
    """The paper's ablations: K sweep (at base λ), λ sweep (at base K), no Fisher term
    (λ = 0: warm-up statistics only), plus the plain-LoRA baseline."""
    settings: list[tuple[int, float | str]] = [(k, base.fisher_lam) for k in ks]
    settings += [(base.fisher_warmup, lam) for lam in lams]
    variants: list[tuple[str, dict[str, Any]]] = []
    seen = set()
    for k, lam in settings:
        if (k, lam) in seen:
            continue
        seen.add((k, lam))
        changes: dict[str, Any] = {"fisher_warmup": k, "fisher_lam": lam}
        if lam != "auto":  # a λ given by hand has no target ratio
            changes["fisher_target_ratio"] = None
        variants.append((f"fw-lora-K{k}-lam{_lam_text(lam)}", changes))
    variants.append(("fw-lora-no-fisher-term", {"fisher_lam": 0.0, "fisher_target_ratio": None}))
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


# experiment.yaml's format. Format 2 ends with a `format` line, so a copy cut short reads as
# format 1, whose runs never hold a setting added since (ADDED_SETTINGS); format 3 added
# trainable_modules (SETTING_FORMAT says which format first wrote each setting).
PLAN_FORMAT = 3


def plan_text(runs: list[dict[str, Any]], **extra: Any) -> str:
    """experiment.yaml: `extra` (e.g. merged_from), every run's settings, the format last."""
    return yaml.safe_dump({**extra, "runs": runs, "format": PLAN_FORMAT}, sort_keys=False)


def _read_plan(path: Path) -> list[dict[str, Any]]:
    """The runs of a saved plan as this version writes them (an earlier format gains the
    settings added since, at the value its runs used); ValueError for a damaged or truncated
    file."""
    saved = dict(yaml.safe_load(path.read_text(encoding="utf-8-sig")))
    fmt = saved.get("format", 1)
    if fmt not in range(1, PLAN_FORMAT + 1):
        raise HarnessError(
            f"{path}: plan format {fmt!r}, written by a newer fwlora (this one reads formats "
            f"1 to {PLAN_FORMAT}); resume it with that version, or use --overwrite or "
            "another --output"
        )
    expected = {f.name for f in dataclasses.fields(RunConfig)} - NON_RESULT_KEYS
    later_keys = {k for k, first in SETTING_FORMAT.items() if first > fmt}
    runs = []
    for i, run in enumerate(saved["runs"], 1):
        run = dict(run)
        if fmt == 1:  # no format line: a later setting means the file was cut short
            later = sorted(set(run) & later_keys)
            if later:
                raise ValueError(f"run {i} has {', '.join(later)} but the file has no format line")
        if fmt < PLAN_FORMAT:
            run = with_added_settings(run)
        missing = sorted(expected - set(run))
        if missing:
            raise ValueError(
                f"run {i} lacks {', '.join(missing)} (cut short, or written by an older fwlora)"
            )
        runs.append(run)
    return runs


def _plan_difference(saved: list[dict[str, Any]], given: list[dict[str, Any]]) -> str:
    """Which settings differ between a saved plan and the one given, in words."""
    if len(saved) != len(given):
        return f"{len(saved)} runs were planned, {len(given)} are given now"
    differ: dict[str, tuple[Any, Any]] = {}
    for old, new in zip(saved, given):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key) and key not in differ:
                differ[key] = (old.get(key), new.get(key))
    if not differ:
        return "the runs are in another order"
    shown = [f"{k}: {a!r} then, {b!r} now" for k, (a, b) in list(differ.items())[:4]]
    more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
    return "; ".join(shown) + more


def _check_plan(out_dir: Path, configs: list[RunConfig], resume: bool) -> None:
    plan = [result_settings(c) for c in configs]
    path = out_dir / PLAN_FILE
    if resume and path.is_file():
        fix = "restore it, or delete it to continue with the settings given now"
        saved = read_saved(path, _read_plan, fix)
        if saved != plan:
            raise HarnessError(
                f"output {out_dir}: --resume needs the same settings as the interrupted "
                f"experiment ({_plan_difference(saved, plan)}; see {path}); use --overwrite or "
                "another --output to start afresh"
            )
    path.write_text(plan_text(plan))


def run_experiment(
    configs: list[RunConfig],
    out_dir: Path,
    overwrite: bool = False,
    resume: bool = False,
    n_resamples: int = artefacts.N_RESAMPLES,
    margin: float = DEFAULT_MARGIN,
) -> Experiment:
    """Trains every config (skipping finished runs on --resume), then writes artefacts.

    Everything is checked before the disk is touched; the experiment is written in a
    temporary folder moved to `out_dir` at the end (see `fwlora.harness.output`)."""
    if not configs:
        raise HarnessError("nothing to run")
    labels = [(c.label, c.seed) for c in configs]
    if len(set(labels)) != len(labels):
        raise HarnessError("two runs share a method/variant and seed; give distinct seeds")
    data = preflight(configs)
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite, resume)
    staging = Staging(out_dir, resume)
    if staging.adopted is not None:
        say(f"resuming the run killed while writing {staging.adopted.name} (moved to {out_dir})")
    try:
        _check_plan(staging.path, configs, resume)
        runs, run_dirs = _train_all(configs, staging.path, data, resume)
        exp = write_experiment(staging.path, runs, run_dirs, n_resamples, margin)
    except BaseException as exc:
        _stopped_early(staging, exc)
        raise
    staging.commit()
    return moved_to(exp, staging.path, out_dir)


def _train_all(
    configs: list[RunConfig], out_dir: Path, data: dict[tuple, TaskData], resume: bool
) -> tuple[list[RunMetrics], dict[str, Path]]:
    quiet = all(c.quiet for c in configs) or len(configs) == 1
    runs: list[RunMetrics] = []
    run_dirs: dict[str, Path] = {}
    names = [planned_run_name(c) for c in configs]
    for name, cfg in steps(list(zip(names, configs)), desc="runs", quiet=quiet, unit="run"):
        slot = out_dir / "runs" / name
        finished = finished_run(slot)
        if resume and finished is not None:
            metrics = finished
        else:
            metrics = train_run(cfg, slot, data[data_key(cfg)], resume=resume)
        runs.append(metrics)
        run_dirs[metrics.run] = slot
    return runs, run_dirs


def _stopped_early(staging: Staging, exc: BaseException) -> None:
    """Keeps what an interrupted or failed experiment finished (for --resume), removes the
    rest, and says so truly: an Interrupted for Ctrl-C, a note on any other error."""
    kept = staging.kept()
    problem = environment_error(exc)
    if problem is not None:  # a full disk, a quota...: one line that says what was kept
        left = (
            f"{kept.describe()}; continue with the same settings and --resume once that is fixed"
            if kept is not None
            else staging.nothing_kept()
        )
        raise HarnessError(f"{problem}; {left}") from None
    if isinstance(exc, KeyboardInterrupt):
        if kept is None:
            message = (
                f"no epoch had finished, so no checkpoint was written; {staging.nothing_kept()}"
            )
        else:
            how = "the same command" if staging.resume else "the same settings"
            message = f"{kept.describe()}; continue with {how} and --resume"
            if kept.replaced:
                message += " (instead of --overwrite)"
        raise Interrupted(message) from exc
    if kept is not None and not staging.resume:
        # Work was moved into place: say so (the caller reports the error itself).
        print(
            f"fwlora: stopped by an error; {kept.describe()}; continue with the same settings "
            "and --resume",
            file=sys.stderr,
        )


def moved_to(exp: Experiment, old: Path, new: Path) -> Experiment:
    """`exp` with its paths in `old` (the staging folder) moved to `new`."""
    if old == new:
        return exp

    def move(path: Path) -> Path:
        return new / path.relative_to(old)

    return dataclasses.replace(
        exp,
        out_dir=new,
        run_dirs={k: move(v) for k, v in exp.run_dirs.items()},
        figures=[move(f) for f in exp.figures],
    )


def finished_run(run_dir: Path) -> RunMetrics | None:
    """The metrics of a finished run in `run_dir` (None: absent or unfinished); a damaged
    file is one HarnessError line naming it."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    return read_saved(path, read_run, f"delete the run folder {run_dir} to train that run again")


def _artefact(path: Path, check: Any = None) -> Any:
    def parse(p: Path) -> Any:
        doc = json.loads(p.read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        return check(doc) if check is not None else doc

    return read_saved(path, parse, "write it again with --resume (same settings)")


def _metrics_runs(doc: dict[str, Any]) -> list[RunMetrics]:
    runs = doc.get("runs")
    if not isinstance(runs, dict):
        raise ValueError("expected 'runs': an object of run metrics")
    return decode_runs(runs.values())


def _aggregated(doc: dict[str, Any]) -> dict[str, Any]:
    groups = doc.get("groups", {})
    if not isinstance(groups, dict) or not all(
        isinstance(g, dict)
        and isinstance(g.get("metrics"), dict)
        and isinstance(g.get("seeds"), list)
        for g in groups.values()
    ):
        raise ValueError("expected 'groups': per label an object with seeds and metrics")
    return doc


def _significance(doc: dict[str, Any]) -> dict[str, Any]:
    comparisons = doc.get("comparisons", [])
    if not isinstance(comparisons, list) or not all(isinstance(c, dict) for c in comparisons):
        raise ValueError("expected 'comparisons': a list of objects")
    return doc


def write_experiment(
    out_dir: Path,
    runs: list[RunMetrics],
    run_dirs: dict[str, Path],
    n_resamples: int = artefacts.N_RESAMPLES,
    margin: float = DEFAULT_MARGIN,
) -> Experiment:
    """metrics.json, aggregated_metrics.json, significance_tests.json and the figures."""
    aggregated = artefacts.aggregate(runs)
    significance = artefacts.significance(runs, run_dirs, n_resamples=n_resamples, margin=margin)
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
    runs = _artefact(out_dir / "metrics.json", _metrics_runs)
    run_dirs = {}
    for slot in sorted((out_dir / "runs").glob("*")):
        m = finished_run(slot)
        if m is not None:
            run_dirs[m.run] = slot
    return Experiment(
        out_dir,
        runs,
        run_dirs,
        _artefact(out_dir / "aggregated_metrics.json", _aggregated),
        _artefact(out_dir / "significance_tests.json", _significance),
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
            "macro-F1",
            "recall/class",
            "final MCC",
            "runtime s",
            "trainable",
            "‖∇P‖/‖∇L‖",
        )
    ]
    ratios = _penalty_ratios(exp.runs)
    for label, g in exp.aggregated["groups"].items():
        m = g["metrics"]
        ratio = ratios.get(label)
        rows.append(
            (
                label,
                str(len(g["seeds"])),
                m["best_eval_acc"]["display"],
                m["final_eval_acc"]["display"],
                m["final_eval_f1"]["display"],
                m["final_eval_macro_f1"]["display"] if "final_eval_macro_f1" in m else "-",
                (g.get("final_eval_recall") or {}).get("display", "-"),
                m["final_eval_mcc"]["display"],
                f"{m['runtime_sec']['mean']:.1f}",
                f"{g['trainable_params']:,}",
                "-" if ratio is None else f"{ratio:.2g}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += _penalty_notes(exp.runs, ratios)
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


def _penalty_ratios(runs: list[RunMetrics]) -> dict[str, float]:
    """Per label: the median over its runs of each run's median ‖∇P‖/‖∇L_task‖."""
    found: dict[str, list[float]] = {}
    for run in runs:
        ratio = run.fisher.penalty_grad_ratio if run.fisher else None
        if ratio is not None:
            found.setdefault(run.label, []).append(ratio)
    return {label: float(np.median(values)) for label, values in found.items()}


def _penalty_notes(runs: list[RunMetrics], ratios: dict[str, float]) -> list[str]:
    """Plain warnings: a penalty too weak to change training; a K that no run reached."""
    lines = []
    for label, ratio in ratios.items():
        # λ in effect (the calibrated one with fisher_lam "auto")
        fisher = next(r.fisher for r in runs if r.label == label)
        message = penalty_message(ratio, fisher.lam if fisher else None)
        if message:
            lines.append(f"note: {label}: {message}")
    for run in runs:
        k = run.fisher.warmup_steps if run.fisher else None
        if k is not None and k >= run["total_steps"]:
            lines.append(
                f"note: {run.run}: K={k} >= its {run.total_steps} steps: FW-LoRA never left "
                "warm-up, the penalty was never applied (= plain LoRA)"
            )
    return lines


def config_from(file: str | None, overrides: dict[str, Any]) -> RunConfig:
    from fwlora.harness.config import read_config_file

    layer = read_config_file(file) if file else {}
    layer = {k: v for k, v in layer.items() if k not in LIST_KEYS}
    return build_config(layer, overrides)
