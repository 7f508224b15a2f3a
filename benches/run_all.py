"""`make bench`: every benchmark in one run, then benches/results/summary.md and .json.

    python benches/run_all.py [--quick] [--full] [--bf16] [--only core,optimizer,...]

Each figure is a ratio against its baseline measured side by side in the same run
(interleaved rounds, medians of per-round ratios). CPU default: the smaller roberta-shaped
model for the training and estimator benchmarks; on a GPU, `--full --bf16` (benches/gpu.sh)
runs the real roberta-base config and writes *_gpu files instead, so neither run
overwrites the other's figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device, environment, md_table, suffix, target_line

FW_FOREACH = "FisherAdamW foreach (after warm-up)"
BENCHES = ("core", "optimizer", "training", "estimators", "memory")
TITLES = {
    "core": "Core per-call cost (Rust vs numpy vs pure Python)",
    "optimizer": "Optimizer step alone (roberta-base LoRA shapes)",
    "training": "Training step",
    "estimators": "Fisher estimators: cost vs accuracy",
    "memory": "Warm-up memory on a causal LM, with and without gradient checkpointing",
}


def run(name: str, args: argparse.Namespace) -> dict:
    flags = ["--quick"] if args.quick else []
    timed = flags + ([f"--rounds={args.rounds}"] if args.rounds else [])
    if name == "core":
        import bench_core

        return bench_core.main(flags)
    if name == "optimizer":
        import bench_optimizer

        return bench_optimizer.main(timed)
    model_flags = timed + (["--full"] if args.full else []) + (["--bf16"] if args.bf16 else [])
    if name == "training":
        import bench_training

        return bench_training.main(model_flags)
    if name == "memory":
        import bench_memory

        return bench_memory.main(flags)
    import bench_estimators

    return bench_estimators.main(model_flags)


def normalise_targets(name: str, payload: dict) -> list[dict]:
    """Targets as common.target() dicts; bench_core's {key: {value, met}} form adapted."""
    raw = payload.get("targets", [])
    if isinstance(raw, list):
        return raw
    out = []
    for key, t in raw.items():
        out.append({"name": f"{name}: {key}", "value": t.get("value"), "met": t.get("met")})
    return out


def line(t: dict) -> str:
    if "op" in t or t.get("met") is None:
        return target_line(t)
    value = "" if t.get("value") is None else f": {t['value']:.3g}"
    return f"- **{'PASS' if t['met'] else 'MISS'}** {t['name']}{value}"


def memory_rows(mem: dict | None) -> list[list[str]]:
    """Headline rows of bench_memory: live bytes after forward, warm-up − plain LoRA."""
    if not mem:
        return []
    limit = f"target ≤ +{mem['layer_input_bytes'] / 2**20:.2f} MiB (one layer's input)"
    rows = []
    for ckpt, cases in mem["results"].items():
        extra = cases["fw-warmup-exact"]["alive_after_forward"]
        extra -= cases["lora"]["alive_after_forward"]
        rows.append(
            [
                f"live after forward, warm-up (exact) − plain LoRA, {ckpt}",
                f"{extra / 2**20:+.2f} MiB",
                limit,
            ]
        )
    return rows


