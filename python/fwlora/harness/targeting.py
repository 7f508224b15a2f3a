"""The premise test (`fwlora targeting`): do the warm-up Fisher scores F_m say where LoRA
capacity matters, beyond "big, late matrices"?

For each seed: a K-step FW-LoRA warm-up (the exact statistic, the run's own data order,
initialisation and schedule) gives F_m for every adaptable matrix; the matrices are ranked
by F_m (`fisher`) or by F_m / (in · out) (`per-weight`, since F_m grows with a matrix's
size); then fresh plain-LoRA models are trained on only k of them:

* TOP-k: the k highest-ranked matrices;
* BOTTOM-k: the k lowest;
* RANDOM-k: k matrices drawn at random until their LoRA parameter count is within 5 % of
  TOP-k's (so "more parameters" cannot pass for "better matrices").

The three models of a seed share the seed (initialisation, batch order): they are paired,
and TOP − RANDOM and TOP − BOTTOM are tested with a paired t-test and a Wilcoxon
signed-rank test over seeds. Everything is trained through `run_experiment`, so the output
folder is an ordinary experiment (report, merge, --resume) plus `targeting.json` and its
figure. On --resume the warm-ups are recomputed (they are deterministic) and the experiment's
saved plan checks that they chose the same matrices.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fwlora.harness import budget, stats
from fwlora.harness.config import RunConfig
from fwlora.harness.data import TaskData
from fwlora.harness.errors import HarnessError
from fwlora.harness.plots import module_position

RANKINGS = ("fisher", "per-weight")
SETS = ("top", "random", "bottom")
TOLERANCE = 0.05  # RANDOM-k's LoRA parameters within 5 % of TOP-k's
DRAWS = 20000  # random draws tried per seed before giving up
TARGETING_FILE = "targeting.json"
TARGETING_SCHEMA = "fwlora.targeting/1"
FIGURE_STEM = "targeting_accuracy"
PEFT_PREFIX = "base_model.model."


# ------------------------------------------------------------------ checks
def resolve_k(k: int | None, fraction: float | None, matrices: int) -> int:
    """k from --k or --fraction, checked against the adaptable matrices."""
    if (k is None) == (fraction is None):
        raise HarnessError("targeting: give exactly one of --k and --fraction")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise HarnessError(f"fraction: expected a number in (0, 1), got {fraction!r}")
        k = max(1, round(fraction * matrices))
    assert k is not None
    if k < 1:
        raise HarnessError(f"k: expected an integer >= 1, got {k}")
    if k > matrices:
        raise HarnessError(f"k: {k} is more than the {matrices} adaptable matrices")
    if matrices < 2 * k:
        raise HarnessError(
            f"k: TOP-{k} and BOTTOM-{k} need at least {2 * k} adapted matrices, this model and "
            f"target_modules have {matrices}; lower k (at most {matrices // 2})"
        )
    return k


def rankings(text: str | list[str] | None) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text or ["fisher"])
    items = [i.strip() for i in items]
    bad = [i for i in items if i not in RANKINGS]
    if bad or not items or len(set(items)) != len(items):
        raise HarnessError(
            f"rank_by: expected comma-separated, distinct values from {', '.join(RANKINGS)}, "
            f"got {text!r}"
        )
    return items


def adaptable_matrices(cfg: RunConfig, num_labels: int) -> list[budget.TargetLinear]:
    """The matrices cfg.target_modules selects, from the model built on the meta device."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from fwlora.harness.models import resolve_model

    source, _ = resolve_model(cfg.model)
    config = AutoConfig.from_pretrained(source, num_labels=num_labels)
    with torch.device("meta"):
        skeleton = AutoModelForSequenceClassification.from_config(config)
    return budget.target_linears(skeleton, list(cfg.target_modules))


