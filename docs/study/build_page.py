"""Builds docs/study/ (index.html, images/, figures/, data/) from the study's two experiments:
the λ sweep (a `fwlora sweep`, or several merged with `fwlora merge`) and the premise test
(`fwlora targeting`, finished or still running: its finished runs are read). Every number on
the page is computed here from those folders' artefacts, the answer paragraph included, so a
rebuild with more seeds restates it; only the set-up prose is written by hand.

    python docs/study/build_page.py SWEEP_DIR PREMISE_DIR [docs/study]

(`docs/study/aggregate.sh` finds the folders, merges the sweep's parts and calls this.)
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from fwlora.harness import stats
from fwlora.harness.targeting import (
    FIGURE_STEM,
    TARGETING_FILE,
    compare_sets,
    summary_lines,
    targeting_figure,
    where,
)

PLANNED_SEEDS = 10
GRID_CONFIGS = 10  # lora + l2-lora, fw-lora (sum), fw-lora (max) at three strengths
ADAPTED = 36  # MiniLM-L6: 6 layers × (query, key, value, attention output, intermediate, output)
SWEEP_ARTEFACTS = ("metrics.json", "aggregated_metrics.json", "sweep_tests.json", "experiment.yaml")
SWEEP_FIGURES = ("sweep_lambda_curve", "sweep_penalty_ratio")
METRIC = "final_eval_acc"
ALPHA, POWER = 0.05, 0.8
FW_LABEL = re.compile(r"^fw-lora-(sum|max)-((?:lam|tr)[0-9.e+-]+)$")  # sweep.grid_label

COMMANDS = """\
# from the repository root, offline (HF_HUB_OFFLINE=1); every part niced and resumable:
docs/study/run_study.sh          # starts or resumes the three experiments below
#   fwlora sweep --methods lora,fw-lora,l2-lora --target-ratios 0.03,0.1,0.3 \\
#     --normalizations sum,max \\
#     --seeds 1,3,5,7,9 (study-a) / 2,4,6,8,10 (study-b) --model minilm-l6 --task drugreview3 \\
#     --epochs 3 --max-length 64 --truncation-side left --fisher-warmup 30 --lr 1e-3 \\
#     --batch-size 16 --modules-to-save classifier,pooler --num-threads 1 -o runs/study-a
#   fwlora targeting --k 9 --rank-by fisher,per-weight --seeds 1,...,10 (same settings) \\
#     --evaluate final -o runs/premise
docs/study/aggregate.sh          # fwlora merge of the sweep's parts + this page (any time)
"""


# ------------------------------------------------------------------ reading
def finished_runs(folder: Path) -> list[dict[str, Any]]:
    """Every finished run of an experiment folder (finished or still running)."""
    out = []
    for path in sorted(folder.glob("runs/*/metrics.json")):
        metrics = json.loads(path.read_text())
        if metrics.get("status") == "complete":
            out.append(metrics)
    return out


def _acc(runs: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    return {(r["label"], r["seed"]): float(r[METRIC]) for r in runs}


# ------------------------------------------------------------------ the sweep's tests
def family_tests(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each FW-LoRA variant against l2-lora (same λ) and against plain LoRA, paired by seed;
    Holm-corrected across the family; the minimum detectable paired difference (80 % power,
    two-sided α = 0.05, from the observed paired SD) of each."""
    acc = _acc(runs)
    strengths = sorted(
        {m[2] for r in runs if (m := FW_LABEL.match(r["label"]))},
        key=lambda x: float(re.sub("^(lam|tr)", "", x)),
    )
    tests = []
    for strength in strengths:
        for norm in ("sum", "max"):
            fw = f"fw-lora-{norm}-{strength}"
            for base in (f"l2-lora-{strength}", "lora"):
                seeds = sorted(s for (lab, s) in acc if lab == fw and (base, s) in acc)
                a = [acc[(fw, s)] for s in seeds]
                b = [acc[(base, s)] for s in seeds]
                row: dict[str, Any] = {"fw": fw, "baseline": base, "strength": strength}
                row["seeds"] = seeds
                if seeds:
                    row.update(stats.paired_tests(a, b))
                diff = np.subtract(a, b)
                sd = float(diff.std(ddof=1)) if len(diff) > 1 else None
                row["sd_difference"] = sd
                row["mdd"] = stats.min_detectable_difference(sd or 0.0, len(seeds), ALPHA, POWER)
                tests.append(row)
    for kind in ("paired_t", "wilcoxon"):
        ps = [(t.get(kind) or {}).get("p_value") for t in tests]
        for t, p in zip(tests, stats.holm(ps)):
            t[f"{kind}_holm"] = p
    m = sum(1 for t in tests if t.get("paired_t"))
    for t in tests:
        sd = t["sd_difference"]
        n = len(t["seeds"])
        t["mdd_holm"] = stats.min_detectable_difference(sd or 0.0, n, ALPHA / max(m, 1), POWER)
    return {
        "metric": f"{METRIC} (final epoch)",
        "family": f"{len(tests)} comparisons; Holm across the family (t, Wilcoxon apart)",
        "mdd": f"minimum detectable mean paired difference, {POWER:.0%} power, two-sided "
        f"α = {ALPHA} (mdd) and α = {ALPHA}/{m} (mdd_holm, the strictest Holm step); exact, "
        "noncentral t, from each comparison's observed SD of the paired differences",
        "tests": tests,
    }


