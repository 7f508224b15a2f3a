"""Builds docs/study/ (index.html, images/, figures/, data/) from a finished `fwlora sweep`
(or `fwlora merge`) experiment folder. Every number on the page is read from that folder's
artefacts; only the setup description and the finding's wording are written here.

    cd docs/study/superseded-2-epochs && python build_page.py EXPERIMENT_DIR .
"""

from __future__ import annotations

import json
import shutil
import sys
from html import escape
from pathlib import Path
from typing import Any

import yaml

from fwlora.harness.sweep import series_weights

ARTEFACTS = (
    "metrics.json",
    "aggregated_metrics.json",
    "significance_tests.json",
    "sweep_tests.json",
    "experiment.yaml",
)
PAIR = ("sweep_lambda_curve", "sweep_penalty_ratio")
SINGLE = ("comparison_best_eval_acc_bar_chart",)

# How the study was run (see the Setup section): filled in by hand from the run scripts.
COMMANDS = """\
# two processes, one CPU thread each, the seeds split between them (offline: HF_HUB_OFFLINE=1):
fwlora sweep --methods lora,fw-lora,l2-lora --lams 1e-4,1e-2,1e-1 --normalizations sum,max \\
    --seeds 1,3,5 --model minilm-l6 --task drugreview3 --lr 1e-3 --batch-size 16 \\
    --max-length 48 --truncation-side left --modules-to-save classifier,pooler \\
    --fisher-warmup 30 --epochs 2 --num-threads 1 -o study-a --quiet
fwlora sweep ... --seeds 2,4 ... -o study-b --quiet      # otherwise identical
fwlora merge study-a study-b -o study                     # one experiment: every seed
python docs/study/build_page.py study docs/study          # this page
"""
# Six of seed 5's runs (l2-lora and fw-lora max at each λ) were run a second time in a third
# process with the same settings: identical per-step losses, ratios and predictions.
REPEATED = (
    "Determinism: six of seed 5's runs (l2-lora and fw-lora (max) at each λ) were run a second "
    "time, in another process with the same settings; their per-step training losses, "
    "penalty ratios and held-out accuracies were identical."
)


def _li(key: str, value: str) -> str:
    return f"<li><strong>{escape(key)}:</strong> {value}</li>"


def _ci(cell: dict[str, Any]) -> str:
    ci = cell["ci95"]
    if ci["low"] is None:
        return f"{ci['mean']:.4f}"
    return f"{ci['mean']:.4f} ± {ci['mean'] - ci['low']:.4f}"


def _p(test: dict[str, Any] | None) -> str:
    return "n/a" if not test else f"{test['p_value']:.3g}"