# ------------------------------------------------------------------ warm-up and ranking
def warmup_fisher(cfg: RunConfig, data: TaskData) -> dict[str, float]:
    """F_m after FW-LoRA's K-step warm-up, as a fw-lora run of `cfg` measures it: the run's
    own set-up (seed, initialisation, optimizer, schedule) and batch order, stopped after
    step K; keyed by the backbone's module names."""
    import tempfile

    from fwlora.harness.resources import cpu_threads
    from fwlora.harness.train import _setup, _train_step

    cfg = cfg.replace(method="fw-lora", variant=None)
    with cpu_threads(cfg.num_threads), tempfile.TemporaryDirectory() as scratch:
        run = _setup(cfg, Path(scratch), data)  # writes only config.yaml, in scratch
        assert run.fisher_k is not None
        if run.fisher_k >= run.total_steps:
            raise HarnessError(
                f"fisher_warmup: K = {run.fisher_k} is not below the run's {run.total_steps} "
                "steps; lower it"
            )
        run.model.train()
        for step in range(run.fisher_k):  # the batch order of train._train_epoch
            epoch, i = divmod(step, run.steps_per_epoch)
            order = np.random.default_rng(cfg.seed * 1009 + epoch + 1).permutation(
                len(run.train_data)
            )
            index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            _train_step(run, run.train_data.batch(index, run.device))
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        fisher = run.optimizer.fisher
    return {name.removeprefix(PEFT_PREFIX): float(v) for name, v in fisher.items()}


def scores(
    fisher: dict[str, float], matrices: list[budget.TargetLinear], rank_by: str
) -> dict[str, float]:
    """The ranking score of every matrix: F_m, or F_m / (in · out)."""
    shape = {m.name: m.in_features * m.out_features for m in matrices}
    missing = sorted(set(shape) - set(fisher))
    if missing:
        raise HarnessError(f"targeting: the warm-up measured no F_m for {missing[:3]}")
    if rank_by == "per-weight":
        return {n: fisher[n] / shape[n] for n in shape}
    return {n: fisher[n] for n in shape}


@dataclass
class Draw:
    """The three sets of one seed and ranking."""

    top: list[str]
    bottom: list[str]
    random: list[str]
    params: dict[str, int]
    tries: int

    def sets(self) -> dict[str, list[str]]:
        return {"top": self.top, "random": self.random, "bottom": self.bottom}


def choose_sets(
    score: dict[str, float],
    matrices: list[budget.TargetLinear],
    k: int,
    rank: int,
    seed: int,
    tolerance: float = TOLERANCE,
    draws: int = DRAWS,
) -> Draw:
    """TOP-k, BOTTOM-k, and RANDOM-k drawn to TOP-k's LoRA parameter count (within
    `tolerance`); HarnessError, naming the closest draw, when no draw of `draws` matches."""
    names = [m.name for m in matrices]  # model order: ties keep it
    order = sorted(names, key=lambda n: -score[n])
    size = {m.name: rank * (m.in_features + m.out_features) for m in matrices}
    top, bottom = order[:k], order[-k:]
    goal = sum(size[n] for n in top)
    rng = np.random.default_rng([seed, k, 1016])
    best: list[str] = []
    best_gap = math.inf
    for attempt in range(1, draws + 1):
        pick = [names[i] for i in sorted(rng.choice(len(names), size=k, replace=False))]
        gap = abs(sum(size[n] for n in pick) - goal) / goal
        if gap < best_gap:
            best, best_gap = pick, gap
        if gap <= tolerance:
            params = {"top": goal, "bottom": sum(size[n] for n in bottom)}
            params["random"] = sum(size[n] for n in pick)
            return Draw(top, bottom, pick, params, attempt)
    raise HarnessError(
        f"k: no random draw of {k} matrices ({draws} tried, seed {seed}) has TOP-{k}'s "
        f"{goal:,} LoRA parameters within {tolerance:.0%}; the closest had "
        f"{sum(size[n] for n in best):,} ({best_gap:+.1%}); choose another k"
    )


def set_label(which: str, k: int, rank_by: str) -> str:
    return f"{which}{k}-{rank_by}"


@dataclass
class Plan:
    """Every run of a targeting experiment and what chose its matrices."""

    k: int
    rank_by: list[str]
    matrices: list[budget.TargetLinear]
    fisher: dict[int, dict[str, float]]  # seed → F_m
    draws: dict[tuple[int, str], Draw]  # (seed, ranking) → sets
    configs: list[RunConfig]


