"""A static results page for GitHub Pages: `index.html` (an HTML fragment following the
paper's page conventions) + `images/` (PNG figures) + `data/` (the JSON artefacts)."""

from __future__ import annotations

import json
import shutil
from html import escape
from pathlib import Path

import yaml

from fwlora.harness import stats
from fwlora.harness.artefacts import group_runs
from fwlora.harness.errors import HarnessError, read_saved
from fwlora.harness.experiment import Experiment, load_experiment
from fwlora.harness.metrics import primary_metric
from fwlora.harness.output import MARKER
from fwlora.harness.sweep import SWEEP_TESTS, strength_text
from fwlora.harness.targeting import FIGURE_STEM, TARGETING_FILE, summary_lines

ARTEFACTS = ("metrics.json", "aggregated_metrics.json", "significance_tests.json")
CAPTIONS = {
    "confusion_matrix": "Validation confusion matrix (final epoch), {label}, seed {seed}",
    "eval_acc_learning_curve": "Validation accuracy per epoch (higher is better), {label}, "
    "seed {seed}",
    "train_loss_learning_curve": "Training loss per step (lower is better), {label}, seed {seed}",
    "importance_heatmap": "Frozen FW-LoRA importances I_m by layer and module type, {label}, "
    "seed {seed}",
}


class _Figures:
    """Copies PNGs into images/ and numbers the figures."""

    def __init__(self, site: Path, prefix: str) -> None:
        self.images = site / "images"
        self.prefix = prefix
        self.count = 0

    def figure(self, source: Path, caption: str) -> str:
        png = source.with_suffix(".png")  # the page shows PNGs; PDFs stay in the artefacts
        if not png.is_file():
            return ""
        target = f"{self.prefix}{png.name}"
        shutil.copyfile(png, self.images / target)
        self.count += 1
        return (
            f'<figure><img src="images/{escape(target)}" style="width:70%" '
            f'alt="{escape(caption)}"><figcaption>Figure {self.count}: {escape(caption)}'
            "</figcaption></figure>"
        )

    def pair(self, first: Path, second: Path, caption: str) -> str:
        """Two figures side by side (`img-pair`, 48 % each), one caption."""
        pngs = [p.with_suffix(".png") for p in (first, second)]
        if not all(p.is_file() for p in pngs):
            return ""
        images = []
        for png in pngs:
            target = f"{self.prefix}{png.name}"
            shutil.copyfile(png, self.images / target)
            images.append(f'<img src="images/{escape(target)}" style="width:48%" alt="">')
        self.count += 1
        return (
            f'<figure class="img-pair">{"".join(images)}<figcaption>Figure {self.count}: '
            f"{escape(caption)}</figcaption></figure>"
        )


def _li(key: str, value: str) -> str:
    return f"<li><strong>{escape(key)}:</strong> {value}</li>"


def _pm(summary: dict, digits: int = 4) -> str:
    """mean ± std of an aggregated metric (just the mean for a single seed)."""
    if summary["std"] is None:
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def _setup_items(exp: Experiment) -> list[str]:
    first = exp.runs[0]
    cfg = first["config"]
    data = first["data"]
    groups = group_runs(exp.runs)
    adapters = ", ".join(
        f"{escape(label)}: rank {g[0]['adapters']['rank']}, "
        f"{g[0]['adapters']['trainable_params']:,} trainable parameters "
        f"({g[0]['adapters']['budget_percent']:.3f} % of the backbone in adapters)"
        for label, g in groups.items()
    )
    items = [
        _li("Model", escape(f"{first['model_display']} ({first['model']})")),
        _li(
            "Data",
            escape(
                f"{data['task']} from {data['source']}: {data['train_examples']} training and "
                f"{data['eval_examples']} evaluation examples, labels "
                f"{', '.join(data['label_names'])}"
            ),
        ),
        _li("Methods", escape(", ".join(groups))),
        _li("Seeds", escape(", ".join(str(s) for s in sorted({r.seed for r in exp.runs})))),
        _li("Target modules", escape(", ".join(cfg["target_modules"]))),
        _li("Adapters", adapters),
        _li(
            "Optimisation",
            escape(
                f"AdamW lr {cfg['lr']:g}, weight decay {cfg['weight_decay']:g}, linear schedule "
                f"with {cfg['warmup_ratio']:.0%} warm-up, batch {cfg['batch_size']}, "
                f"{cfg['epochs']} epochs, max length {cfg['max_length']}, "
                f"{first['precision']} on {first['device']}, {first['total_steps']} steps"
            ),
        ),
    ]
    items += _fisher_items(exp)
    extras = []
    if cfg.get("modules_to_save"):
        extras.append(f"fully trained with the head: {', '.join(cfg['modules_to_save'])}")
    if cfg.get("truncation_side") == "left":
        extras.append("long inputs keep their last tokens (left truncation)")
    if extras:
        items.append(_li("Also", escape("; ".join(extras))))
    notes = sorted({n for r in exp.runs for n in r.get("notes", [])})
    if notes:
        items.append(_li("Notes", escape("; ".join(notes))))
    return items