def _curve_table(doc: dict[str, Any]) -> str:
    curve = doc["curve"]
    lams = sorted({p["lam"] for pts in curve["series"].values() for p in pts})
    head = "".join(f"<th>λ = {lam:g}</th>" for lam in lams)
    rows = []
    if curve["lora"]:
        cells = "".join(f"<td>{_ci(curve['lora'])}</td>" for _ in lams)
        rows.append(f"<tr><td>LoRA (no penalty)</td>{cells}</tr>")
    for name, points in curve["series"].items():
        by_lam = {p["lam"]: p for p in points}
        cells = ""
        for lam in lams:
            p = by_lam.get(lam)
            if p is None:
                cells += "<td>–</td>"
                continue
            r = p["penalty_grad_ratio"]
            ratio = "" if r is None else f"<br><small>‖∇P‖/‖∇L‖ = {r:.2g}</small>"
            cells += f"<td>{_ci(p)}{ratio}</td>"
        rows.append(f"<tr><td>{escape(name)}</td>{cells}</tr>")
    return (
        f"<table><thead><tr><th>method</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _weight_items(doc: dict[str, Any]) -> list[str]:
    """The per-matrix penalty weights 1 − I_m each series applied (frozen importances)."""
    items = []
    for name, points in doc["curve"]["series"].items():
        w = series_weights(points)
        if w:
            text = (
                f"1 − I_m between {w['min']:.3f} and {w['max']:.3f} over the "
                f"{w['matrices']} adapted matrices (all runs of the series); total "
                f"Σ_m (1 − I_m) = {w['total']:.2f}"
            )
            items.append(_li(name, escape(text)))
    return items


def _fw_vs_l2_items(doc: dict[str, Any]) -> list[str]:
    items = []
    for test in doc["fw_vs_l2"]:
        across = test["across_seeds"] or {}
        pooled = test.get("mcnemar_pooled") or {}
        per_seed = ", ".join(
            f"seed {m['seed']}: b = {m['b']}, c = {m['c']}" for m in test["mcnemar_per_seed"] or []
        )
        text = (
            f"Δ accuracy {across.get('mean_difference', 0.0):+.4f} (mean over "
            f"{len(test['seeds'])} seeds); paired t-test p = {_p(across.get('paired_t'))}; "
            f"Wilcoxon signed-rank p = {_p(across.get('wilcoxon'))}; McNemar pooled over seeds "
            f"b = {pooled.get('b')}, c = {pooled.get('c')}, p = {_p(pooled)} ({per_seed})"
        )
        items.append(_li(f"{test['method']} vs l2-lora at λ = {test['lam']:g}", escape(text)))
    return items


def _vs_lora_items(sig: dict[str, Any]) -> list[str]:
    items = []
    for comp in sig["comparisons"]:
        ci = comp["bootstrap_ci"]
        t = comp["across_seeds"]["final_eval_acc"]["paired_t"]
        text = (
            f"Δ accuracy {ci['estimate']:+.4f} (95 % bootstrap CI {ci['low']:+.4f} to "
            f"{ci['high']:+.4f}); paired t-test over seeds p = {_p(t)}"
        )
        items.append(_li(f"{comp['method']} vs {comp['baseline']}", escape(text)))
    return items


def _runtime(runs: list[dict[str, Any]]) -> str:
    times = sorted(r["runtime_sec"] for r in runs)
    return f"median {times[len(times) // 2]:.0f} s per run (range {times[0]:.0f}–{times[-1]:.0f} s)"


def build(exp_dir: Path, site: Path, finding: str) -> Path:
    doc = json.loads((exp_dir / "sweep_tests.json").read_text())
    sig = json.loads((exp_dir / "significance_tests.json").read_text())
    runs = list(json.loads((exp_dir / "metrics.json").read_text())["runs"].values())
    for sub in ("images", "figures", "data"):
        (site / sub).mkdir(parents=True, exist_ok=True)
    for name in ARTEFACTS:
        shutil.copyfile(exp_dir / name, site / "data" / name)
    for stem in (*PAIR, *SINGLE):
        shutil.copyfile(exp_dir / "figures" / f"{stem}.png", site / "images" / f"{stem}.png")
        shutil.copyfile(exp_dir / "figures" / f"{stem}.pdf", site / "figures" / f"{stem}.pdf")
    first = runs[0]
    cfg = first["config"]
    data = first["data"]
    seeds = sorted({r["seed"] for r in runs})
    labels = list(dict.fromkeys(r["label"] for r in runs))
    varied = ("quiet", "seed", "variant", "method", "fisher_lam", "fisher_normalization")
    settings = {k: v for k, v in cfg.items() if k not in varied}
    parts = [
        '<h2 class="paper-title">Does the Fisher weighting matter? FW-LoRA against a uniform '
        "L2 control on 3-class drug reviews</h2>",
        "<section><h2>Abstract</h2>"
        f"<p>{escape(finding)}</p>"
        "<p>Issue 10 asked whether FW-LoRA's Fisher weighting helps, rather than any L2 "
        "penalty on the adapter update ΔW. This study answers it with a control, "
        "<code>l2-lora</code>: the same penalty path with uniform importances, at the same "
        "λ, over "
        f"{len(seeds)} seeds.</p></section>",
        "<section><h2>Setup</h2><ul>"
        + _li(
            "Data",
            escape(
                f"{data['source']}; {len(data['label_names'])} classes {data['label_names']}; "
                f"{data['train_examples']} training and {data['eval_examples']} held-out "
                f"reviews (class counts {data['train_label_counts']} / "
                f"{data['eval_label_counts']})"
            ),
        )
        + _li(
            "Model",
            escape(
                f"{first['model_display']} ({cfg['model']}), LoRA r = {cfg['rank']}, "
                f"α = {cfg['lora_alpha']:g} on {', '.join(cfg['target_modules'])}; pooler and "
                "classifier trained (modules_to_save), identically for every method"
            ),
        )
        + _li(
            "Training",
            escape(
                f"AdamW lr {cfg['lr']:g}, weight decay {cfg['weight_decay']:g}, batch "
                f"{cfg['batch_size']}, {cfg['epochs']} epochs ({first['total_steps']} steps), "
                f"{cfg['max_length']} tokens ({cfg['truncation_side']} truncation), linear "
                f"schedule with {cfg['warmup_ratio']:.0%} warm-up, fp32 on CPU; FW-LoRA K = "
                f"{cfg['fisher_warmup']}, α = {cfg['fisher_alpha']:g}"
            ),
        )
        + _li(
            "Grid",
            escape(
                f"{len(labels)} configurations × {len(seeds)} seeds ({', '.join(map(str, seeds))})"
                f" = {len(runs)} runs: {', '.join(labels)}"
            ),
        )
        + _li(
            "Deviation from the issue's settings",
            escape(
                "64 tokens and 3 epochs were asked for; a run took 3–10 minutes on the shared "
                "2-core machine, so the study used 48 tokens (the demo's) and 2 epochs to fit "
                "50 runs in the time available. The comparison is within this setting: every "
                "method shares it."
            ),
        )
        + _li("Runtime", escape(_runtime(runs) + "; one CPU thread per process"))
        + _li("Repeat", escape(REPEATED))
        + "</ul></section>",
        "<section><h2>Method</h2>"
        "<p>FW-LoRA minimises L_task + λ Σ_m (1 − I_m) ‖ΔW_m‖²_F with importances I_m from "
        "the Fisher EMA of the first K steps (normalised to sum 1, or to max 1). The control "
        "l2-lora sets I_m = 1/M for all M adapted matrices: the same code path and the same "
        "total weight Σ_m (1 − I_m) = M − 1 as the sum normalisation, with no Fisher "
        "information. At each λ, fw-lora (sum) and l2-lora differ only in where the penalty "
        "falls. ‖∇P‖/‖∇L_task‖ is the norm of the penalty's gradient over all LoRA factors "
        "divided by the task gradient's, at each penalised step (median over the run).</p>"
        f"<pre><code>{escape(COMMANDS)}</code></pre>"
        "<p>Resolved settings of the runs (besides method, λ, normalisation, seed):</p>"
        f"<pre><code>{escape(yaml.safe_dump(settings, sort_keys=False))}</code></pre>"
        "</section>",
        "<section><h2>Results</h2>"
        "<p>Held-out accuracy of the final epoch (no selection on the evaluation set), mean ± "
        "half-width of the 95 % t-interval over seeds; below each, the median ‖∇P‖/‖∇L_task‖. "
        "Higher accuracy is better.</p>"
        f"{_curve_table(doc)}"
        '<figure class="img-pair">'
        '<img src="images/sweep_lambda_curve.png" style="width:48%" alt="accuracy vs lambda">'
        '<img src="images/sweep_penalty_ratio.png" style="width:48%" alt="penalty ratio">'
        "<figcaption>Figure 1: Left: held-out accuracy vs λ (log axis), mean ± 95 % "
        "t-interval over seeds (series offset slightly along λ for legibility); "
        "the grey band is plain LoRA (mean ± 95 % CI). Right: the "
        "penalty's gradient relative to the task's (median over penalised steps and seeds); "
        "below the dotted 1e-2 the penalty barely changes training.</figcaption></figure>"
        "<p>The penalty weights each method applied (how far the Fisher importances move "
        "the weights away from the uniform control's):</p>"
        f"<ul>{''.join(_weight_items(doc))}</ul>"
        '<figure><img src="images/comparison_best_eval_acc_bar_chart.png" style="width:70%" '
        'alt="best accuracy per configuration"><figcaption>Figure 2: Best-epoch held-out '
        "accuracy per configuration, mean ± std over seeds, dots are seeds (higher is "
        "better).</figcaption></figure>"
        "</section>",
        "<section><h2>Significance</h2>"
        "<p>fw-lora against the l2-lora control at the same λ, pairing runs by seed (final "
        "epoch). The pooled McNemar counts the same examples once per seed, so its p-value is "
        "optimistic; the paired tests over seeds are the primary ones.</p>"
        f"<ul>{''.join(_fw_vs_l2_items(doc))}</ul>"
        "<p>Every configuration against plain LoRA:</p>"
        f"<ul>{''.join(_vs_lora_items(sig))}</ul>"
        "</section>",
        "<section><h2>Artefacts</h2><ul>"
        + "".join(
            _li(name, f'<a href="data/{name}" target="_blank">data/{name}</a>')
            for name in ARTEFACTS
        )
        + "".join(
            _li(
                f"{stem}.pdf",
                f'<a href="figures/{stem}.pdf" target="_blank">figures/{stem}.pdf</a>',
            )
            for stem in (*PAIR, *SINGLE)
        )
        + "</ul></section>",
    ]
    index = site / "index.html"
    index.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return index


# Written after reading the numbers of the study (docs/study/data/sweep_tests.json).
FINDING = (
    "On 3-class drug reviews (MiniLM-L6, 5 seeds), FW-LoRA with the paper's sum "
    "normalisation made exactly the same held-out predictions as its uniform L2 control "
    "l2-lora at every λ in {1e-4, 1e-2, 1e-1} (McNemar b = c = 0 over 5 × 379 predictions "
    "at each λ): sum-normalised importances keep every penalty weight 1 − I_m between 0.80 "
    "and 1.00 around the control's 0.972, so the Fisher weighting barely moves the penalty. "
    "The max normalisation, which does reallocate it (weights 0.00 to 1.00), differed from "
    "the control by −0.0016 accuracy at λ = 1e-2 (paired t-test p = 0.43) and +0.0005 at "
    "λ = 1e-1 (p = 0.37). At λ = 1e-4, the paper's value, the penalty's gradient is 1.4e-3 "
    "of the task gradient and every method matches plain LoRA (one of 5 × 379 predictions "
    "differs); at λ = 1e-1 every penalised method falls to or next to the majority class "
    "(0.6544 to 0.6549, against LoRA's 0.6633 ± 0.0138). In this "
    "setting, which is weak (the models stay close to the majority-class accuracy of "
    "0.6544), the study finds no evidence that the Fisher weighting matters."
)

if __name__ == "__main__":
    exp_dir = Path(sys.argv[1])
    site = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent
    print(build(exp_dir, site, FINDING))
