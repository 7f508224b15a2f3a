"""Builds docs/study/index.html (and images/, figures/, data/page_numbers.json) from the
committed data in docs/study/data/ alone: every number on the page comes from
`study.numbers`, which `tests/harness/test_study_page.py` recomputes and checks against the page.

    python docs/study/build_page.py [docs/study]

(`docs/study/aggregate.sh` first copies the finished runs of the running parts into data/.)
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study

PLANNED_SEEDS = 10
ARM_TEXT = {
    "random": "size-matched RANDOM",
    "type": "type-matched",
    "layer": "layer-matched",
    "bottom": "BOTTOM (confounded)",
}

COMMANDS = """\
# from the repository root, offline (HF_HUB_OFFLINE=1); every part niced and resumable:
docs/study/run_study.sh round2   # round 2: the penalty where it binds + the premise test
#   fwlora sweep --methods fw-lora,l2-lora --normalizations max --target-ratios 1,3,10 \\
#     --seeds 1,...,10 --model minilm-l6 --task drugreview3 --epochs 3 --max-length 64 \\
#     --truncation-side left --fisher-warmup 30 --lr 1e-3 --batch-size 16 \\
#     --modules-to-save classifier,pooler --num-threads 1 -o runs/bind
#   fwlora targeting --k 9 --rank-by fisher --seeds 1,...,10 --evaluate final (same
#     settings) -o runs/premise2
docs/study/run_study.sh          # round 1 (done): the λ sweep at targets 0.03, 0.1, 0.3
docs/study/aggregate.sh          # copies finished runs into data/ and rebuilds this page
"""


# ------------------------------------------------------------------ one comparison in words
def comparison(c: dict[str, Any], digits: int = 4) -> str:
    """'+0.0013 [95 % CI −0.0020, +0.0047], equivalent (TOST p 1e-04, Holm over 6)'."""
    if c["ci_low"] is None:
        return f"{c['mean_difference']:+.{digits}f} over {c['n']} seed (no interval)"
    text = (
        f"{c['mean_difference']:+.{digits}f} [95 % CI {c['ci_low']:+.{digits}f}, "
        f"{c['ci_high']:+.{digits}f}], {c['verdict']}"
    )
    if c["verdict"] == "different":
        return text + f" (t-test p {c['p_difference_holm']:.2g}, Holm over {c['family_size']})"
    return text + f" (TOST p {c['p_equivalence_holm']:.2g}, Holm over {c['family_size']})"


def reviews(x: float, n: int) -> str:
    return f"{x * n:.1f}"


# ------------------------------------------------------------------ the answer paragraph
def answer(n: dict[str, Any]) -> list[str]:
    """The page's first paragraphs, each a sentence group with its numbers."""
    s, r1, m = n["sum_normalisation"], n["round1"], n["margin"]
    out = [
        "<b>Sum normalisation is the uniform control by construction on this model.</b> With "
        f"{s['matrices']} adapted matrices, FW-LoRA (sum)'s per-matrix penalty weights "
        f"1 − I<sub>m</sub> lie in [{s['min']:.3f}, {s['max']:.4f}] over its {s['runs']} runs "
        f"(median spread within one run {s['per_run_spread_median']:.3f}), against l2-lora's "
        f"{s['control_weight']:.3f} for every matrix: {s['relative_min']:.2f}–"
        f"{s['relative_max']:.2f}× the control's strength. That FW-LoRA (sum) and l2-lora "
        "train alike is therefore expected, not a finding about Fisher information."
    ]
    v = r1["verdicts"]["acc"]
    largest = max(r1["fw_vs_l2"], key=lambda t: abs(t["acc"]["mean_difference"]))
    out.append(
        "<b>Round 1, weak penalties</b> (λ calibrated to targets 0.03–0.3; median achieved "
        f"‖∇P‖/‖∇L<sub>task</sub>‖ at most {r1['max_achieved_ratio']:.3f}): of the "
        f"{sum(v.values())} comparisons FW-LoRA − l2-lora (sum and max, three strengths, 10 "
        f"seeds), {v['equivalent']} are equivalent within ±{m:g} accuracy (±"
        f"{reviews(m, n['eval_examples'])} of {n['eval_examples']} reviews; TOST, Holm over "
        f"{r1['family_size']['acc']}), {v['different']} different, {v['inconclusive']} "
        f"inconclusive; on macro-F1 {r1['verdicts']['macro_f1']['equivalent']} equivalent. "
        f"The largest: {largest['method']} at target {largest['target']:g}, "
        f"{comparison(largest['acc'])}."
    )
    if "round2" in n:
        out.append(_round2_answer(n["round2"]))
    if "premise" in n:
        out.append(_premise_answer(n["premise"]))
    out.append(
        "<b>Limits.</b> One 22 M-parameter encoder (MiniLM-L6), one task (3-class drug "
        f"reviews, 600 training and {n['eval_examples']} held-out reviews), 3 epochs; the "
        "paper's setting is roberta-base on GLUE. An equivalence verdict holds for this margin, "
        "model and task, not beyond; an inconclusive one says the interval is too wide to tell."
    )
    return out


