"""The premise test (`fwlora targeting`): do the warm-up Fisher scores F_m say where LoRA
capacity matters, beyond "big, late matrices"?

For each seed: a K-step FW-LoRA warm-up (the exact statistic, the run's own data order,
initialisation and schedule) gives F_m for every adaptable matrix; the matrices are ranked
by F_m (`fisher`) or by F_m / (in · out) (`per-weight`, since F_m grows with a matrix's
size); then plain LoRA is trained on only k of them, in five arms:

* TOP-k: the k highest-ranked matrices;
* RANDOM-k: k matrices drawn at random until their LoRA parameter count is within 5 % of
  TOP-k's (so "more parameters" cannot pass for "better matrices");
* TYPE-k (type-matched): TOP-k's count of each module type (query, key, value, attention
  output, intermediate, output), layers drawn at random: does F know more than "FFN/value"?
* LAYER-k (layer-matched): TOP-k's count in each layer, types drawn at random, within 5 % of
  TOP-k's parameter count: does F know more than "late layers"?
* BOTTOM-k: the k lowest (confounded: it is small, early matrices by construction).

Every arm of a seed is the same model: adapters on all adaptable matrices, the same
initialisation draws and random streams, the unchosen adapters frozen at zero (B = 0, never
updated; `RunConfig.trainable_modules`). The arms differ only in which matrices train, so
they are paired as tightly as the design allows. TOP minus each control is reported per
metric (final accuracy and macro-F1) with its 95 % interval, a paired equivalence test
(TOST) against the margin, a verdict (different / equivalent / inconclusive, Holm over the
family actually tested) and, as a planning figure, the minimum detectable difference.

Everything is trained through `run_experiment`, so the output folder is an ordinary
experiment (report, merge, --resume) plus `targeting.json` and its figure. On --resume the
warm-ups are recomputed (they are deterministic) and the experiment's saved plan checks that
they chose the same matrices. Parts of one experiment run in several folders (seeds split
over processes) are joined by `combine`: the tests are recomputed over every seed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
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
# `fwlora targeting`'s defaults (its --help shows them from here; its seeds:
# config.DEFAULT_SEEDS): the rankings, and k as this fraction of the adapted matrices when
# neither k nor fraction is given.
DEFAULT_RANK_BY = ("fisher",)
DEFAULT_FRACTION = 0.25
SETS = ("top", "random", "type", "layer", "bottom")
CONTROLS = ("random", "type", "layer", "bottom")
# How each control is matched to TOP (the page's and the summary's words).
CONTROL_TEXT = {
    "random": "size-matched random",
    "type": "type-matched",
    "layer": "layer-matched",
    "bottom": "BOTTOM (confounded: the smallest, least-scored matrices)",
}
METRICS = {"acc": "final_eval_acc", "macro_f1": "final_eval_macro_f1"}
DEFAULT_MARGIN = stats.DEFAULT_MARGIN  # accuracy (and macro-F1) units
TOLERANCE = 0.05  # RANDOM-k's and LAYER-k's LoRA parameters within 5 % of TOP-k's
DRAWS = 20000  # random draws tried per seed before giving up
TARGETING_FILE = "targeting.json"
TARGETING_SCHEMA = "fwlora.targeting/2"
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
    items = text.split(",") if isinstance(text, str) else list(text or DEFAULT_RANK_BY)
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


def check_warmup(cfg: RunConfig, train_examples: int) -> None:
    """Refuses, before any warm-up runs, a K the run's steps never get past."""
    from fwlora.harness.methods import fisher_warmup_steps
    from fwlora.harness.preflight import optimizer_steps

    total = optimizer_steps(cfg, train_examples)
    k = fisher_warmup_steps(cfg, total)
    if k >= total:
        raise HarnessError(f"fisher_warmup: K = {k} is not below the run's {total} steps; lower it")


