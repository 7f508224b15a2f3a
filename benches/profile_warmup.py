"""Where a warm-up step's extra time goes: the statistic's kernels vs the hooks' fixed cost.

    OMP_NUM_THREADS=1 python benches/profile_warmup.py [--rounds N]

The training benchmark's CPU model and batch (roberta-shaped, hidden 256, 4 layers, 24
adapted matrices, 8 × 64 tokens). Each case's step (forward, backward, optimizer step,
zero_grad) is timed in interleaved rounds by the thread's CPU time (`time.thread_time`; run
with one torch thread so that every kernel runs on this thread): unlike wall time it does not
count the time a shared machine's other processes take. Inside the FW-LoRA steps the
statistic's own kernels (`exact_sq_norm` / `sketch_sq_norm`: ‖GᵀX‖² or its sketch), the
whole backward handler (`_on_grad`, those kernels included) and the forward hook are timed
the same way, per step. What is left of a warm-up step's excess over plain LoRA is autograd's
cost of the extra identity node per layer and FW-LoRA's per-step bookkeeping.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fwlora.optim.statistics as st
from common import md_table, write
from fwlora import FisherAdamW, adamw_param_groups
from models import batch, build

CLOCK = time.thread_time
PARTS = {"exact_sq_norm": "‖GᵀX‖² kernels", "sketch_sq_norm": "sketch kernels"}
CASES = ("lora", "exact", "sketch", "adapter", "after warm-up")


class Timers:
    """Per-step CPU seconds spent inside the wrapped functions (summed over calls)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, owner, name: str, key: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            start = CLOCK()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[key] = self.spent.get(key, 0.0) + CLOCK() - start

        setattr(owner, name, timed)


def case_step(kind: str, data: dict):
    model = build("lora", False, torch.device("cpu"))
    model.train()
    if kind == "lora":
        opt = torch.optim.AdamW(adamw_param_groups(model, 0.01), lr=1e-5)
    elif kind == "after warm-up":
        opt = FisherAdamW(model, lr=1e-5, warmup=1)
    else:
        opt = FisherAdamW(model, lr=1e-5, warmup=10**9, estimator=kind)

    def step() -> None:
        model(**data).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(20 if kind == "after warm-up" else 1):  # past the dense read-out steps
        step()
    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--inner", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    timers = Timers()
    for name in PARTS:
        timers.wrap(st, name, PARTS[name])
    timers.wrap(st.GradientStatistics, "_on_grad", "backward handler (kernels included)")
    timers.wrap(st.GradientStatistics, "_on_forward", "forward hook")
    data = batch(False, torch.device("cpu"))
    steps = {kind: case_step(kind, data) for kind in CASES}
    seconds: dict[str, list[float]] = {k: [] for k in CASES}
    parts: dict[str, dict[str, list[float]]] = {k: {} for k in CASES}
    for r in range(args.rounds):
        order = CASES[r % len(CASES) :] + CASES[: r % len(CASES)]
        for kind in order:
            timers.spent.clear()
            start = CLOCK()
            for _ in range(args.inner):
                steps[kind]()
            seconds[kind].append((CLOCK() - start) / args.inner)
            for key, value in timers.spent.items():
                parts[kind].setdefault(key, []).append(value / args.inner)
    base = seconds["lora"]
    rows, payload = [], {"threads": torch.get_num_threads(), "rounds": args.rounds, "cases": {}}
    for kind in CASES:
        ratios = [s / b for s, b in zip(seconds[kind], base)]
        q = statistics.quantiles(ratios, n=4, method="inclusive")
        plain = statistics.median(base)
        shares = {k: statistics.median(v) / plain for k, v in parts[kind].items()}
        rows.append(
            [
                kind,
                f"{statistics.median(seconds[kind]) * 1e3:.1f}",
                f"{statistics.median(ratios):.3f} [{q[0]:.3f}–{q[2]:.3f}]",
                ", ".join(f"{k} {v:.3f}×" for k, v in shares.items()) or "—",
            ]
        )
        payload["cases"][kind] = {
            "cpu_seconds": statistics.median(seconds[kind]),
            "ratio": statistics.median(ratios),
            "ratio_q1_q3": [q[0], q[2]],
            "parts_over_plain_step": shares,
        }
    table = md_table(
        ["step", "CPU ms / step", "× plain LoRA [q1–q3]", "inside it, × a plain step"], rows
    )
    table += (
        f"\n\nThread CPU time, {torch.get_num_threads()} torch thread(s), {args.rounds} "
        f"interleaved rounds × {args.inner} steps; roberta-shaped CPU model of "
        "bench_training.py (hidden 256, 4 layers, 24 adapted matrices, 8 × 64 tokens)."
    )
    floor = kernel_floor(data, statistics.median(base))
    payload["exact_kernel_floor"] = floor
    table += (
        "\n\n**The exact statistic's floor.** ‖GᵀX‖² needs tokens × in × out multiply-adds per "
        f"adapted layer ({floor['gflop_per_step']:.2f} GFLOP per step here, the weight-gradient "
        "product plain LoRA never forms). Timed alone on this thread it runs at "
        f"{floor['kernel_gflops']:.0f} GFLOP/s, {floor['of_sgemm_peak']:.0%} of a 1024³ sgemm "
        f"({floor['sgemm_gflops']:.0f} GFLOP/s): at the sgemm rate the kernels alone would be "
        f"{floor['at_sgemm_peak_over_plain_step']:.3f}× a plain step."
    )
    write("profile_warmup", payload, table)
    return payload


def kernel_floor(data: dict, plain_step: float) -> dict:
    """The exact statistic's FLOPs per step and how fast its kernel runs against sgemm."""
    model = build("lora", False, torch.device("cpu"))
    opt = FisherAdamW(model, warmup=10**9)
    tokens = int(data["input_ids"].numel())
    shapes = [(m.in_features, m.out_features) for m in opt.fisher_weighting.matrices]
    gen = torch.Generator().manual_seed(0)
    pairs = [
        (torch.randn(tokens, o, generator=gen), torch.randn(tokens, i, generator=gen))
        for i, o in shapes
    ]
    # exact_sq_norm's cheaper path: the (out × in) product, or the two token Gram matrices
    flop = sum(2 * min(tokens * i * o, tokens * tokens * (i + o)) for i, o in shapes)
    square = torch.randn(1024, 1024, generator=gen)

    def best(fn, n: int) -> float:
        fn()
        times = []
        for _ in range(5):
            start = CLOCK()
            for _ in range(n):
                fn()
            times.append((CLOCK() - start) / n)
        return min(times)

    kernels = best(lambda: [st.exact_sq_norm(g, x) for g, x in pairs], 3)
    sgemm = 2 * 1024**3 / best(lambda: square @ square, 5) / 1e9
    return {
        "gflop_per_step": flop / 1e9,
        "kernel_gflops": flop / kernels / 1e9,
        "sgemm_gflops": sgemm,
        "of_sgemm_peak": flop / kernels / 1e9 / sgemm,
        "kernels_alone_over_plain_step": kernels / plain_step,
        "at_sgemm_peak_over_plain_step": flop / (sgemm * 1e9) / plain_step,
    }


if __name__ == "__main__":
    main()