def headline(results: dict) -> list[list[str]]:
    """The figures the README quotes: each a ratio measured side by side in one run."""
    rows: list[list[str]] = []

    def add(figure: str, value: float | None, fmt: str = "{:.3f}×", note: str = "") -> None:
        rows.append([figure, "n/a" if value is None else fmt.format(value), note])

    core = results.get("core")
    if core and "per_call_us" in core:
        for m, ops in core["per_call_us"].items():
            obs = ops.get("observe", {})
            if obs.get("rust"):
                add(
                    f"core observe, M = {m}: numpy / Rust",
                    obs["numpy"] / obs["rust"],
                    note=f"Rust {obs['rust']:.2f} µs per call",
                )
    opt = results.get("optimizer")
    if opt:
        r = opt["ratio_vs_foreach"]
        add(
            "optimizer step (caches evicted): FisherAdamW / AdamW foreach",
            r[FW_FOREACH],
            note="target ≤ 1.30×",
        )
        tight = opt.get("tight_loop", {}).get("ratio_vs_foreach", {})
        add("optimizer step (tight loop): FisherAdamW / AdamW foreach", tight.get(FW_FOREACH))
        add("optimizer step: FisherAdamW fused / AdamW fused", opt["fused_ratio"])
        add("optimizer step: AdamW fused / AdamW foreach", r["torch AdamW fused"])
    tr = results.get("training")
    if tr:
        r = tr["ratio_vs_lora"]
        add("training step after warm-up / plain LoRA", r["fw-after-warmup"], note="target ≤ 1.01×")
        add(
            "training step warm-up (sketch) / plain LoRA",
            r["fw-warmup-sketch"],
            note="target ≤ 1.08×",
        )
        add(
            "training step warm-up (exact) / plain LoRA",
            r["fw-warmup-exact"],
            note="target ≤ 1.20×",
        )
        add("training step AdaLoRA / plain LoRA", r["adalora"])
        add(
            "AdaLoRA / FW-LoRA after warm-up",
            tr["adalora_over_fw_after_warmup"],
            note="target ≥ 1.2×",
        )
        add("AdaLoRA / FW-LoRA warm-up (exact)", tr["adalora_over_fw_warmup_exact"])
        peaks, res = tr["step_peak_bytes"], tr["resident_bytes"]
        if peaks.get("lora") is not None:
            for est in ("exact", "sketch"):
                name = f"fw-warmup-{est}"
                extra = (peaks[name] + res[name] - peaks["lora"] - res["lora"]) / 2**20
                add(
                    f"peak memory warm-up ({est}) − plain LoRA",
                    extra,
                    fmt="{:+.2f} MiB",
                    note=f"target ≤ +{tr['layer_grad_bytes'] / 2**20:.2f} MiB "
                    "(one layer's weight gradient)",
                )
    rows += memory_rows(results.get("memory"))
    est = results.get("estimators")
    if est and "adapter" in est["ratio_vs_lora"]:
        add(
            'warm-up step, estimator="adapter" / plain LoRA',
            est["ratio_vs_lora"]["adapter"],
            note="target ≤ 1.02×",
        )
    if est:
        for name, acc in est["accuracy"].items():
            if name == "exact":
                continue
            add(
                f"estimator {name}: warm-up step / exact's",
                est["ratio_vs_exact"][name],
                note=f"Spearman ρ {acc['spearman']:.3f} vs exact",
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--full", action="store_true", help="real roberta-base config (GPU)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds of the optimizer, training and estimator "
        "benchmarks (defaults: theirs)",
    )
    args = parser.parse_args(argv)
    dev = device()
    sfx = suffix(dev, args.full)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in args.only.split(","):
        if name not in BENCHES:
            parser.error(f"--only: unknown benchmark {name!r}; expected some of {BENCHES}")
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        try:
            results[name] = run(name, args)
        except Exception:  # one failing benchmark must not lose the others' figures
            errors[name] = traceback.format_exc()
            print(errors[name], file=sys.stderr)
        seconds[name] = time.perf_counter() - start
        if name == "core" and name in results and sfx == "_gpu":
            for ext in ("json", "md"):  # bench_core always writes core.*: keep the host's apart
                shutil.copy(RESULTS / f"core.{ext}", RESULTS / f"core{sfx}.{ext}")
    targets = [t for name, p in results.items() for t in normalise_targets(name, p)]
    command = " ".join(argv if argv is not None else sys.argv[1:])
    parts = [
        "# Benchmark summary",
        "",
        f"Command: `python benches/run_all.py{' ' + command if command else ''}` · environment: "
        f"{json.dumps(environment())}",
        "",
        "Every figure is a ratio of two timings taken side by side in this one run "
        "(interleaved rounds; the median of per-round ratios), so machine speed and noise "
        "cancel; absolute times are in the sections below.",
        "",
        "## Headline figures",
        "",
        md_table(["figure", "value", "note"], headline(results)),
        "",
        "## Targets",
        "",
        *[line(t) for t in targets],
    ]
    for name in results:
        stem = "core" if name == "core" else f"{name}{sfx}"
        md = RESULTS / f"{stem}.md"
        if md.exists():
            parts += ["", f"## {TITLES[name]}", "", md.read_text().rstrip()]
    for name, err in errors.items():
        parts += ["", f"## {TITLES[name]}: FAILED", "", "```", err.rstrip(), "```"]
    parts += [
        "",
        f"Wall time per benchmark (s): {json.dumps({k: round(v, 1) for k, v in seconds.items()})}",
        "",
    ]
    out = RESULTS / f"summary{sfx}.md"
    out.write_text("\n".join(parts))
    summary = {
        "environment": environment(),
        "args": vars(args),
        "targets": targets,
        "headline": headline(results),
        "errors": errors,
        "seconds": seconds,
    }
    (RESULTS / f"summary{sfx}.json").write_text(json.dumps(summary, indent=2, default=str))
    print("\n" + "\n".join(line(t) for t in targets))
    print(f"\nwrote {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