def plan_targeting(
    base: RunConfig,
    data: TaskData,
    seeds: list[int],
    k: int,
    rank_by: list[str],
    matrices: list[budget.TargetLinear],
    progress=None,
) -> Plan:
    """Warm-up per seed, the sets of every ranking, and one plain-LoRA config per set."""
    fisher: dict[int, dict[str, float]] = {}
    draws: dict[tuple[int, str], Draw] = {}
    configs = []
    for seed in seeds:
        if progress:
            progress(f"warm-up seed {seed} ({base.fisher_warmup} steps)")
        fisher[seed] = warmup_fisher(base.replace(seed=seed), data)
        for ranking in rank_by:
            draw = choose_sets(
                scores(fisher[seed], matrices, ranking), matrices, k, base.rank, seed
            )
            draws[(seed, ranking)] = draw
            for which, names in draw.sets().items():
                configs.append(
                    base.replace(
                        method="lora",
                        seed=seed,
                        variant=set_label(which, k, ranking),
                        target_modules=names,
                    )
                )
    return Plan(k, rank_by, matrices, fisher, draws, configs)


# ------------------------------------------------------------------ analysis
def where(names: list[str]) -> dict[str, dict[str, int]]:
    """How many of `names` sit in each module type and each layer."""
    positions = [module_position(n) for n in names]
    return {
        "type": dict(Counter(kind for _, kind in positions).most_common()),
        "layer": {str(k): v for k, v in sorted(Counter(lay for lay, _ in positions).items())},
    }


def _spearman(a: dict[str, float], b: dict[str, float]) -> float:
    from scipy.stats import spearmanr

    names = sorted(a)
    return float(spearmanr([a[n] for n in names], [b[n] for n in names]).statistic)


def compare_sets(
    by: dict[tuple[str, int], float], k: int, ranking: str, seeds: list[int]
) -> dict[str, Any]:
    """Accuracy per set and the paired tests TOP − RANDOM and TOP − BOTTOM, over the seeds
    whose three runs are all finished. `by`: (run label, seed) → accuracy."""
    acc = {w: [by.get((set_label(w, k, ranking), s)) for s in seeds] for w in SETS}
    complete = [i for i, s in enumerate(seeds) if all(acc[w][i] is not None for w in SETS)]
    done = {w: [float(by[(set_label(w, k, ranking), seeds[i])]) for i in complete] for w in SETS}
    return {
        "seeds_complete": [seeds[i] for i in complete],
        "accuracy": {
            w: {
                "values": acc[w],
                "mean": float(np.mean(done[w])) if complete else None,
                "std": float(np.std(done[w], ddof=1)) if len(complete) > 1 else None,
            }
            for w in SETS
        },
        "top_minus_random": stats.paired_tests(done["top"], done["random"]) if complete else None,
        "top_minus_bottom": stats.paired_tests(done["top"], done["bottom"]) if complete else None,
    }


def analyse(plan: Plan, runs: list[dict[str, Any]], metric: str = "final_eval_acc") -> dict:
    """targeting.json: accuracy per set, the paired tests, where the top matrices sit."""
    by = {(r["label"], r["seed"]): float(r[metric]) for r in runs}
    seeds = sorted(plan.fisher)
    doc: dict[str, Any] = {
        "schema": TARGETING_SCHEMA,
        "metric": f"{metric} (final epoch: no selection on the evaluation set)",
        "k": plan.k,
        "adaptable_matrices": len(plan.matrices),
        "seeds": seeds,
        "tolerance": TOLERANCE,
        "tests": "paired t-test and Wilcoxon signed-rank over seeds (scipy); null when undefined",
        "rankings": {},
    }
    for ranking in plan.rank_by:
        section = compare_sets(by, plan.k, ranking, seeds)
        section["per_seed"] = []
        top_counts: Counter[str] = Counter()
        for s in seeds:
            draw = plan.draws[(s, ranking)]
            top_counts.update(draw.top)
            section["per_seed"].append(
                {
                    "seed": s,
                    "sets": draw.sets(),
                    "lora_params": draw.params,
                    "random_draws_tried": draw.tries,
                    "accuracy": {w: by.get((set_label(w, plan.k, ranking), s)) for w in SETS},
                }
            )
        section["top_where"] = where(plan.draws[(seeds[0], ranking)].top)
        section["top_frequency"] = dict(top_counts.most_common())
        section["top_same_every_seed"] = len(top_counts) == plan.k
        doc["rankings"][ranking] = section
    first = plan.fisher[seeds[0]]
    doc["fisher"] = {str(s): plan.fisher[s] for s in seeds}
    doc["ranking_stability"] = {
        "spearman_vs_first_seed": {str(s): _spearman(first, plan.fisher[s]) for s in seeds[1:]}
    }
    doc["matrix_shapes"] = {m.name: [m.in_features, m.out_features] for m in plan.matrices}
    return doc