def majority_check(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Plain LoRA per seed against the majority class; runs that predict one class only."""
    counts = runs[0]["data"]["eval_label_counts"]
    majority = max(counts) / sum(counts)
    lora = {r["seed"]: float(r[METRIC]) for r in runs if r["label"] == "lora"}
    collapsed = []
    for r in runs:
        matrix = np.asarray(r["epochs"][-1]["confusion_matrix"])
        if int((matrix.sum(axis=0) > 0).sum()) <= 1:
            collapsed.append(r["run"])
    return {"majority": majority, "lora": dict(sorted(lora.items())), "collapsed": collapsed}


def penalty_ratios(runs: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in runs:
        ratio = (r.get("fisher") or {}).get("penalty_grad_ratio")
        if ratio is not None:
            out.setdefault(r["label"], {})[r["seed"]] = float(ratio)
    return out


# ------------------------------------------------------------------ the premise test
def premise_doc(folders: list[Path]) -> dict[str, Any] | None:
    """targeting.json when one command finished them all; otherwise the same tests from the
    finished runs of every part (a run of one seed and set is the same in any part: the
    first found is taken; each run's config names its matrices)."""
    if len(folders) == 1 and (folders[0] / TARGETING_FILE).is_file():
        return json.loads((folders[0] / TARGETING_FILE).read_text())
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for folder in folders:
        for run in finished_runs(folder):
            found.setdefault((run["label"], run["seed"]), run)
    runs = list(found.values())
    if not runs:
        return None
    labels = sorted({r["label"] for r in runs})
    k = int(re.match(r"[a-z]+(\d+)-", labels[0])[1])  # labels: top9-fisher, random9-...
    rankings = sorted({lab.split("-", 1)[1] for lab in labels}, key=["fisher", "per-weight"].index)
    seeds = sorted({r["seed"] for r in runs})
    doc: dict[str, Any] = {
        "k": k,
        "adaptable_matrices": ADAPTED,
        "seeds": seeds,
        "partial": True,
        "rankings": {},
    }
    for ranking in rankings:
        section = compare_sets(_acc(runs), k, ranking, seeds)
        tops = [r for r in runs if r["label"] == f"top{k}-{ranking}"]
        section["top_where"] = where(tops[0]["config"]["target_modules"] if tops else [])
        section["top_sets"] = {r["seed"]: r["config"]["target_modules"] for r in tops}
        section["params"] = {
            r["label"]: r["adapters"]["adapter_params"] for r in runs if r["seed"] == seeds[0]
        }
        doc["rankings"][ranking] = section
    # Every planned seed with all three sets in every ranking: complete, if run in parts.
    complete = all(len(sec["seeds_complete"]) >= PLANNED_SEEDS for sec in doc["rankings"].values())
    doc["partial"] = not complete
    return doc


# ------------------------------------------------------------------ the page
def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _li(key: str, value: str) -> str:
    return f"<li><strong>{escape(key)}:</strong> {value}</li>"


def _largest_vs_l2(vs_l2: list[dict[str, Any]]) -> str:
    """The largest FW-LoRA − l2-lora difference and the detectable effect sizes."""
    biggest = max(vs_l2, key=lambda t: abs(t["mean_difference"]))
    mdds = [t["mdd"] for t in vs_l2 if t["mdd"] is not None]
    text = (
        f"The largest FW-LoRA − l2-lora difference is {biggest['mean_difference']:+.4f} "
        f"accuracy ({biggest['fw']}, uncorrected paired t p = "
        f"{_p((biggest.get('paired_t') or {}).get('p_value'))})"
    )
    text += "; " if mdds else ". "
    if mdds:
        text += (
            f"an effect larger than {max(mdds):.4f} accuracy (the largest of the FW-LoRA vs "
            f"l2-lora comparisons' minimum detectable differences, {min(mdds):.4f} for the "
            "smallest; 80 % power, α = 0.05 uncorrected) would have been detected. "
        )
    return text


def _answer(family: dict[str, Any], premise: dict[str, Any] | None, seeds: list[int]) -> str:
    tests = [t for t in family["tests"] if len(t["seeds"]) >= 2]
    if not tests:
        return (
            "Not answered yet: no comparison has two paired seeds so far "
            f"({len(seeds)} of {PLANNED_SEEDS} planned seeds complete); the study is in "
            "progress (docs/study/run_study.sh continues it) and this page states no result "
            "beyond the status below."
        )

    def holm_p(t: dict[str, Any]) -> float:  # no p-value: the differences do not vary
        return min(t.get("paired_t_holm") or 1.0, t.get("wilcoxon_holm") or 1.0)

    significant = [t for t in tests if holm_p(t) < ALPHA]
    vs_l2 = [t for t in tests if t["baseline"] != "lora"]
    done = f" ({', '.join(map(str, seeds))})" if seeds else ""
    text = (
        f"With {len(seeds)} of {PLANNED_SEEDS} planned seeds complete{done} (each comparison "
        "uses the seeds both of its sides have finished), "
    )
    if significant:
        text += (
            f"after Holm correction over the {len(tests)} comparisons these differ from their "
            "baseline: "
        )
        text += "; ".join(
            f"{t['fw']} − {t['baseline']} = {t['mean_difference']:+.4f} (Holm-corrected "
            f"p = {holm_p(t):.3g})"
            for t in significant
        )
        text += ". "
    else:
        # Only the baselines that have two paired seeds so far are named (a partial study).
        against = (
            "its uniform-L2 control l2-lora or from plain LoRA"
            if vs_l2
            else "plain LoRA (no FW-LoRA − l2-lora comparison has two paired seeds yet)"
        )
        text += (
            f"no FW-LoRA variant (sum or max normalisation) differs from {against} at the "
            f"strengths compared after Holm correction over the {len(tests)} comparisons. "
        )
    if vs_l2:
        text += _largest_vs_l2(vs_l2)
    if premise:
        parts = []
        for ranking, section in premise["rankings"].items():
            tr = section.get("top_minus_random")
            if tr and tr.get("n"):
                parts.append(
                    f"ranked by {ranking}, TOP − budget-matched RANDOM = "
                    f"{tr['mean_difference']:+.4f} over {tr['n']} seeds (paired t p = "
                    f"{_p((tr.get('paired_t') or {}).get('p_value'))}, Wilcoxon p = "
                    f"{_p((tr.get('wilcoxon') or {}).get('p_value'))})"
                )
        if parts:
            text += (
                f"The premise test (plain LoRA on only {premise['k']} of the "
                f"{premise['adaptable_matrices']} matrices): " + "; ".join(parts) + "."
            )
    return text


def prediction_agreement(sweep_dir: Path | None, runs: list[dict[str, Any]]) -> dict:
    """Per FW-LoRA configuration, how many held-out reviews its final predictions differ on
    from l2-lora's at the same strength, per seed (the runs' predictions.json)."""
    if sweep_dir is None:
        return {}
    name = {(r["label"], r["seed"]): r["run"] for r in runs}

    def final(label: str, seed: int) -> list[int] | None:
        path = sweep_dir / "runs" / name.get((label, seed), "?") / "predictions.json"
        return json.loads(path.read_text())["final"] if path.is_file() else None

    out: dict[str, dict[int, int]] = {}
    for label, seed in sorted(name):
        if not label.startswith("fw-lora-"):
            continue
        control = "l2-lora-" + label.split("-", 3)[3]  # fw-lora-sum-tr0.1 -> l2-lora-tr0.1
        a, b = final(label, seed), final(control, seed)
        if a is not None and b is not None:
            out.setdefault(label, {})[seed] = sum(x != y for x, y in zip(a, b))
    return out


def _agreement_text(agreement: dict[str, dict[int, int]], n_eval: int) -> str:
    if not agreement:
        return ""
    cells = "; ".join(
        f"{label}: {min(d.values())}–{max(d.values())}" for label, d in agreement.items()
    )
    return (
        f"<p>Held-out reviews (of {n_eval}) on which each FW-LoRA configuration's final "
        f"predictions differ from l2-lora's at the same strength, fewest–most over seeds: "
        f"{escape(cells)}.</p>"
    )


def _config_table(runs: list[dict[str, Any]], ratios: dict[str, dict[int, float]]) -> str:
    acc = _acc(runs)
    labels = list(dict.fromkeys(r["label"] for r in runs))
    rows = []
    for label in labels:
        values = [v for (lab, _), v in acc.items() if lab == label]
        ci = stats_t(values)
        r = ratios.get(label)
        ratio = "–" if not r else f"{np.median(list(r.values())):.2g}"
        rows.append(
            f"<tr><td>{escape(label)}</td><td>{len(values)}</td><td>{ci}</td><td>{ratio}</td></tr>"
        )
    return (
        "<table><thead><tr><th>configuration</th><th>seeds</th><th>accuracy, mean ± 95 % "
        "t half-width</th><th>median ‖∇P‖/‖∇L_task‖</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def stats_t(values: list[float]) -> str:
    from fwlora.harness.sweep import t_interval

    ci = t_interval(values)
    if ci["low"] is None:
        return f"{ci['mean']:.4f}"
    return f"{ci['mean']:.4f} ± {ci['mean'] - ci['low']:.4f}"


def _tests_table(family: dict[str, Any]) -> str:
    rows = []
    for t in family["tests"]:
        if not t["seeds"]:
            continue
        w = t.get("wilcoxon") or {}
        sd = "n/a" if t["sd_difference"] is None else f"{t['sd_difference']:.4f}"
        rows.append(
            "<tr>"
            f"<td>{escape(t['fw'])} − {escape(t['baseline'])}</td><td>{len(t['seeds'])}</td>"
            f"<td>{t['mean_difference']:+.4f}</td><td>{sd}</td>"
            f"<td>{_p((t.get('paired_t') or {}).get('p_value'))}</td>"
            f"<td>{_p(t['paired_t_holm'])}</td>"
            f"<td>{_p(w.get('p_value'))}</td><td>{_p(t.get('wilcoxon_holm'))}</td>"
            f"<td>{_p(t['mdd'])}</td><td>{_p(t['mdd_holm'])}</td></tr>"
        )
    return (
        "<table><thead><tr><th>comparison (accuracy)</th><th>seeds</th><th>mean Δ</th>"
        "<th>SD of Δ</th><th>paired t p</th><th>Holm</th><th>Wilcoxon p</th><th>Holm</th>"
        "<th>detectable Δ (α 0.05)</th><th>detectable Δ (α 0.05/m)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _premise_section(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return "<section><h2>The premise test</h2><p>No run has finished yet.</p></section>"
    items = "".join(f"<li>{escape(line.strip())}</li>" for line in summary_lines(doc))
    status = (
        " (the command is still running: its finished runs are shown)" if doc.get("partial") else ""
    )
    stability = ""
    if doc.get("ranking_stability"):
        rho = list(doc["ranking_stability"]["spearman_vs_first_seed"].values())
        if rho:
            stability = (
                f"<p>F_m's ranking across seeds: Spearman ρ against the first seed's between "
                f"{min(rho):.3f} and {max(rho):.3f}.</p>"
            )
    return (
        "<section><h2>The premise test</h2>"
        f"<p>Do the warm-up Fisher scores say where LoRA capacity matters? For each seed, the "
        f"K = 30-step FW-LoRA warm-up ranks the 36 adapted matrices by F_m, or by F_m/(in·out) "
        f"(<code>per-weight</code>, since F_m grows with a matrix's size); plain LoRA is then "
        f"trained on only {doc['k']} of them: the TOP-{doc['k']}, the BOTTOM-{doc['k']}, and a "
        f"RANDOM-{doc['k']} drawn until its LoRA parameter count is within 5 % of TOP's. The "
        f"three models of a seed share the seed and are paired{status}.</p>"
        f"<ul>{items}</ul>{stability}"
        f'<figure><img src="images/{FIGURE_STEM}.png" style="width:80%" alt="premise test">'
        "<figcaption>Held-out accuracy (final epoch) of the three sets; grey lines join one "
        "seed's models, red is the mean (higher is better).</figcaption></figure></section>"
    )


SUPERSEDED = (
    "<section><h2>Superseded</h2><p>The earlier study "
    "(<a href='superseded-2-epochs/index.html'>superseded-2-epochs/</a>, its data kept "
    "there) trained 2 epochs on 48 tokens: LoRA reached 0.663 against a majority class of "
    "0.654, two of five seeds predicted only the majority class in every configuration, "
    "and its λ jumped from no effect to collapse, so its null result had no power. This "
    "page replaces it.</p></section>"
)
CURVES = (
    '<figure class="img-pair"><img src="images/sweep_lambda_curve.png" style="width:48%" '
    'alt="accuracy vs the target ratio"><img src="images/sweep_penalty_ratio.png" '
    'style="width:48%" alt="penalty ratio"><figcaption>Left: accuracy vs the target ratio, '
    "mean ± 95 % t-interval over seeds; grey band: plain LoRA. Right: "
    "‖∇P‖/‖∇L_task‖.</figcaption></figure>"
)
DESIGN = (
    "Setting: drugreview3 (the offline drug reviews, 3 classes, 600 training and 379 held-out "
    "reviews), MiniLM-L6, LoRA r = 8 on query, key, value, attention output, intermediate and "
    "output (36 matrices), pooler and classifier trained, AdamW lr 1e-3, batch 16, 3 epochs, "
    "64 tokens with left truncation, K = 30, fp32 on CPU. Sweep: lora, l2-lora, fw-lora (sum) "
    "and fw-lora (max) at three strengths (target ratios ‖∇P‖/‖∇L_task‖ = 0.03, 0.1, 0.3 via "
    'λ = "auto"), seeds 1–10, paired by seed: 10 configurations × 10 seeds = 100 runs. Tests: '
    "each FW-LoRA variant against l2-lora and against lora at each strength (12 comparisons), "
    "paired t and Wilcoxon, Holm-corrected across the family, with the minimum detectable "
    "paired difference at 80 % power. Premise test: fwlora targeting, k = 9 of 36, both "
    "rankings (F_m and F_m/(in·out)), seeds 1–10: 60 runs."
)


def _premise_artefacts(premise: dict[str, Any], site: Path) -> None:
    (site / "data" / "premise.json").write_text(json.dumps(premise, indent=2))
    for path in targeting_figure(premise, site / "figures"):
        if path.suffix == ".png":
            shutil.move(path, site / "images" / path.name)


def build_pending(site: Path, premise: dict[str, Any] | None) -> Path:
    """The page while no sweep run has finished: the design, the commands, the status."""
    from datetime import datetime, timezone

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        '<h2 class="paper-title">Does the Fisher weighting matter? FW-LoRA against a uniform '
        "L2 control and the premise test, on 3-class drug reviews</h2>",
        "<section><h2>Answer</h2><p>Not answered yet. The study below is running (niced, on a "
        f"shared 2-core machine); when this page was built ({when}) none of its "
        f"{GRID_CONFIGS * PLANNED_SEEDS} sweep runs had finished, so this page states no result. "
        "<code>docs/study/aggregate.sh</code> rebuilds it from whatever has finished, with the "
        "answer computed from the runs.</p></section>",
        f"<section><h2>Design</h2><p>{escape(DESIGN)}</p></section>",
        _premise_section(premise),
        f"<section><h2>Reproduce</h2><pre><code>{escape(COMMANDS)}</code></pre></section>",
        SUPERSEDED,
    ]
    index = site / "index.html"
    index.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return index


def build(sweep_dir: Path | None, premise_dirs: list[Path], site: Path) -> Path:
    for sub in ("images", "figures", "data"):
        (site / sub).mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    if sweep_dir is not None and (sweep_dir / "metrics.json").is_file():  # an experiment
        runs = list(json.loads((sweep_dir / "metrics.json").read_text())["runs"].values())
    elif sweep_dir is not None:  # one part still running: its finished runs, no figures
        runs = finished_runs(sweep_dir)
    if not runs:
        premise = premise_doc(premise_dirs) if premise_dirs else None
        if premise:
            _premise_artefacts(premise, site)
        return build_pending(site, premise)
    for name in SWEEP_ARTEFACTS:
        if (sweep_dir / name).is_file():
            shutil.copyfile(sweep_dir / name, site / "data" / name)
    curves = True
    for stem in SWEEP_FIGURES:
        for ext, sub in (("png", "images"), ("pdf", "figures")):
            src, dst = sweep_dir / "figures" / f"{stem}.{ext}", site / sub / f"{stem}.{ext}"
            dst.unlink(missing_ok=True)  # none from an earlier build
            if src.is_file():
                shutil.copyfile(src, dst)
            else:
                curves = False
    family = family_tests(runs)
    check = majority_check(runs)
    ratios = penalty_ratios(runs)
    premise = premise_doc(premise_dirs) if premise_dirs else None
    agreement = prediction_agreement(sweep_dir, runs)
    (site / "data" / "study_tests.json").write_text(
        json.dumps(
            {
                "family": family,
                "majority_check": check,
                "penalty_ratios": ratios,
                "predictions_differing_from_l2_lora": agreement,
            },
            indent=2,
        )
    )
    if premise:
        _premise_artefacts(premise, site)
    per_seed = {s: sum(1 for r in runs if r["seed"] == s) for s in {r["seed"] for r in runs}}
    seeds = sorted(s for s, n in per_seed.items() if n == GRID_CONFIGS)
    cfg, data = runs[0]["config"], runs[0]["data"]
    lora_line = ", ".join(f"seed {s}: {a:.4f}" for s, a in check["lora"].items())
    pilot = ratios_line(ratios)
    parts = [
        '<h2 class="paper-title">Does the Fisher weighting matter? FW-LoRA against a uniform '
        "L2 control and the premise test, on 3-class drug reviews</h2>",
        f"<section><h2>Answer</h2><p>{escape(_answer(family, premise, seeds))}</p>"
        f"<p>Status: {len(runs)} of {GRID_CONFIGS * PLANNED_SEEDS} sweep runs finished "
        f"({len(seeds)} seeds complete); numbers on this page are recomputed from the runs by "
        "<code>docs/study/aggregate.sh</code>.</p></section>",
        "<section><h2>Setup</h2><ul>"
        + _li(
            "Data",
            escape(
                f"{data['source']}; classes {data['label_names']}; {data['train_examples']} "
                f"training and {data['eval_examples']} held-out reviews (held-out class counts "
                f"{data['eval_label_counts']}: majority class {check['majority']:.4f})"
            ),
        )
        + _li(
            "Model and training",
            escape(
                f"{runs[0]['model_display']}, LoRA r = {cfg['rank']}, α = {cfg['lora_alpha']:g} on "
                f"{', '.join(cfg['target_modules'])} (36 matrices), pooler and classifier trained; "
                f"AdamW lr {cfg['lr']:g}, batch {cfg['batch_size']}, {cfg['epochs']} epochs "
                f"({runs[0]['total_steps']} steps), {cfg['max_length']} tokens "
                f"({cfg['truncation_side']} truncation), FW-LoRA K = {cfg['fisher_warmup']}; "
                "fp32 on CPU, one thread per process"
            ),
        )
        + _li(
            "LoRA against the majority class",
            escape(
                f"{lora_line} (majority class {check['majority']:.4f}); runs predicting a "
                f"single class: {', '.join(check['collapsed']) or 'none'}"
            ),
        )
        + _li("Penalty strengths", escape(pilot))
        + "</ul></section>",
        "<section><h2>Results</h2><p>Held-out accuracy of the final epoch (no selection on the "
        "evaluation set), and the penalty's gradient relative to the task's (median over "
        f"penalised steps, then over seeds).</p>{_config_table(runs, ratios)}"
        + (CURVES if curves else "")
        + "</section>",
        "<section><h2>Tests</h2><p>Each FW-LoRA variant against l2-lora at the same strength and "
        "against plain LoRA, paired by seed; Holm-corrected across the family (t and Wilcoxon "
        "separately). The detectable Δ is the smallest true mean paired difference the paired "
        "t-test would find with 80 % power, given the observed SD of the paired differences: "
        "an effect larger than it would have been detected.</p>"
        f"{_tests_table(family)}{_agreement_text(agreement, data['eval_examples'])}</section>",
        _premise_section(premise),
        "<section><h2>Reproduce</h2>"
        f"<pre><code>{escape(COMMANDS)}</code></pre>"
        "<p>Data: <a href='data/study_tests.json'>data/study_tests.json</a> (the tests above), "
        "<a href='data/premise.json'>data/premise.json</a> (the premise test), and the sweep's "
        + ", ".join(f"<a href='data/{n}'>data/{n}</a>" for n in SWEEP_ARTEFACTS)
        + ".</p></section>",
        SUPERSEDED,
    ]
    index = site / "index.html"
    index.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return index


def ratios_line(ratios: dict[str, dict[int, float]]) -> str:
    """How the strengths were set, and the penalty ratio each configuration reached."""
    cells = [
        f"{label} {np.median(list(by_seed.values())):.2g}"
        for label, by_seed in sorted(ratios.items())
    ]
    return (
        "three target ratios ‖∇P‖/‖∇L_task‖ = 0.03, 0.1, 0.3 (labels tr0.03, tr0.1, tr0.3): "
        'λ = "auto", calibrated once per run at its first penalised step so that the penalty\'s '
        "gradient is that fraction of the task's (issue 15), for every FW-LoRA variant and "
        "l2-lora alike. Median ratio over each run's penalised steps, median over seeds: "
        + ("; ".join(cells) if cells else "none yet")
    )


if __name__ == "__main__":
    sweep = Path(sys.argv[1]) if sys.argv[1] else None
    # The premise test's folders, colon-separated (its parts: premise, premise-b).
    parts = sys.argv[2].split(":") if len(sys.argv) > 2 else []
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).parent
    print(build(sweep, [Path(p) for p in parts if p], out))
