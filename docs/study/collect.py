"""Copies what round 2 of the study has finished so far into docs/study/data/round2/:

    bind_metrics.json   every finished run of runs/bind (the penalty where it binds)
    targeting.json      the premise test's document over its finished runs (runs/premise2,
                        premise2-x: seeds 11-14; premise2-pw, premise2-pw-b: per weight),
                        with every seed's F_m and every arm's set, size, steps, accuracy,
                        macro-F1, recall and confusion matrix
    warmups.json        each seed's warm-up F_m (deterministic; cached here so a partial
                        document does not recompute them)

    python docs/study/collect.py [PART_FOLDER ...]   # from the repository root

A part still running lives in runs/.NAME.fwlora-*; a finished one in runs/NAME. The premise
test writes targeting.json only when all its runs are done, so while it runs the document is
rebuilt here from its plan (experiment.yaml), the warm-ups and the finished runs; the sets the
warm-ups choose are checked against the plan's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from fwlora.harness import targeting
from fwlora.harness.config import build_config, with_added_settings
from fwlora.harness.preflight import data_key, preflight

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "study" / "data" / "round2"


def part(name: str) -> Path | None:
    """The folder of part `name` holding its runs (finished, or still running)."""
    for folder in [ROOT / "runs" / name, *sorted((ROOT / "runs").glob(f".{name}.fwlora-*"))]:
        if "fwlora-old-" not in folder.name and (folder / "experiment.yaml").is_file():
            return folder
    return None


def finished(folder: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(folder.glob("runs/*/metrics.json")):
        run = json.loads(path.read_text())
        if run.get("status") == "complete":
            runs.append(run)
    return runs


def collect_bind(folders: list[Path]) -> int:
    """Every finished run of the bind parts, once (a run of the same name in two parts is the
    same configuration and seed: the first part's copy is kept)."""
    runs: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for run in finished(folder):
            runs.setdefault(run["run"], run)
    doc = {"schema": "fwlora.metrics/1", "runs": dict(sorted(runs.items()))}
    (OUT / "bind_metrics.json").write_text(json.dumps(doc) + "\n")
    return len(runs)


def _warmups(base: Any, data: Any, seeds: list[int]) -> dict[int, dict[str, float]]:
    """Each seed's warm-up F_m, from the cache (computed and cached when missing)."""
    cache = OUT / "warmups.json"
    fisher = (
        {int(s): f for s, f in json.loads(cache.read_text()).items()} if cache.is_file() else {}
    )
    for seed in seeds:
        if seed not in fisher:
            print(f"warm-up seed {seed}", flush=True)
            fisher[seed] = targeting.warmup_fisher(base.replace(seed=seed), data)
            cache.write_text(json.dumps({str(s): f for s, f in sorted(fisher.items())}) + "\n")
    return fisher


def collect_premise(folders: list[Path]) -> int:
    """One targeting.json over every part of the premise test (both rankings, all seeds),
    rebuilt from the parts' plans, the warm-ups and the finished runs (a run done by two
    parts is the same run, kept once). A (seed, ranking) no part planned has its sets drawn
    (they depend only on the warm-up) and no finished run: it is left out of the tests and
    counted in `seeds_complete`."""
    plan = [
        run
        for folder in folders
        for run in yaml.safe_load((folder / "experiment.yaml").read_text())["runs"]
    ]
    first = with_added_settings(plan[0])
    k = len(first["trainable_modules"])
    labels = {run["variant"] for run in plan}
    rank_by = [r for r in targeting.RANKINGS if any(label.endswith(f"-{r}") for label in labels)]
    base = build_config(
        {key: v for key, v in first.items() if key not in ("trainable_modules", "variant")}
    )
    data = preflight([base])[data_key(base)]
    matrices = targeting.adaptable_matrices(base, data.num_labels)
    seeds = sorted({run["seed"] for run in plan})
    fisher = _warmups(base, data, seeds)
    draws = {}
    planned = {(run["variant"], run["seed"]): sorted(run["trainable_modules"]) for run in plan}
    for seed in seeds:
        for ranking in rank_by:
            score = targeting.scores(fisher[seed], matrices, ranking)
            draw = targeting.choose_sets(score, matrices, k, base.rank, seed)
            for which, names in draw.sets().items():
                label = targeting.set_label(which, k, ranking)
                if planned.get((label, seed), sorted(names)) != sorted(names):
                    raise SystemExit(f"seed {seed} {label}: the warm-up chose other matrices")
            draws[(seed, ranking)] = draw
    fisher_plan = targeting.Plan(k, rank_by, matrices, {s: fisher[s] for s in seeds}, draws, [])
    runs: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for run in finished(folder):
            runs.setdefault(run["run"], run)
    doc = targeting.analyse(fisher_plan, list(runs.values()))
    unique_plan = {(run["variant"], run["seed"]) for run in plan}
    if len(runs) < len(unique_plan):
        doc["partial"] = {"finished_runs": len(runs), "planned_runs": len(unique_plan)}
    (OUT / "targeting.json").write_text(json.dumps(doc, indent=1) + "\n")
    return len(runs)


def main(argv: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    binds = [f for f in (part("bind"), part("bind-b")) if f is not None]
    if binds:
        names = ", ".join(f.name for f in binds)
        print(f"bind: {collect_bind(binds)} finished runs from {names}")
    premises = [
        f
        for f in (part(n) for n in ("premise2", "premise2-x", "premise2-pw", "premise2-pw-b"))
        if f is not None
    ]
    if premises:
        names = ", ".join(f.name for f in premises)
        print(f"premise: {collect_premise(premises)} finished runs from {names}")


if __name__ == "__main__":
    main(sys.argv[1:])