def targeting_figure(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Per ranking: each seed's accuracy of TOP, RANDOM, BOTTOM joined by a line, and the
    mean of each set."""
    from matplotlib.figure import Figure

    from fwlora.harness.plots import _save

    rankings_ = list(doc["rankings"])
    fig = Figure(figsize=(4.2 * len(rankings_), 3.6))
    for i, ranking in enumerate(rankings_):
        section = doc["rankings"][ranking]
        ax = fig.add_subplot(1, len(rankings_), i + 1)
        values = [section["accuracy"][w]["values"] for w in SETS]
        for seed_index in range(len(doc["seeds"])):
            row = [v[seed_index] for v in values]
            if all(x is not None for x in row):
                ax.plot(range(len(SETS)), row, "-", color="0.7", lw=0.8, marker=".")
        means = [section["accuracy"][w]["mean"] for w in SETS]
        if all(m is not None for m in means):
            ax.plot(range(len(SETS)), means, "o-", color="C3", lw=2, label="mean")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(SETS)), [f"{w.upper()}-{doc['k']}" for w in SETS])
        ax.set_ylabel("held-out accuracy (final epoch)")
        n = len(section["seeds_complete"])
        ax.set_title(f"ranked by {ranking} ({n} seed{'s' if n != 1 else ''})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir, FIGURE_STEM)


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """Plain-text summary of targeting.json (for the terminal and the report)."""
    lines = []
    for ranking, section in doc["rankings"].items():
        acc = section["accuracy"]
        means = ", ".join(
            f"{w.upper()} {acc[w]['mean']:.4f}" for w in SETS if acc[w]["mean"] is not None
        )
        lines.append(
            f"ranked by {ranking}, k = {doc['k']} of {doc['adaptable_matrices']}, "
            f"{len(section['seeds_complete'])} seeds: {means}"
        )
        for key, name in (
            ("top_minus_random", "TOP − RANDOM"),
            ("top_minus_bottom", "TOP − BOTTOM"),
        ):
            test = section[key]
            if test:
                t, w = test["paired_t"], test["wilcoxon"]
                lines.append(
                    f"  {name}: {test['mean_difference']:+.4f}; paired t p = "
                    f"{'n/a' if not t else format(t['p_value'], '.3g')}; Wilcoxon p = "
                    f"{'n/a' if not w else format(w['p_value'], '.3g')}"
                )
        kinds = ", ".join(f"{k} × {v}" for k, v in section["top_where"]["type"].items())
        layers = ", ".join(f"{k}: {v}" for k, v in section["top_where"]["layer"].items())
        lines.append(f"  TOP-{doc['k']} (first seed): {kinds}; by layer {layers}")
    return lines


def write_targeting(out_dir: Path, plan: Plan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    doc = analyse(plan, runs)
    (out_dir / TARGETING_FILE).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    targeting_figure(doc, out_dir / "figures")
    return doc


# ------------------------------------------------------------------ the command
def run_targeting(
    base: RunConfig,
    seeds: list[int],
    k: int | None,
    fraction: float | None,
    rank_by: list[str],
    out_dir: Path,
    overwrite: bool = False,
    resume: bool = False,
    progress=None,
):
    """Checks everything, runs the warm-ups, trains every set, writes targeting.json and its
    figure; returns (experiment, targeting document). Bad input writes nothing."""
    from fwlora.harness.experiment import run_experiment
    from fwlora.harness.output import check_output
    from fwlora.harness.preflight import data_key, preflight

    out_dir = Path(out_dir)
    check_output(out_dir, overwrite, resume)
    data = preflight([base])[data_key(base)]
    matrices = adaptable_matrices(base, data.num_labels)
    k = resolve_k(k, fraction, len(matrices))
    plan = plan_targeting(base, data, seeds, k, rank_by, matrices, progress)
    exp = run_experiment(plan.configs, out_dir, overwrite, resume)
    return exp, write_targeting(exp.out_dir, plan, exp.runs)