def _round2_answer(r2: dict[str, Any]) -> str:
    cost = {(c["method"], c["target"]): c for c in r2["cost"]}
    l2 = [cost[k] for k in sorted(cost) if k[0] == "l2-lora"]
    text = (
        f"<b>Round 2, the penalty where it binds</b> (targets 1, 3, 10; {_seeds(r2['seeds'])}): "
        "l2-lora reaches a median "
        "achieved ratio of "
        + ", ".join(f"{c['achieved_ratio']:.3f}" for c in l2)
        + " and costs, against plain LoRA, "
        + "; ".join(f"{comparison(c['acc'])} at target {c['target']:g}" for c in l2)
        + ". "
    )
    fw = [t for t in r2["equal_strength"] if t["method"] == "fw-lora (max)" and "acc" in t]
    if fw:
        text += "FW-LoRA (max) − l2-lora at equal achieved strength: " + "; ".join(
            f"{comparison(t['acc'])} at ratio {t['achieved_ratio']:g} ({t['seeds']} seeds)"
            for t in fw
        )
        text += "."
    else:
        text += "No achieved strength is reached by both methods on two seeds yet."
    return text


def _seeds(seeds: list[int]) -> str:
    if len(seeds) >= PLANNED_SEEDS:
        return f"{len(seeds)} seeds"
    return f"seeds {', '.join(map(str, seeds))} so far of {PLANNED_SEEDS}"


def _premise_answer(p: dict[str, Any]) -> str:
    parts = []
    for ranking, section in p["rankings"].items():
        comps = section["comparisons"]
        parts.append(
            f"ranked by {ranking} ({len(section['seeds_complete'])} seeds complete), "
            + "; ".join(
                f"TOP − {ARM_TEXT[c]}: accuracy {comparison(comps[f'top_minus_{c}']['acc'])}, "
                f"macro-F1 {comparison(comps[f'top_minus_{c}']['macro_f1'])}"
                for c in ("type", "layer", "random", "bottom")
            )
        )
    overlap = next(iter(p["rankings"].values()))["overlap_with_top"]
    shared = ", ".join(
        f"{ARM_TEXT[w]} {min(v)}–{max(v)} (median {float(np.median(v)):g})"
        for w, v in overlap.items()
    )
    return (
        f"<b>The premise test</b> (plain LoRA training only {p['k']} of the {p['matrices']} "
        "matrices, all arms of a seed one model with the others frozen at zero): "
        + ". ".join(parts)
        + f". The F<sub>m</sub> ranking is stable across seeds (Spearman mean "
        f"{p['spearman_mean']:.2f}, min {p['spearman_min']:.2f}). Matrices each control "
        f"shares with TOP's {p['k']} per seed: {shared}; the layer-matched control repeats "
        "most of TOP by construction (a late layer holds few matrices of TOP's sizes), so it "
        "can only resolve a difference in the few matrices it swaps."
    )


# ------------------------------------------------------------------ tables
def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
        + "</tbody></table>"
    )