# ------------------------------------------------------------------ warm-up and ranking
def warmup_fisher(cfg: RunConfig, data: TaskData) -> dict[str, float]:
    """F_m after FW-LoRA's K-step warm-up, as a fw-lora run of `cfg` measures it: the run's
    own set-up (seed, initialisation, optimizer, schedule) and batch order, stopped after
    step K; keyed by the backbone's module names."""
    import tempfile

    from fwlora.harness.resources import cpu_threads
    from fwlora.harness.train import batch_order, setup_run, train_step

    cfg = cfg.replace(method="fw-lora", variant=None)
    with cpu_threads(cfg.num_threads), tempfile.TemporaryDirectory() as scratch:
        run = setup_run(cfg, Path(scratch), data)  # writes only config.yaml, in scratch
        assert run.fisher_k is not None
        if run.fisher_k >= run.total_steps:
            raise HarnessError(
                f"fisher_warmup: K = {run.fisher_k} is not below the run's {run.total_steps} "
                "steps; lower it"
            )
        run.model.train()
        for step in range(run.fisher_k):  # the batch order of train._train_epoch
            epoch, i = divmod(step, run.steps_per_epoch)
            order = batch_order(cfg.seed, epoch + 1, len(run.train_data))
            index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            train_step(run, run.train_data.batch(index, run.device))
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
    """The five sets of one seed and ranking."""

    top: list[str]
    bottom: list[str]
    random: list[str]
    type: list[str]
    layer: list[str]
    params: dict[str, int]
    tries: dict[str, int]

    def sets(self) -> dict[str, list[str]]:
        return {w: getattr(self, w) for w in SETS}


def _match(
    name: str,
    draw_once,
    size: dict[str, int],
    goal: int,
    tolerance: float,
    draws: int,
    seed: int,
    k: int,
) -> tuple[list[str], int]:
    """The first of `draws` calls of draw_once() whose LoRA parameters are within
    `tolerance` of `goal`: (set in model order, tries); HarnessError naming the closest."""
    best: list[str] = []
    best_gap = math.inf
    for attempt in range(1, draws + 1):
        pick = draw_once()
        gap = abs(sum(size[n] for n in pick) - goal) / goal
        if gap < best_gap:
            best, best_gap = pick, gap
        if gap <= tolerance:
            return pick, attempt
    raise HarnessError(
        f"k: no {name} draw of {k} matrices ({draws} tried, seed {seed}) has TOP-{k}'s "
        f"{goal:,} LoRA parameters within {tolerance:.0%}; the closest had "
        f"{sum(size[n] for n in best):,} ({best_gap:+.1%}); choose another k"
    )


