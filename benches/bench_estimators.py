"""Cost vs accuracy of the Fisher estimators: time per warm-up step, and how well the
importances of the sketch (several sketch_dim k) rank like the exact statistic's.

    python benches/bench_estimators.py [--quick] [--full] [--bf16]

Accuracy: every estimator runs the same warm-up (same model, same batches, same dropout
masks; lr = 0, so the gradients do not depend on the estimator) and its frozen importances
I_m are compared with the exact run's: Spearman ρ, the overlap of the top quarter, and the
median relative error |I_sketch − I_exact| / I_exact.
Cost: one warm-up step (forward, backward, statistics, optimizer step) of each estimator
and of plain LoRA + AdamW, timed in the same interleaved rounds; ratios are per round.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    device,
    fill_grads,
    md_table,
    measure,
    paired,
    ratio_cell,
    suffix,
    target,
    target_line,
    time_alone,
    write,
)
from fwlora import FisherAdamW, adamw_param_groups
from models import batch, build, roberta_config

SKETCH_DIMS = (2, 8, 32)
NEVER = 10**9


def variants() -> dict[str, dict]:
    out = {"exact": {"estimator": "exact"}}
    for k in SKETCH_DIMS:
        out[f"sketch k={k}"] = {"estimator": "sketch", "sketch_dim": k}
    out["adapter"] = {"estimator": "adapter"}  # the LoRA factors' own gradients, no hooks
    return out


def warmup_data(full: bool, dev: torch.device, steps: int) -> list[dict]:
    """`steps` different synthetic batches of the benchmark's shape."""
    template = batch(full, dev)
    vocab = roberta_config(full).vocab_size
    gen = torch.Generator().manual_seed(3)
    data = []
    for _ in range(steps):
        b = dict(template)
        b["input_ids"] = torch.randint(3, vocab, b["input_ids"].shape, generator=gen).to(dev)
        b["labels"] = torch.randint(0, 2, b["labels"].shape, generator=gen).to(dev)
        data.append(b)
    return data


def importances(kw: dict, full: bool, dev: torch.device, data: list[dict], autocast) -> list[float]:
    model = build("lora", full, dev)
    model.train()
    opt = FisherAdamW(model, lr=0.0, warmup=len(data), **kw)
    torch.manual_seed(1234)  # the same dropout masks for every estimator
    for b in data:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = model(**b).loss
        loss.backward()
        opt.step()
    assert opt.phase == "frozen"
    return list(opt.importance.values())


