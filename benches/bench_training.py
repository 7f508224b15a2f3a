"""Training step: plain LoRA + AdamW vs FW-LoRA (warm-up exact / sketch, after warm-up) vs
peft AdaLoRA, all on the same target modules, same batch; time per step and peak memory.

    python benches/bench_training.py [--quick] [--full]

CPU default: a smaller roberta-shaped model (hidden 256, 4 layers, seq 64, batch 8);
`--full` (GPU): the real roberta-base config, seq 128, batch 32, bf16 autocast.
Peak memory is measured on CUDA only (torch.cuda.max_memory_allocated per case).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device, interleaved, md_table, write
from fwlora import FisherAdamW, adamw_param_groups
from models import batch, build

BIG = 10**9  # a warm-up that never ends


def make_case(method: str, full: bool, dev: torch.device):
    model = build("adalora" if method == "adalora" else "lora", full, dev)
    model.train()
    data = batch(full, dev)
    if method == "lora" or method == "adalora":
        opt = torch.optim.AdamW(adamw_param_groups(model, 0.01), lr=1e-5)
    elif method == "fw-warmup-exact":
        opt = FisherAdamW(model, lr=1e-5, warmup=BIG, estimator="exact")
    elif method == "fw-warmup-sketch":
        opt = FisherAdamW(model, lr=1e-5, warmup=BIG, estimator="sketch")
    elif method == "fw-after-warmup":
        opt = FisherAdamW(model, lr=1e-5, warmup=1)
    else:
        raise ValueError(method)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda"
        else contextlib.nullcontext()
    )
    state = {"step": 0}

    def step():
        state["step"] += 1
        with autocast:
            loss = model(**data).loss
        loss.backward()
        opt.step()
        if method == "adalora":
            model.base_model.update_and_allocate(state["step"])
        opt.zero_grad(set_to_none=True)

    step()  # fw-after-warmup: this is its warm-up step; hooks are gone afterwards
    if method == "fw-after-warmup":
        assert opt.phase == "frozen"
    return step, model


def peak_bytes(step) -> int | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


METHODS = ["lora", "fw-warmup-exact", "fw-warmup-sketch", "fw-after-warmup", "adalora"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="real roberta-base config")
    args = parser.parse_args(argv)
    dev = device()
    cases, peaks, models = {}, {}, {}
    for method in METHODS:
        cases[method], models[method] = make_case(method, args.full, dev)
    for method in METHODS:
        peaks[method] = peak_bytes(cases[method])
    times = interleaved(cases, rounds=3 if args.quick else 15, inner=2 if args.quick else 3)
    base = times["lora"]
    ratios = {m: t / base for m, t in times.items()}
    # One layer's weight gradient: the largest adapted (out × in) matrix, in fp32.
    layer_grad = max(
        m.base_layer.weight.numel() * 4
        for m in models["lora"].modules()
        if hasattr(m, "base_layer") and hasattr(m, "lora_A")
    )
    rows = []
    for m in METHODS:
        peak = "n/a (CPU)" if peaks[m] is None else f"{peaks[m] / 2**20:.0f}"
        rows.append([m, f"{times[m] * 1e3:.1f}", f"{ratios[m]:.3f}", peak])
    targets = {
        "after_warmup_le_1.01": ratios["fw-after-warmup"] <= 1.01,
        "warmup_sketch_le_1.05": ratios["fw-warmup-sketch"] <= 1.05,
        "adalora_over_fw_ge_1.2": times["adalora"] / times["fw-after-warmup"] >= 1.2,
    }
    if peaks["lora"] is not None:
        targets["warmup_peak_le_lora_plus_one_layer_grad"] = (
            peaks["fw-warmup-exact"] <= peaks["lora"] + layer_grad
        )
    table = md_table(["method", "ms / step", "× plain LoRA", "peak MiB"], rows)
    shape = "roberta-base config" if args.full else "roberta-shaped, hidden 256, 4 layers"
    table += "\n\n" + "\n".join(
        [
            f"Model: {shape}, device {dev}. "
            f"One layer's weight gradient: {layer_grad / 2**20:.1f} MiB.",
            f"After warm-up ≤ 1.01× plain LoRA: {ratios['fw-after-warmup']:.3f}× → "
            f"{'met' if targets['after_warmup_le_1.01'] else 'missed'}.",
            f"Warm-up with the sketch ≤ 1.05× plain LoRA: {ratios['fw-warmup-sketch']:.3f}× → "
            f"{'met' if targets['warmup_sketch_le_1.05'] else 'missed'}.",
            f"AdaLoRA / FW-LoRA (after warm-up) ≥ 1.2: "
            f"{times['adalora'] / times['fw-after-warmup']:.2f} → "
            f"{'met' if targets['adalora_over_fw_ge_1.2'] else 'missed'}.",
        ]
    )
    payload = {
        "seconds": times,
        "ratios": ratios,
        "peak_bytes": peaks,
        "layer_grad_bytes": layer_grad,
        "targets": targets,
        "full": args.full,
    }
    write("training_full" if args.full else "training", payload, table)
    return payload


if __name__ == "__main__":
    main()