def _comp_cells(c: dict[str, Any] | None) -> tuple[str, ...]:
    if not c or c["ci_low"] is None:
        return ("–",) * 5
    w = c["wilcoxon"]
    wil = "–" if not w else f"{w['p_value']:.2g} ({w['method']}, {w['nonzero_pairs']} non-zero)"
    return (
        f"{c['mean_difference']:+.4f}",
        f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]",
        c["verdict"],
        "–" if c["mde_80"] is None else f"{c['mde_80']:.4f}",
        wil,
    )


COMP_HEAD = ("Δ", "95 % CI", "verdict", "MDE (planning, 80 %)", "Wilcoxon p")


def tables(n: dict[str, Any]) -> str:
    parts = ["<h2>Round 1: FW-LoRA − l2-lora at weak strengths (10 seeds)</h2>"]
    rows = []
    for t in n["round1"]["fw_vs_l2"]:
        for metric in ("acc", "macro_f1"):
            rows.append((t["method"], f"{t['target']:g}", metric, *_comp_cells(t.get(metric))))
    parts.append(_table(("method", "target", "metric", *COMP_HEAD), rows))
    if "round2" in n:
        r2 = n["round2"]
        parts.append("<h2>Round 2: each configuration (mean over its seeds)</h2>")
        parts.append(
            _table(
                ("configuration", "seeds", "accuracy", "macro-F1", "median achieved ratio"),
                [
                    (
                        escape(k),
                        str(p["seeds"]),
                        f"{p['acc']:.4f}",
                        f"{p['macro_f1']:.4f}",
                        f"{p['achieved_ratio_median']:.3f}",
                    )
                    for k, p in r2["points"].items()
                ],
            )
        )
        parts.append("<h2>Round 2: what the penalty costs against plain LoRA</h2>")
        rows = [
            (c["method"], f"{c['target']:g}", m, *_comp_cells(c.get(m)))
            for c in r2["cost"]
            for m in ("acc", "macro_f1")
        ]
        parts.append(_table(("method", "target", "metric", *COMP_HEAD), rows))
        parts.append("<h2>Round 2: FW-LoRA − l2-lora at equal achieved strength</h2>")
        rows = [
            (t["method"], f"{t['achieved_ratio']:g}", str(t["seeds"]), m, *_comp_cells(t.get(m)))
            for t in r2["equal_strength"]
            for m in ("acc", "macro_f1")
        ]
        parts.append(_table(("method", "achieved ratio", "seeds", "metric", *COMP_HEAD), rows))
    if "premise" in n:
        parts.append("<h2>The premise test: TOP − each control</h2>")
        rows = []
        for ranking, section in n["premise"]["rankings"].items():
            for key, comp in section["comparisons"].items():
                control = key.removeprefix("top_minus_")
                for m in ("acc", "macro_f1"):
                    rows.append((ranking, ARM_TEXT[control], m, *_comp_cells(comp.get(m))))
        parts.append(_table(("ranking", "TOP −", "metric", *COMP_HEAD), rows))
    return "".join(parts)


