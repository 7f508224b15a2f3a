"""`fwlora merge`: several finished experiments as one (e.g. a sweep split by seeds over
processes or machines), so that aggregation, the significance tests, the λ curve and the
report see every seed together.

An input may be an experiment that stopped early (or is still running): its finished runs
(`runs/*/metrics.json` with status complete) are taken, the others left out. The runs must
be disjoint (no run name twice), agree on every result-relevant setting except the seed
within each label, and on every setting but the seed, the method and its own options
(fisher_*, adalora_*) and on the data across labels; anything else is refused, naming every
differing setting. The merged
folder holds a copy of each run folder (without its checkpoint) and is written like any
experiment: in a temporary folder beside OUT, moved into place at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fwlora.harness import methods
from fwlora.harness.checkpoint import CHECKPOINT
from fwlora.harness.config import NON_RESULT_KEYS, with_added_settings
from fwlora.harness.errors import HarnessError
from fwlora.harness.experiment import (
    PLAN_FILE,
    Experiment,
    finished_run,
    moved_to,
    plan_text,
    write_experiment,
)
from fwlora.harness.output import MARKER, Staging, check_output, written_by_fwlora
from fwlora.harness.run_metrics import RunMetrics
from fwlora.harness.stats import DEFAULT_MARGIN
from fwlora.harness.sweep import write_sweep

# Settings that may differ between the merged runs of one label.
PER_RUN_KEYS = NON_RESULT_KEYS | {"seed"}


# What identifies a run's data (the label counts of a split drawn by seed may differ).
DATA_KEYS = ("task", "source", "label_names", "train_examples", "eval_examples")


def _settings(run: RunMetrics) -> dict[str, Any]:
    saved = with_added_settings(run.config or {})  # runs written before a setting existed
    return {k: v for k, v in saved.items() if k not in PER_RUN_KEYS}


def _method_specific(key: str) -> bool:
    """The method and its own options (each method's settings prefix: fisher_, adalora_)."""
    return key in ("method", "variant") or key.startswith(methods.settings_prefixes())


def _shared(run: RunMetrics) -> dict[str, Any]:
    """The settings every run of one experiment shares (the report says so): all but the
    seed, the method and its own options; and the data the runs were evaluated on."""
    shared = {k: v for k, v in _settings(run).items() if not _method_specific(k)}
    shared["data"] = {k: (run.data or {}).get(k) for k in DATA_KEYS}
    return shared


def _differences(ref: dict[str, Any], other: dict[str, Any], where: tuple[Path, Path]) -> str:
    """'lr' (0.0002 in a, 0.001 in b), 'epochs' (...): every differing setting."""
    keys = sorted(k for k in ref.keys() | other.keys() if ref.get(k) != other.get(k))
    return ", ".join(
        f"{k!r} ({ref.get(k)!r} in {where[0]}, {other.get(k)!r} in {where[1]})" for k in keys
    )


def _check_shared(sources: list[tuple[Path, Experiment]]) -> None:
    """Every run of every input shares the settings beyond the seed and the method's own."""
    ref_folder, ref_exp = sources[0]
    ref = _shared(ref_exp.runs[0])
    for folder, exp in sources:
        for run in exp.runs:
            differ = _differences(ref, _shared(run), (ref_folder, folder))
            if differ:
                own = ", ".join(f"{p}*" for p in methods.settings_prefixes())
                raise HarnessError(
                    f"the experiments differ in {differ}; merged runs may differ only in the "
                    f"seed and the method with its own options ({own}): merge "
                    "experiments run with the same settings"
                )


def _finished_runs(folder: Path) -> Experiment:
    """The finished runs of an experiment folder fwlora wrote (finished or not)."""
    if not written_by_fwlora(folder):
        raise HarnessError(f"{folder}: not an experiment folder written by fwlora (no {MARKER})")
    runs, run_dirs = [], {}
    for slot in sorted((folder / "runs").glob("*")):
        metrics = finished_run(slot)
        if metrics is not None:
            runs.append(metrics)
            run_dirs[metrics.run] = slot
    if not runs:
        raise HarnessError(f"{folder}: no finished run")
    return Experiment(folder, runs, run_dirs, {}, {}, [])


def _order(run: RunMetrics) -> tuple:
    """Seed, then a sweep's plan order: the methods' `order` (lora, fw-lora (sum, max),
    l2-lora, adalora; a method this version does not know last); by λ."""
    config = run.config or {}
    norm = {"sum": 0, "max": 1}.get(config.get("fisher_normalization") or "", 2)
    lam = config.get("fisher_lam", 0.0) if methods.is_fisher(run.method) else 0.0
    # λ by hand, then λ = "auto" by target ratio
    strength = (1, config.get("fisher_target_ratio") or 0.0) if lam == "auto" else (0, lam)
    method = methods.lookup(run.method)
    order = method.order if method else len(methods.names())
    return (run.seed, order, norm, strength, run.label)


def _check_runs(sources: list[tuple[Path, Experiment]]) -> None:
    seen: dict[str, Path] = {}
    reference: dict[str, tuple[dict[str, Any], Path]] = {}
    for folder, exp in sources:
        for run in exp.runs:
            if run.run in seen:
                raise HarnessError(
                    f"run {run.run} is in both {seen[run.run]} and {folder}; "
                    "merge experiments with distinct seeds"
                )
            seen[run.run] = folder
            if run.run not in exp.run_dirs:
                raise HarnessError(f"{folder}: run {run.run} has no run folder")
            settings = _settings(run)
            label = run.label
            if label not in reference:
                reference[label] = (settings, folder)
                continue
            ref, ref_folder = reference[label]
            differ = _differences(ref, settings, (ref_folder, folder))
            if differ:
                raise HarnessError(f"{label} runs differ in {differ}; only the seed may differ")


def merge_experiments(
    dirs: Sequence[str | Path],
    out_dir: str | Path,
    overwrite: bool = False,
    margin: float = DEFAULT_MARGIN,
) -> tuple[Experiment, str]:
    """One experiment in `out_dir` from the finished experiments in `dirs`; returns it and
    the sweep's terminal text ("" without fw-lora / l2-lora runs)."""
    if len(dirs) < 2:
        raise HarnessError("give at least two experiment folders")
    out_dir = Path(out_dir)
    sources = [(Path(d), _finished_runs(Path(d))) for d in dirs]
    if any(folder.resolve() == out_dir.resolve() for folder, _ in sources):
        raise HarnessError(f"-o {out_dir} is one of the inputs; choose another -o")
    _check_runs(sources)
    _check_shared(sources)
    check_output(out_dir, overwrite, False)
    staging = Staging(out_dir, False)
    try:
        runs, run_dirs = [], {}
        for _, exp in sources:
            for run in exp.runs:
                target = staging.path / "runs" / exp.run_dirs[run.run].name
                shutil.copytree(
                    exp.run_dirs[run.run], target, ignore=shutil.ignore_patterns(CHECKPOINT)
                )
                runs.append(run)
                run_dirs[run.run] = target
        runs.sort(key=_order)
        plan = [
            {
                k: v
                for k, v in with_added_settings(r.config or {}).items()
                if k not in NON_RESULT_KEYS
            }
            for r in runs
        ]
        merged_from = [str(folder) for folder, _ in sources]
        (staging.path / PLAN_FILE).write_text(plan_text(plan, merged_from=merged_from))
        exp = write_experiment(staging.path, runs, run_dirs, margin=margin)
        text = write_sweep(staging.path, margin)
    except BaseException:
        staging.discard()
        raise
    staging.commit()
    return moved_to(exp, staging.path, out_dir), text
