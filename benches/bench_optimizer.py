"""Optimizer step alone: FisherAdamW.step() after warm-up vs torch.optim.AdamW.

    python benches/bench_optimizer.py [--quick]

roberta-base-shaped LoRA (the real config: 72 adapted matrices, r = 8, plus the classifier
head); gradients filled with fixed random values; only step() is timed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device, interleaved, md_table, write
from fwlora import FisherAdamW, adamw_param_groups
from models import build


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    dev = device()
    model = build("lora", full=True, dev=dev)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen).to(dev) * 1e-3 for p in params]

    def fill():
        for p, g in zip(params, grads):
            p.grad = g.clone()

    fisher = FisherAdamW(model, lr=1e-6, weight_decay=0.01, warmup=1, lam=1e-4, foreach=True)
    fill()
    fisher.step()  # the one warm-up step (no backward: statistics 0 → uniform importances)
    assert fisher.phase == "frozen"
    foreach = torch.optim.AdamW(adamw_param_groups(model, 0.01), lr=1e-6, foreach=True)
    fused = torch.optim.AdamW(adamw_param_groups(model, 0.01), lr=1e-6, fused=True)
    fill()
    cases = {
        "torch AdamW foreach": foreach.step,
        "torch AdamW fused": fused.step,
        "FisherAdamW (after warm-up, foreach)": fisher.step,
    }
    quick = args.quick
    times = interleaved(cases, rounds=5 if quick else 15, inner=5 if quick else 20)
    base = times["torch AdamW foreach"]
    ratio = times["FisherAdamW (after warm-up, foreach)"] / base
    rows = [[name, f"{t * 1e3:.3f}", f"{t / base:.3f}"] for name, t in times.items()]
    table = md_table(["optimizer step", "ms", "× AdamW foreach"], rows)
    table += (
        f"\n\n{len(fisher.fisher_weighting.matrices)} LoRA matrices, {len(params)} tensors, "
        f"device {dev}. Target FisherAdamW ≤ 1.10× AdamW foreach: {ratio:.3f}× → "
        f"{'met' if ratio <= 1.10 else 'missed'}."
    )
    payload = {"seconds": times, "ratio_vs_foreach": ratio, "target_met": ratio <= 1.10}
    write("optimizer", payload, table)
    return payload


if __name__ == "__main__":
    main()