def choose_sets(
    score: dict[str, float],
    matrices: list[budget.TargetLinear],
    k: int,
    rank: int,
    seed: int,
    tolerance: float = TOLERANCE,
    draws: int = DRAWS,
) -> Draw:
    """TOP-k, BOTTOM-k and the three matched controls (see the module's docstring); each
    control has its own random stream of `seed`. HarnessError, naming the closest draw, when
    no draw of `draws` matches TOP-k's LoRA parameter count."""
    names = [m.name for m in matrices]  # model order: ties keep it, sets are listed in it
    position = {n: module_position(n) for n in names}
    order = sorted(names, key=lambda n: -score[n])
    size = {m.name: rank * (m.in_features + m.out_features) for m in matrices}
    top, bottom = order[:k], order[-k:]
    goal = sum(size[n] for n in top)

    def in_model_order(chosen: list[str]) -> list[str]:
        keep = set(chosen)
        return [n for n in names if n in keep]

    streams = {w: np.random.default_rng([seed, k, 1016 + i]) for i, w in enumerate(CONTROLS)}

    def random_draw() -> list[str]:
        rng = streams["random"]
        return [names[i] for i in sorted(rng.choice(len(names), size=k, replace=False))]

    def grouped_draw(key: int, stream: str):
        """TOP's count in each group (position[n][key]), members drawn within the group."""
        counts = Counter(position[n][key] for n in top)
        groups = {g: [n for n in names if position[n][key] == g] for g in counts}

        def draw() -> list[str]:
            rng = streams[stream]
            pick: list[str] = []
            for g, c in counts.items():
                pool = groups[g]
                pick += [pool[i] for i in rng.choice(len(pool), size=c, replace=False)]
            return in_model_order(pick)

        return draw

    tries: dict[str, int] = {}
    random_set, tries["random"] = _match(
        "size-matched random", random_draw, size, goal, tolerance, draws, seed, k
    )
    type_set, tries["type"] = _match(
        "type-matched", grouped_draw(1, "type"), size, goal, tolerance, draws, seed, k
    )
    layer_set, tries["layer"] = _match(
        "layer-matched", grouped_draw(0, "layer"), size, goal, tolerance, draws, seed, k
    )
    sets = {"top": top, "random": random_set, "type": type_set, "layer": layer_set}
    sets["bottom"] = bottom
    params = {w: sum(size[n] for n in members) for w, members in sets.items()}
    return Draw(
        top,  # in rank order (highest first), as BOTTOM (lowest last)
        bottom,
        random_set,
        type_set,
        layer_set,
        params,
        tries,
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
    """Warm-up per seed, the sets of every ranking, and one plain-LoRA config per set: the
    model adapts every matrix, only the set's matrices train."""
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
                        trainable_modules=names,
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


def ranking_stability(fisher: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Spearman correlation of the F_m ranking between every pair of seeds."""
    seeds = sorted(fisher)
    pairs = {
        f"{a}-{b}": _spearman(fisher[a], fisher[b])
        for i, a in enumerate(seeds)
        for b in seeds[i + 1 :]
    }
    values = list(pairs.values())
    return {
        "spearman_pairs": pairs,
        "spearman_mean": float(np.mean(values)) if values else None,
        "spearman_min": float(min(values)) if values else None,
        "spearman_vs_first_seed": {
            str(s): _spearman(fisher[seeds[0]], fisher[s]) for s in seeds[1:]
        },
    }


def _run_record(run: Mapping[str, Any] | None, names: list[str], params: int) -> dict[str, Any]:
    """What the committed data keeps of one arm's run (None fields: not finished yet)."""
    record: dict[str, Any] = {"set": names, "lora_params": params}
    if run is None:
        return {**record, "finished": False}
    return {
        **record,
        "finished": True,
        "run": run["run"],
        "steps": run["total_steps"],
        "trainable_params": run["adapters"]["trainable_params"],
        "acc": float(run["final_eval_acc"]),
        "macro_f1": float(run["final_eval_macro_f1"]),
        "recall": run["final_eval_recall"],
        "confusion_matrix": run["final_confusion_matrix"],
    }


def seed_records(plan: Plan, runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per seed: its F_m and, per ranking, every arm's set, size and finished run (`runs`:
    run records, or the parts of their JSON objects it reads)."""
    by = {(r["label"], r["seed"]): r for r in runs}
    records = []
    for s in sorted(plan.fisher):
        rankings_: dict[str, Any] = {}
        for ranking in plan.rank_by:
            draw = plan.draws[(s, ranking)]
            rankings_[ranking] = {
                "draws_tried": draw.tries,
                "arms": {
                    w: _run_record(
                        by.get((set_label(w, plan.k, ranking), s)), names, draw.params[w]
                    )
                    for w, names in draw.sets().items()
                },
            }
        records.append({"seed": s, "fisher": plan.fisher[s], "rankings": rankings_})
    return records


def _comparisons(
    records: list[dict[str, Any]], rank_by: list[str], margin: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """ranking → "top_minus_CONTROL" → metric → paired comparison over the seeds whose two
    arms are finished; Holm over each metric's family (every ranking and control)."""
    out: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in rank_by}
    for metric in METRICS:
        family = []
        for ranking in rank_by:
            for control in CONTROLS:
                arms = [(rec["seed"], rec["rankings"][ranking]["arms"]) for rec in records]
                done = [(s, a["top"], a[control]) for s, a in arms]
                done = [(s, t, c) for s, t, c in done if t["finished"] and c["finished"]]
                pairs = [(t, c) for _, t, c in done]
                comp = stats.paired_comparison(
                    [t[metric] for t, _ in pairs], [c[metric] for _, c in pairs], margin
                )
                comp["seeds"] = [s for s, _, _ in done]
                comp["identical_sets"] = sum(t["set"] == c["set"] for t, c in pairs)
                out[ranking].setdefault(f"top_minus_{control}", {})[metric] = comp
                family.append(comp)
        stats.classify_family(family)
    return out


def _arm_summary(records: list[dict[str, Any]], ranking: str) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for w in SETS:
        arms = [rec["rankings"][ranking]["arms"][w] for rec in records]
        done = [a for a in arms if a["finished"]]
        summary[w] = {
            "seeds": len(done),
            "lora_params_mean": float(np.mean([a["lora_params"] for a in arms])),
            **{
                m: {
                    "values": [a[m] if a["finished"] else None for a in arms],
                    "mean": float(np.mean([a[m] for a in done])) if done else None,
                    "sd": float(np.std([a[m] for a in done], ddof=1)) if len(done) > 1 else None,
                }
                for m in METRICS
            },
            "never_predicts": _never_predicted(done),
        }
    return summary


def _never_predicted(arms: list[dict[str, Any]]) -> dict[str, int]:
    """Per class: how many finished runs never predict it (a column of zeros)."""
    counts: Counter[str] = Counter()
    for a in arms:
        columns = np.asarray(a["confusion_matrix"]).sum(axis=0)
        counts.update(str(c) for c, v in enumerate(columns) if v == 0)
    return dict(sorted(counts.items()))


def document(
    records: list[dict[str, Any]],
    k: int,
    rank_by: list[str],
    matrix_shapes: dict[str, list[int]],
    margin: float = DEFAULT_MARGIN,
    parts: int = 1,
) -> dict[str, Any]:
    """targeting.json from the per-seed records (of one experiment, or of its parts)."""
    seeds = [rec["seed"] for rec in records]
    comparisons = _comparisons(records, rank_by, margin)
    doc: dict[str, Any] = {
        "schema": TARGETING_SCHEMA,
        "metric": "final evaluation (no selection on the evaluation set): acc, macro_f1",
        "k": k,
        "adaptable_matrices": len(matrix_shapes),
        "seeds": seeds,
        "parts": parts,
        "tolerance": TOLERANCE,
        "design": "one model per seed with adapters on every adaptable matrix; each arm trains "
        "only its set, the other adapters frozen at zero (B = 0); same initialisation and "
        "batch order in every arm",
        "controls": CONTROL_TEXT,
        "equivalence_margin": margin,
        "tests": "per metric: mean difference TOP − control with its 95 % paired t-interval; "
        "two-sided paired t-test (different) and TOST against ±margin (equivalent), both "
        "Holm-adjusted over the metric's family (every ranking × control: family_size); "
        "verdict different / equivalent / inconclusive; Wilcoxon signed-rank (method and "
        "non-zero pairs stated); mde_80 is a planning figure (the smallest difference a "
        "paired t-test at 0.05 detects with 80 % power at the observed SD), not evidence",
        "rankings": {},
    }
    for ranking in rank_by:
        top_counts: Counter[str] = Counter()
        for rec in records:
            top_counts.update(rec["rankings"][ranking]["arms"]["top"]["set"])
        doc["rankings"][ranking] = {
            "seeds_complete": [
                rec["seed"]
                for rec in records
                if all(a["finished"] for a in rec["rankings"][ranking]["arms"].values())
            ],
            "arms": _arm_summary(records, ranking),
            "comparisons": comparisons[ranking],
            "top_where": where(records[0]["rankings"][ranking]["arms"]["top"]["set"]),
            "top_frequency": dict(top_counts.most_common()),
            "top_same_every_seed": len(top_counts) == k,
        }
    doc["ranking_stability"] = ranking_stability({rec["seed"]: rec["fisher"] for rec in records})
    doc["matrix_shapes"] = matrix_shapes
    doc["per_seed"] = records
    return doc


def analyse(plan: Plan, runs: Sequence[Mapping[str, Any]], margin: float = DEFAULT_MARGIN) -> dict:
    """targeting.json of one experiment."""
    shapes = {m.name: [m.in_features, m.out_features] for m in plan.matrices}
    return document(seed_records(plan, runs), plan.k, plan.rank_by, shapes, margin)


def combine(docs: list[dict[str, Any]], margin: float | None = None) -> dict[str, Any]:
    """One targeting.json from the targeting.json of each part of an experiment (seeds run
    in separate folders): the per-seed records joined (a seed in two parts must agree), the
    tests recomputed over all of them. HarnessError for parts of different experiments."""
    if not docs:
        raise HarnessError("targeting: no parts to combine")
    first = docs[0]
    for doc in docs:
        if doc.get("schema") != TARGETING_SCHEMA:
            raise HarnessError(
                f"targeting: a part has schema {doc.get('schema')!r}, expected {TARGETING_SCHEMA}"
            )
        same = (doc["k"], list(doc["rankings"]), doc["matrix_shapes"])
        if same != (first["k"], list(first["rankings"]), first["matrix_shapes"]):
            raise HarnessError("targeting: the parts differ in k, rankings or matrices")
    records: dict[int, dict[str, Any]] = {}
    for doc in docs:
        for rec in doc["per_seed"]:
            known = records.get(rec["seed"])
            if known is not None and known["fisher"] != rec["fisher"]:
                raise HarnessError(
                    f"targeting: seed {rec['seed']} has different warm-ups in two parts"
                )
            if known is None or _finished(rec) > _finished(known):
                records[rec["seed"]] = rec
    return document(
        [records[s] for s in sorted(records)],
        first["k"],
        list(first["rankings"]),
        first["matrix_shapes"],
        first["equivalence_margin"] if margin is None else margin,
        parts=len(docs),
    )


def _finished(record: dict[str, Any]) -> int:
    return sum(a["finished"] for r in record["rankings"].values() for a in r["arms"].values())


def targeting_figure(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Per ranking: each seed's accuracy in every arm joined by a line, and each arm's mean."""
    from matplotlib.figure import Figure

    from fwlora.harness.plots import save_figure

    rankings_ = list(doc["rankings"])
    fig = Figure(figsize=(5.2 * len(rankings_), 3.8))
    for i, ranking in enumerate(rankings_):
        arms = doc["rankings"][ranking]["arms"]
        ax = fig.add_subplot(1, len(rankings_), i + 1)
        values = [arms[w]["acc"]["values"] for w in SETS]
        for seed_index in range(len(doc["seeds"])):
            row = [v[seed_index] for v in values]
            if all(x is not None for x in row):
                ax.plot(range(len(SETS)), row, "-", color="0.7", lw=0.8, marker=".")
        means = [arms[w]["acc"]["mean"] for w in SETS]
        if all(m is not None for m in means):
            ax.plot(range(len(SETS)), means, "o-", color="C3", lw=2, label="mean")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(SETS)), [f"{w.upper()}-{doc['k']}" for w in SETS], fontsize=8)
        ax.set_ylabel("held-out accuracy (final epoch)")
        n = len(doc["rankings"][ranking]["seeds_complete"])
        ax.set_title(f"ranked by {ranking} ({n} seed{'s' if n != 1 else ''})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_dir, FIGURE_STEM)


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """Plain-text summary of targeting.json (for the terminal and the report); a document
    of the first format (TOP, RANDOM, BOTTOM as separate models) is summarised as it was."""
    if doc.get("schema") == "fwlora.targeting/1":
        return _summary_lines_v1(doc)
    lines = []
    for ranking, section in doc["rankings"].items():
        arms = section["arms"]
        means = ", ".join(
            f"{w.upper()} {arms[w]['acc']['mean']:.4f}"
            for w in SETS
            if arms[w]["acc"]["mean"] is not None
        )
        lines.append(
            f"ranked by {ranking}, k = {doc['k']} of {doc['adaptable_matrices']}, "
            f"{len(section['seeds_complete'])} seeds complete (accuracy): {means}"
        )
        for control in CONTROLS:
            for metric, comp in section["comparisons"][f"top_minus_{control}"].items():
                lines.append(
                    f"  TOP − {CONTROL_TEXT[control]} ({metric}, {comp['n']} seeds, Holm over "
                    f"{comp['family_size']}): {stats.comparison_text(comp)}"
                )
        kinds = ", ".join(f"{k} × {v}" for k, v in section["top_where"]["type"].items())
        layers = ", ".join(f"{k}: {v}" for k, v in section["top_where"]["layer"].items())
        lines.append(f"  TOP-{doc['k']} (first seed): {kinds}; by layer {layers}")
    return lines


def _summary_lines_v1(doc: dict[str, Any]) -> list[str]:
    lines = []
    for ranking, section in doc["rankings"].items():
        acc = section["accuracy"]
        means = ", ".join(
            f"{w.upper()} {acc[w]['mean']:.4f}" for w in acc if acc[w]["mean"] is not None
        )
        lines.append(
            f"ranked by {ranking}, k = {doc['k']} of {doc['adaptable_matrices']}, "
            f"{len(section['seeds_complete'])} seeds: {means} (written by an earlier fwlora: "
            "separate models per set)"
        )
        for key, name in (
            ("top_minus_random", "TOP − RANDOM"),
            ("top_minus_bottom", "TOP − BOTTOM"),
        ):
            test = section.get(key)
            if test:
                t, w = test["paired_t"], test["wilcoxon"]
                lines.append(
                    f"  {name}: {test['mean_difference']:+.4f}; paired t p = "
                    f"{'n/a' if not t else format(t['p_value'], '.3g')}; Wilcoxon p = "
                    f"{'n/a' if not w else format(w['p_value'], '.3g')}"
                )
    return lines


def write_targeting(
    out_dir: Path, plan: Plan, runs: Sequence[Mapping[str, Any]], margin: float = DEFAULT_MARGIN
) -> dict[str, Any]:
    doc = analyse(plan, runs, margin)
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
    margin: float = DEFAULT_MARGIN,
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
    check_warmup(base, len(data.train))
    plan = plan_targeting(base, data, seeds, k, rank_by, matrices, progress)
    exp = run_experiment(plan.configs, out_dir, overwrite, resume)
    return exp, write_targeting(exp.out_dir, plan, exp.runs, margin)