def _fisher_items(exp: Experiment) -> list[str]:
    """The FW-LoRA runs' warm-up K, EMA decay and λ (none without FW-LoRA runs)."""
    fisher = [r for r in exp.runs if r.fisher]
    if not fisher:
        return []
    ks = sorted({r.fisher.warmup_steps for r in fisher if r.fisher and r.fisher.warmup_steps})
    lams = sorted({r["config"]["fisher_lam"] for r in fisher}, key=str)
    text = (
        f"warm-up K = {', '.join(map(str, ks))} steps, EMA decay "
        f"{fisher[0]['config']['fisher_alpha']:g}, λ = "
        f"{', '.join(lam if isinstance(lam, str) else f'{lam:g}' for lam in lams)}"
    )
    return [_li("FW-LoRA", escape(text))]


def _results_table(exp: Experiment) -> str:
    head = (
        "Method",
        "Seeds",
        "Best val. acc",
        "Final val. acc",
        "Final F1",
        "Final macro-F1",
        "Final recall per class",
        "Final MCC",
        "Runtime (s)",
        "Peak memory (MB)",
    )
    rows = []
    for label, g in exp.aggregated["groups"].items():
        m = g["metrics"]
        cells = (
            label,
            str(len(g["seeds"])),
            _pm(m["best_eval_acc"]),
            _pm(m["final_eval_acc"]),
            _pm(m["final_eval_f1"]),
            _pm(m["final_eval_macro_f1"]) if "final_eval_macro_f1" in m else "-",
            (g.get("final_eval_recall") or {}).get("display", "-"),
            _pm(m["final_eval_mcc"]),
            _pm(m["runtime_sec"], 1),
            _pm(m["peak_memory_mb"], 0),
        )
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _significance_items(exp: Experiment) -> list[str]:
    items = []
    for comp in exp.significance["comparisons"]:
        ci = comp["bootstrap_ci"]
        per_seed = "; ".join(
            f"seed {p['seed']}: b = {p['mcnemar']['b']}, c = {p['mcnemar']['c']}, "
            f"p = {p['mcnemar']['p_value']:.3g}"
            for p in comp["per_seed"]
        )
        across = comp["across_seeds"]["final_eval_acc"]
        t = across["paired_t"]
        t_text = (
            f"paired t-test over {across['n']} seeds p = {t['p_value']:.3g}"
            if t
            else f"paired t-test undefined ({across['n']} seed(s) or constant differences)"
        )
        text = (
            f"final accuracy difference {ci['estimate']:+.4f} "
            f"({ci['confidence_level']:.0%} bootstrap CI {ci['low']:+.4f} to {ci['high']:+.4f}); "
            f"{t_text}; McNemar (exact) {per_seed}"
        )
        items.append(_li(f"{comp['method']} vs {comp['baseline']}", escape(text)))
    return items


def _saved_doc(path: Path) -> dict | None:
    """A JSON document fwlora wrote beside the experiment (None: absent); damaged or foreign
    content is one HarnessError line naming the file."""
    if not path.is_file():
        return None

    def parse(p: Path) -> dict:
        doc = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        return doc

    return read_saved(path, parse, "write it again with the command that made it (--resume)")


def _sweep_doc(exp: Experiment) -> dict | None:
    return _saved_doc(exp.out_dir / SWEEP_TESTS)


def _sweep_figure(exp: Experiment, figures: _Figures) -> list[str]:
    if _sweep_doc(exp) is None:
        return []
    fig_dir = exp.out_dir / "figures"
    return [
        figures.pair(
            fig_dir / "sweep_lambda_curve.png",
            fig_dir / "sweep_penalty_ratio.png",
            "Left: held-out accuracy (final epoch) vs λ, mean ± 95% t-interval over seeds "
            "(series offset slightly along λ for legibility); "
            "the grey band is plain LoRA (mean ± 95% CI), higher is better. Right: the "
            "penalty's gradient relative to the task's, ‖∇P‖/‖∇L_task‖ (median over the "
            "penalised steps and seeds); below the dotted 1e-2 the penalty barely acts.",
        )
    ]


def _sweep_items(exp: Experiment) -> list[str]:
    """fw-lora vs the l2-lora control at each λ (sweep_tests.json); a file of the wrong
    shape is one HarnessError line naming it."""
    doc = _sweep_doc(exp)
    if doc is None:
        return []
    return read_saved(
        exp.out_dir / SWEEP_TESTS, lambda _: _sweep_lines(doc), "write it again with --resume"
    )


