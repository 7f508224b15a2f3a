"""What lam="auto" costs after its calibration step: FisherAdamW.step() with a calibrated λ vs
the same optimizer with a λ given by hand, on the post-warm-up benchmark's model.

    python benches/bench_calibration_cost.py [--quick]

The model and setting are benches/bench_optimizer.py's (roberta-base-shaped LoRA, r = 8,
fixed random gradients, lr 1e-6, warm-up of one step); both optimizers are past warm-up, the
auto one also past its calibration step, and their step() is timed in the same interleaved
rounds (per-round ratio auto / by hand, median [quartiles]). The calibration step itself
(one extra penalty-gradient pass and one host sync, once per run) is timed apart.
Writes benches/results/calibration_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device, md_table, measure, ratio_cell, suffix, sync
from common import write as write_result
from fwlora import FisherAdamW
from models import lora_shapes_model

LR = 1e-6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    dev = device()
    model = lora_shapes_model(dev)
    gen = torch.Generator(device=dev).manual_seed(1)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=gen, device=dev) * 1e-3

    auto = FisherAdamW(model, lr=LR, warmup=1, lam="auto", target_ratio=0.1, foreach=True)
    auto.step()  # warm-up
    sync()
    start = time.perf_counter()
    auto.step()  # the calibration step
    sync()
    calibration_step = time.perf_counter() - start
    assert auto.lam is not None
    by_hand = FisherAdamW(model, lr=LR, warmup=1, lam=auto.lam, foreach=True)
    by_hand.step()  # warm-up
    cases = {"λ by hand (after warm-up)": by_hand.step, "lam=auto (after calibration)": auto.step}
    rounds, inner = (7, 5) if args.quick else (21, 20)
    m = measure(cases, rounds=rounds, inner=inner, baseline="λ by hand (after warm-up)")
    rows = [[name, f"{t * 1e3:.3f}", ratio_cell(m, name)] for name, t in m["seconds"].items()]
    rows.append(["the calibration step (once)", f"{calibration_step * 1e3:.3f}", "–"])
    table = md_table(["optimizer step", "ms (median)", "× by hand [q1–q3]"], rows)
    table += (
        f"\n\n{len(auto.fisher_weighting.matrices)} LoRA matrices (r = 8), fp32, device {dev}; "
        f"{rounds} interleaved rounds × {inner} steps; the calibration step is one sample."
    )
    payload = {
        "seconds": m["seconds"],
        "ratio": m["ratio"],
        "ratio_q1_q3": m["ratio_q1_q3"],
        "calibration_step_seconds": calibration_step,
        "rounds": rounds,
        "inner": inner,
    }
    write_result("calibration_cost" + suffix(dev), payload, table)
    return payload


if __name__ == "__main__":
    main()