# ------------------------------------------------------------------ figures
def frontier_figure(r2: dict[str, Any], out: Path) -> None:
    """Accuracy and macro-F1 against the achieved ratio: each seed's runs of a method joined,
    plain LoRA at the left edge."""
    from matplotlib.figure import Figure

    curve = r2["curve"]
    fig = Figure(figsize=(9, 3.6))
    for i, (metric, key) in enumerate((("accuracy", "values"), ("macro-F1", "values_macro_f1"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, (name, points) in enumerate(curve["series"].items()):
            for seed in sorted({s for p in points for s in p["seeds"]}):
                xs, ys = [], []
                for p in points:
                    if seed in p["seeds"]:
                        k = p["seeds"].index(seed)
                        xs.append(p["achieved_ratios"][k])
                        ys.append(p[key][k])
                order = np.argsort(xs)
                ax.plot(
                    np.asarray(xs)[order],
                    np.asarray(ys)[order],
                    "-",
                    color=f"C{j}",
                    alpha=0.35,
                    lw=0.8,
                )
            mx = [p["penalty_grad_ratio"] for p in points]
            my = [float(np.mean(p[key])) for p in points]
            ax.plot(mx, my, "o-", color=f"C{j}", lw=2, label=name)
        lora = curve["lora"]
        base = float(np.mean(lora["values" if key == "values" else "values_macro_f1"]))
        ax.axhline(base, color="0.3", ls="--", lw=1, label="plain LoRA")
        ax.set_xscale("log")
        ax.set_xlabel("median achieved ‖∇P‖/‖∇L_task‖")
        ax.set_ylabel(f"held-out {metric} (final epoch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    for folder, fmt in ((out / "images", "png"), (out / "figures", "pdf")):
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(
            folder / f"cost_frontier.{fmt}",
            dpi=150,
            metadata={"CreationDate": None} if fmt == "pdf" else None,
        )


# ------------------------------------------------------------------ the page
def build(site: Path) -> Path:
    data = site / "data"
    n = study.numbers(data)
    (data / "page_numbers.json").write_text(json.dumps(n, indent=1, default=float) + "\n")
    figures = []
    if "round2" in n:
        frontier_figure(n["round2"], site)
        figures.append(
            (
                "cost_frontier.png",
                "Round 2: held-out accuracy and macro-F1 against the median "
                "achieved penalty ratio; thin lines join one seed's runs of a method, thick lines "
                "the means; dashed: plain LoRA.",
            )
        )
    premise_doc = data / "round2" / "targeting.json"
    if premise_doc.is_file():
        from fwlora.harness.targeting import targeting_figure

        targeting_figure(json.loads(premise_doc.read_text()), site / "figures")
        (site / "images").mkdir(exist_ok=True)
        (site / "images" / "targeting_accuracy.png").write_bytes(
            (site / "figures" / "targeting_accuracy.png").read_bytes()
        )
        (site / "figures" / "targeting_accuracy.png").unlink()
        figures.append(
            (
                "targeting_accuracy.png",
                "The premise test: each seed's five arms joined by a grey line, the mean in red.",
            )
        )
    never = n["round1_never_neutral"]
    body = "".join(f"<p>{p}</p>" for p in answer(n))
    body += (
        f"<p>Accuracy alone hides the task: {never['never']} of the {never['runs']} round-1 runs "
        f"never predict “neutral” ({never['support']} of {n['eval_examples']} reviews), so "
        "every comparison is also made on macro-F1 (per-class recall is in each run's "
        "metrics).</p>"
    )
    if "round2_never_neutral" in n:
        r = n["round2_never_neutral"]
        body += f"<p>Round 2: {r['never']} of {r['runs']} runs never predict “neutral”.</p>"
    body += (
        "<p>How to read the tables: Δ is the mean paired difference over seeds with its 95 % "
        "t-interval (unadjusted; the verdicts use Holm-adjusted p-values, so an interval that "
        "just excludes 0 can still read inconclusive). <i>different</i>: the paired t-test "
        "rejects Δ = 0; <i>equivalent</i>: the "
        f"two one-sided tests (TOST) place Δ inside ±{n['margin']:g}; otherwise "
        "<i>inconclusive</i>. Both tests are Holm-adjusted over their family (its size is "
        "stated). The MDE is a planning figure (the smallest Δ a paired t-test at 0.05 detects "
        "with 80 % power at the observed SD), not evidence of absence. Wilcoxon: zero "
        "differences dropped; exact when the non-zero |differences| have no ties, else the "
        "normal approximation.</p>"
    )
    body += tables(n)
    for name, caption in figures:
        text = escape(caption)
        body += f'<figure><img src="images/{name}" alt="{text}"><figcaption>{text}</figcaption>'
        body += "</figure>"
    body += f"<h2>Reproduce</h2><pre>{escape(COMMANDS)}</pre>"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>FW-LoRA study</title>"
        "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.45}"
        "table{border-collapse:collapse;font-size:0.85rem}td,th{border:1px solid #ccc;"
        "padding:2px 6px}img{max-width:100%}</style></head><body>"
        "<h1>Does the Fisher weighting matter? The study, round 1 and round 2</h1>"
        f"{body}</body></html>\n"
    )
    (site / "index.html").write_text(page, encoding="utf-8")
    return site / "index.html"


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent))