def _sweep_lines(doc: dict) -> list[str]:
    items = []
    for test in doc["fw_vs_l2"]:
        across = test["across_seeds"] or {}
        t, w = across.get("paired_t"), across.get("wilcoxon")
        pooled = test.get("mcnemar_pooled")
        text = (
            f"mean final accuracy difference {across.get('mean_difference', 0.0):+.4f} over "
            f"{len(test['seeds'])} seeds; paired t-test p = "
            f"{'n/a' if not t else format(t['p_value'], '.3g')}; Wilcoxon p = "
            f"{'n/a' if not w else format(w['p_value'], '.3g')}"
        )
        paired = (test.get("paired") or {}).get("acc")
        if paired:
            text += f"; Δ {stats.comparison_text(paired)}"
        if pooled:
            text += (
                f"; McNemar pooled over seeds b = {pooled['b']}, c = {pooled['c']}, "
                f"p = {pooled['p_value']:.3g}"
            )
        axis = test.get("axis", "lam")
        where = strength_text(axis, test[axis]).replace("=", " = ")
        items.append(_li(f"{test['method']} vs l2-lora, {where}", escape(text)))
    return items


def _targeting_section(exp: Experiment, figures: _Figures, heading: str) -> str:
    """The premise test (`fwlora targeting`): its summary and figure, if this is one."""
    path = exp.out_dir / TARGETING_FILE
    doc = _saved_doc(path)
    if doc is None:
        return ""
    summary = read_saved(path, lambda _: summary_lines(doc), "write it again with --resume")
    lines = "".join(f"<li>{escape(line.strip())}</li>" for line in summary)
    figure = figures.figure(
        exp.out_dir / "figures" / f"{FIGURE_STEM}.png",
        f"Held-out accuracy (final epoch) of LoRA training only the TOP-{doc['k']} matrices "
        "by the warm-up's F_m, a size-matched RANDOM set, a type-matched (TYPE) and a "
        "layer-matched (LAYER) set, and the BOTTOM set; grey lines join one seed's arms, red "
        "is the mean (higher is better).",
    )
    return (
        f"<section><h2>Premise test{escape(heading)}</h2>"
        "<p>Do the warm-up Fisher scores say where LoRA capacity matters, beyond module type "
        "and layer? TOP minus each control, paired over seeds: mean difference [95 % CI], "
        f"equivalence test (TOST) against ±{doc.get('equivalence_margin', 0.01):g} and the "
        f"verdict after Holm.</p><ul>{lines}</ul>{figure}</section>"
    )


def _results_figures(exp: Experiment, figures: _Figures) -> list[str]:
    fig_dir = exp.out_dir / "figures"
    out = [
        *_sweep_figure(exp, figures),
        figures.figure(
            fig_dir / "comparison_best_eval_acc_bar_chart.png",
            "Best validation accuracy per method, mean ± std over seeds, dots are seeds "
            "(higher is better)",
        ),
        figures.figure(
            fig_dir / "comparison_runtime_sec_bar_chart.png",
            "Runtime (training + evaluation) in seconds per method (lower is better)",
        ),
    ]
    for label, members in group_runs(exp.runs).items():
        run = members[0]  # the first seed; the others are in the artefacts
        for kind, caption in CAPTIONS.items():
            out.append(
                figures.figure(
                    fig_dir / f"{run['run']}_{kind}.png",
                    caption.format(label=label, seed=run.seed),
                )
            )
    return [f for f in out if f]


def _title(experiments: list[Experiment]) -> str:
    tasks = sorted({r["task"] for e in experiments for r in e.runs})
    models = sorted({r["model_display"] for e in experiments for r in e.runs})
    methods = []
    for e in experiments:
        for label in group_runs(e.runs):
            if label not in methods:
                methods.append(label)
    return (
        f"FW-LoRA experiment: {' vs '.join(methods)} on {', '.join(tasks)} with {', '.join(models)}"
    )


def _summary_items(exp: Experiment) -> list[str]:
    items = []
    for label, g in exp.aggregated["groups"].items():
        m = g["metrics"]
        seeds = len(g["seeds"])
        text = (
            f"final validation accuracy {_pm(m['final_eval_acc'])} (best epoch "
            f"{_pm(m['best_eval_acc'])}), runtime {_pm(m['runtime_sec'], 1)} s over "
            f"{seeds} seed{'s' if seeds > 1 else ''}"
        )
        if primary_metric(g["task"]) == "mcc":
            text += f", Matthews correlation {_pm(m['final_eval_mcc'])}"
        items.append(_li(label, escape(text)))
    return items


# The page's last line: `fwlora report` replaces a page that ends so without --overwrite.
REPORT_MARK = "<!-- written by fwlora report; `fwlora report` may replace this page -->"