def step_fn(kw: dict | None, full: bool, dev: torch.device, data: dict, autocast):
    model = build("lora", full, dev)
    model.train()
    if kw is None:
        opt = torch.optim.AdamW(adamw_param_groups(model, 0.01), lr=1e-5)
    else:
        opt = FisherAdamW(model, lr=1e-5, warmup=NEVER, **kw)

    def step():
        with autocast():
            loss = model(**data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.model, step.opt = model, opt  # type: ignore[attr-defined]  # for the decomposition
    return step


def adapter_alone(step, rounds: int) -> float:
    """Seconds of everything estimator="adapter" adds to a warm-up step, timed apart: it
    installs no hook, so that is before_step() (the four foreach norms) and after_step() (the
    row to the core), on a step's worth of LoRA gradients."""
    fw = step.opt.fisher_weighting
    fill_grads(step.model, torch.randn_like)  # every LoRA gradient exists
    try:
        with torch.no_grad():
            return time_alone(lambda: (fw.before_step(), fw.after_step()), rounds, 20)
    finally:
        step.opt.zero_grad(set_to_none=True)


def top_overlap(a: list[float], b: list[float], fraction: float = 0.25) -> float:
    n = max(1, round(len(a) * fraction))
    top = lambda v: set(sorted(range(len(v)), key=v.__getitem__, reverse=True)[:n])  # noqa: E731
    return len(top(a) & top(b)) / n


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="real roberta-base config")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 9, GPU 15)")
    args = parser.parse_args(argv)
    dev = device()
    autocast = (
        (lambda: torch.autocast(dev.type, dtype=torch.bfloat16))
        if args.bf16
        else contextlib.nullcontext
    )
    warmup = 12 if args.quick else 48
    data = warmup_data(args.full, dev, warmup)
    imp = {name: importances(kw, args.full, dev, data, autocast) for name, kw in variants().items()}
    cases = {"plain LoRA (no statistic)": step_fn(None, args.full, dev, data[0], autocast)}
    for name, kw in variants().items():
        cases[name] = step_fn(kw, args.full, dev, data[0], autocast)
    if dev.type == "cuda":
        rounds, inner = (5, 5) if args.quick else (15, 10)
    else:
        rounds, inner = (3, 2) if args.quick else (9, 3)
    rounds = args.rounds or rounds
    m = measure(cases, rounds, inner, baseline="plain LoRA (no statistic)")
    exact = imp["exact"]
    rows, accuracy, vs_exact = [], {}, {}
    for name in cases:
        if name in imp:
            rho = float(spearmanr(exact, imp[name]).statistic)
            rel = statistics.median(abs(s - e) / e for s, e in zip(imp[name], exact) if e > 0)
            overlap = top_overlap(exact, imp[name])
            accuracy[name] = {
                "spearman": rho,
                "top_quarter_overlap": overlap,
                "median_rel_err": rel,
            }
            acc_cells = [f"{rho:.3f}", f"{overlap:.2f}", f"{rel:.3f}"]
        else:
            acc_cells = ["—", "—", "—"]
        per_exact = vs_exact[name] = paired(m, name, "exact")[0]
        ms = f"{m['seconds'][name] * 1e3:.1f}"
        rows.append([name, ms, ratio_cell(m, name), f"{per_exact:.3f}", *acc_cells])
    table = md_table(
        [
            "estimator",
            "ms / warm-up step",
            "× plain LoRA [q1–q3]",
            "× exact",
            "Spearman ρ vs exact",
            "top-¼ overlap",
            "median rel. error of I",
        ],
        rows,
    )
    shape = (
        "roberta-base config, batch 32 × 128" if args.full else "hidden 256, 4 layers, batch 8 × 64"
    )
    table += (
        f"\n\n{warmup} warm-up steps on different synthetic batches, {len(exact)} matrices, "
        f"{shape}, {'bf16 autocast, ' if args.bf16 else ''}device {dev}; timing: {rounds} "
        f"interleaved rounds × {inner} steps. Random weights: the importances of a trained "
        "model differ, the estimators' agreement is what is measured."
    )
    targets = [
        target(
            'warm-up step, estimator="adapter" / plain LoRA',
            m["ratio"]["adapter"],
            1.02,
            spread=m["ratio_q1_q3"]["adapter"],
        )
    ]
    alone = adapter_alone(cases["adapter"], rounds)
    base = m["seconds"]["plain LoRA (no statistic)"]
    targets[0]["note"] = (
        f"decomposed: all the adapter estimator adds (no hooks; before_step + after_step) "
        f"alone {alone * 1e3:.2f} ms = {alone / base:.4f}× a plain step, i.e. an expected "
        f"ratio of {1 + alone / base:.4f}"
    )
    table += "\n\n" + "\n".join(target_line(t) for t in targets)
    payload = {
        "seconds": m["seconds"],
        "ratio_vs_lora": m["ratio"],
        "ratio_q1_q3": m["ratio_q1_q3"],
        "ratio_vs_exact": vs_exact,
        "accuracy": accuracy,
        "importances": imp,
        "warmup_steps": warmup,
        "rounds": rounds,
        "inner": inner,
        "adapter_alone_seconds": alone,
        "targets": targets,
    }
    write("estimators" + suffix(dev, args.full), payload, table)
    return payload


if __name__ == "__main__":
    main()