def _written_by_fwlora(site: Path) -> bool:
    """A folder fwlora wrote the page in: its index.html carries REPORT_MARK, or it is the
    `report/` folder of an experiment fwlora wrote."""
    index = site / "index.html"
    if index.is_file() and REPORT_MARK in index.read_text(encoding="utf-8", errors="replace"):
        return True
    return site.name == "report" and (site.parent / MARKER).is_file()


def check_site(site: Path, overwrite: bool = False) -> None:
    """Refuses, before anything is written, a folder holding files fwlora report did not
    write (unless `overwrite`)."""
    if site.exists() and not site.is_dir():
        raise HarnessError(f"-o {site}: is a file; the report is a folder, choose another -o")
    if overwrite or not site.is_dir() or not any(site.iterdir()) or _written_by_fwlora(site):
        return
    mine = "its index.html" if (site / "index.html").exists() else "files"
    raise HarnessError(
        f"-o {site}: holds {mine} that fwlora report did not write; choose a new or empty "
        "folder, or pass --overwrite to write the page there (replacing index.html and the "
        "images/ and data/ files of the same names)"
    )


def build_report(
    run_dirs: list[str | Path],
    output: str | Path,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes output/index.html, output/images/*.png and output/data/**.json; a folder with
    files fwlora report did not write is refused unless `overwrite`."""
    if not run_dirs:
        raise HarnessError("report: give at least one experiment directory")
    site = Path(output)
    check_site(site, overwrite)
    experiments = [load_experiment(Path(d)) for d in run_dirs]
    (site / "images").mkdir(parents=True, exist_ok=True)
    parts = [f'<h2 class="paper-title">{escape(title or _title(experiments))}</h2>']
    figure_count = 0
    for index, exp in enumerate(experiments):
        prefix = f"{index + 1}-" if len(experiments) > 1 else ""
        heading = f" ({exp.out_dir.name})" if len(experiments) > 1 else ""
        data_dir = site / "data" / f"{prefix}{exp.out_dir.name}"
        data_dir.mkdir(parents=True, exist_ok=True)
        extra = [n for n in (SWEEP_TESTS, TARGETING_FILE) if (exp.out_dir / n).is_file()]
        names = [*ARTEFACTS, *extra]
        for name in names:
            shutil.copyfile(exp.out_dir / name, data_dir / name)
        figures = _Figures(site, prefix)
        figures.count = figure_count
        first_cfg = {k: v for k, v in exp.runs[0]["config"].items() if k != "quiet"}
        parts.append(
            "<section>"
            f"<h2>Summary{escape(heading)}</h2>"
            "<p>Mean (± sample standard deviation over seeds) per method.</p>"
            f"<ul>{''.join(_summary_items(exp))}</ul>"
            "</section>"
        )
        parts.append(
            "<section>"
            f"<h2>Setup{escape(heading)}</h2>"
            f"<p>{len(exp.runs)} run(s) in {escape(exp.out_dir.name)}/; every run "
            "uses the same settings except the method (and its method-specific options) and "
            "the seed.</p>"
            f"<ul>{''.join(_setup_items(exp))}</ul>"
            "</section>"
        )
        parts.append(
            "<section>"
            f"<h2>Method{escape(heading)}</h2>"
            "<p>Resolved settings of the first run:</p>"
            f"<pre><code>{escape(yaml.safe_dump(first_cfg, sort_keys=False))}</code></pre>"
            "</section>"
        )
        parts.append(
            "<section>"
            f"<h2>Results{escape(heading)}</h2>"
            "<p>Validation metrics aggregated over seeds (mean ± sample standard "
            "deviation).</p>"
            f"{_results_table(exp)}"
            f"{''.join(_results_figures(exp, figures))}"
            "</section>"
        )
        premise = _targeting_section(exp, figures, heading)
        if premise:
            parts.append(premise)
        figure_count = figures.count
        sig = _significance_items(exp) + _sweep_items(exp)
        parts.append(
            "<section>"
            f"<h2>Significance{escape(heading)}</h2>"
            "<p>Each method against the baseline "
            f"{escape(exp.significance['baseline'])}, on per-example predictions of the final "
            "epoch.</p>"
            + (f"<ul>{''.join(sig)}</ul>" if sig else "<p>Only one method: no comparison.</p>")
            + "</section>"
        )
        links = "".join(
            _li(
                name,
                f'<a href="data/{escape(data_dir.name)}/{name}" target="_blank">{escape(name)}</a>',
            )
            for name in names
        )
        parts.append(f"<section><h2>Artefacts{escape(heading)}</h2><ul>{links}</ul></section>")
    index_html = site / "index.html"
    index_html.write_text("\n\n".join(parts) + "\n" + REPORT_MARK + "\n", encoding="utf-8")
    return index_html
