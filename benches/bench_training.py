"""Training step: plain LoRA + AdamW vs FW-LoRA (warm-up exact / sketch, after warm-up) vs
peft AdaLoRA, all on the same target modules and the same batch; time per step and peak
memory.

    python benches/bench_training.py [--quick] [--full] [--bf16]

CPU default: a smaller roberta-shaped model (hidden 256, 4 layers, FFN 1024, seq 64,
batch 8). `--full`: the real roberta-base config (seq 128, batch 32), meant for the GPU;
`--bf16`: bf16 autocast (CUDA). A step is forward, backward, optimizer.step() (AdaLoRA:
then `update_and_allocate`, every step, as in real use) and zero_grad(set_to_none=True).

Time: every case in the same interleaved rounds of `inner` steps; a figure is the median
per-round ratio to plain LoRA, with its quartiles. The after-warm-up overhead is also
decomposed: FW-LoRA adds only the penalty to a frozen-phase step (the hooks are removed),
so the penalty alone, timed in the same run, over the plain step is its expected overhead.

Peak memory: bytes of tensors allocated during one step above those live before it (CUDA:
max_memory_allocated; CPU: the profiler's allocation timeline), plus each case's resident
tensors (parameters, buffers, optimizer and AdaLoRA state). The target compares the
warm-up peak with plain LoRA's plus one layer's weight gradient (the largest adapted
out × in matrix, fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    device,
    fill_grads,
    md_table,
    measure,
    paired,
    peak_step_bytes,
    ratio_cell,
    suffix,
    target,
    target_line,
    tensor_bytes,
    time_alone,
    unmeasured,
    write,
)
from fwlora import FisherAdamW, adamw_param_groups
from models import batch, build, largest_weight_grad_bytes

NEVER = 10**9  # a warm-up that never ends within the benchmark
LR = 1e-5
METHODS = ["lora", "fw-warmup-exact", "fw-warmup-sketch", "fw-after-warmup", "adalora"]
LABELS = {
    "lora": "plain LoRA + AdamW",
    "fw-warmup-exact": "FW-LoRA warm-up, exact statistic",
    "fw-warmup-sketch": "FW-LoRA warm-up, sketch (k = 8)",
    "fw-after-warmup": "FW-LoRA after warm-up (penalty on)",
    "adalora": "peft AdaLoRA (update_and_allocate every step)",
}


class Case:
    """One method's model, optimizer and step function on the shared batch."""

    def __init__(
        self,
        method: str,
        full: bool,
        dev: torch.device,
        bf16: bool,
        delta_t: int,
        shape: tuple[int | None, int | None] = (None, None),
    ):
        self.method = method
        self.model = build("adalora" if method == "adalora" else "lora", full, dev, delta_t=delta_t)
        self.model.train()
        self.data = batch(full, dev, *shape)
        if method in ("lora", "adalora"):
            self.opt = torch.optim.AdamW(adamw_param_groups(self.model, 0.01), lr=LR)
        elif method == "fw-after-warmup":
            self.opt = FisherAdamW(self.model, lr=LR, warmup=1)
        else:
            estimator = method.rsplit("-", 1)[1]
            self.opt = FisherAdamW(self.model, lr=LR, warmup=NEVER, estimator=estimator)
        self.autocast = (
            torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        self.steps = 0
        self.step()  # lazy optimizer state; for fw-after-warmup, its one warm-up step
        if method == "fw-after-warmup":
            fw = self.opt.fisher_weighting
            assert self.opt.phase == "frozen" and not fw.statistics.attached
            # The steady state: past the first penalised steps, on each of which the
            # penalty_grad_ratio read-out takes ‖∇L_task‖ (a pass over the LoRA gradients; then
            # every 16th step, as in any long run).
            while len(fw.strength) < getattr(fw.strength, "every", 0):  # 0: before issue 17
                self.step()

    def step(self) -> None:
        self.steps += 1
        with self.autocast:
            loss = self.model(**self.data).loss
        loss.backward()
        self.opt.step()
        if self.method == "adalora":
            self.model.base_model.update_and_allocate(self.steps)
        self.opt.zero_grad(set_to_none=True)

    def resident_bytes(self) -> int:
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        for state in self.opt.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        if self.method == "adalora":
            ra = self.model.base_model.rankallocator
            for d in (ra.ipt, ra.exp_avg_ipt, ra.exp_avg_unc):
                tensors += list(d.values())
        return tensor_bytes(tensors)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="real roberta-base config")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--batch", type=int, help="batch size (default 8, --full 32)")
    parser.add_argument("--seq", type=int, help="tokens per sequence (default 64, --full 128)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 9, GPU 15)")
    args = parser.parse_args(argv)
    dev = device()
    custom = args.batch is not None or args.seq is not None
    if dev.type == "cuda":
        rounds, inner = (5, 10) if args.quick else (15, 10)
    else:
        rounds, inner = (3, 5) if args.quick else (9, 5)
    rounds = args.rounds or rounds
    # AdaLoRA masks to its budget every delta_t-th step: one such step in every timed block.
    shape = (args.batch, args.seq)
    cases = {m: Case(m, args.full, dev, args.bf16, inner, shape) for m in METHODS}
    peaks, peak_method = {}, ""
    for name, case in cases.items():
        case.step()  # AdaLoRA's importance state exists from its first update
        peaks[name], peak_method = peak_step_bytes(case.step, dev)
    resident = {name: case.resident_bytes() for name, case in cases.items()}
    m = measure({n: c.step for n, c in cases.items()}, rounds, inner, baseline="lora")
    after = cases["fw-after-warmup"]
    fw = after.opt.fisher_weighting
    fill_grads(after.model, torch.zeros_like)  # every LoRA gradient exists
    with torch.no_grad():
        penalty = time_alone(lambda: unmeasured(fw), rounds, 20)
        force = getattr(fw.strength, "force_next", lambda: None)  # before issue 17: always
        measured = time_alone(lambda: (force(), fw.before_step()), rounds, 20)
    after.opt.zero_grad(set_to_none=True)
    base = m["seconds"]["lora"]
    layer_grad = largest_weight_grad_bytes(cases["lora"].model)
    n_matrices = len(fw.matrices)

    def total(name: str) -> int | None:
        return None if peaks[name] is None else peaks[name] + resident[name]

    rows = []
    for name in METHODS:
        peak = "n/a" if peaks[name] is None else f"{peaks[name] / 2**20:.1f}"
        tot = "n/a" if total(name) is None else f"{total(name) / 2**20:.1f}"
        rows.append(
            [
                LABELS[name],
                f"{m['seconds'][name] * 1e3:.1f}",
                ratio_cell(m, name),
                peak,
                f"{resident[name] / 2**20:.1f}",
                tot,
            ]
        )
    ada_vs_fw, ada_spread = paired(m, "adalora", "fw-after-warmup")
    ada_vs_exact, _ = paired(m, "adalora", "fw-warmup-exact")
    targets = [
        target(
            "training step after warm-up / plain LoRA",
            m["ratio"]["fw-after-warmup"],
            1.01,
            spread=m["ratio_q1_q3"]["fw-after-warmup"],
        ),
        target(
            "training step in warm-up, sketch / plain LoRA",
            m["ratio"]["fw-warmup-sketch"],
            1.08,
            spread=m["ratio_q1_q3"]["fw-warmup-sketch"],
        ),
        target(
            "training step in warm-up, exact / plain LoRA",
            m["ratio"]["fw-warmup-exact"],
            1.20,
            spread=m["ratio_q1_q3"]["fw-warmup-exact"],
        ),
        target(
            "AdaLoRA step / FW-LoRA step (after warm-up)",
            ada_vs_fw,
            1.2,
            at_least=True,
            spread=ada_spread,
        ),
    ]
    every = getattr(fw.strength, "every", 1)
    amortised = penalty + (measured - penalty) / every
    targets[0]["note"] = (
        f"decomposed: the penalty, all FW-LoRA adds after warm-up, alone {penalty * 1e3:.2f} ms "
        f"({measured * 1e3:.2f} ms on the 1 in {every} steps whose penalty_grad_ratio is "
        f"measured) = {amortised / base:.4f}× a plain step amortised, i.e. an expected ratio "
        f"of {1 + amortised / base:.4f}"
    )
    for est in ("exact", "sketch"):
        name = f"fw-warmup-{est}"
        if total(name) is None or total("lora") is None:
            targets.append(target(f"peak memory in warm-up ({est})", None, 0.0, unit=" MiB"))
            continue
        t = target(
            f"peak memory in warm-up ({est}) vs plain LoRA + one layer's weight gradient",
            total(name) / 2**20,
            (total("lora") + layer_grad) / 2**20,
            unit=" MiB",
        )
        t["note"] = f"FW − LoRA = {(total(name) - total('lora')) / 2**20:+.2f} MiB"
        targets.append(t)
    tokens = cases["lora"].data["input_ids"].shape
    shape = (
        "roberta-base config (12 layers, hidden 768, FFN 3072)"
        if args.full
        else "roberta-shaped, hidden 256, 4 layers, FFN 1024"
    ) + f", batch {tokens[0]} × {tokens[1]} tokens"
    table = md_table(
        [
            "method",
            "ms / step",
            "× plain LoRA [q1–q3]",
            "step peak MiB",
            "resident MiB",
            "peak total MiB",
        ],
        rows,
    )
    table += "\n\n" + "\n".join(
        [
            f"Model: {shape}, {n_matrices} adapted matrices (r = 8), random weights, "
            f"{'bf16 autocast, ' if args.bf16 else 'fp32, '}device {dev}; {rounds} "
            f"interleaved rounds × {inner} steps. AdaLoRA: init_r 12 → target_r 8, "
            f"orth_reg 0.5, budget masking every {inner} steps. AdaLoRA / FW-LoRA warm-up "
            f"(exact): {ada_vs_exact:.2f}.",
            f"Memory: {peak_method}; one layer's weight gradient = "
            f"{layer_grad / 2**20:.2f} MiB. Step peak = tensors allocated during a step above "
            "those live before it; resident = parameters, buffers, optimizer (and AdaLoRA) "
            "state.",
            "",
        ]
        + [target_line(t) for t in targets]
    )
    payload = {
        "seconds": m["seconds"],
        "ratio_vs_lora": m["ratio"],
        "ratio_q1_q3": m["ratio_q1_q3"],
        "samples": m["samples"],
        "penalty_seconds": penalty,
        "penalty_measured_seconds": measured,
        "step_peak_bytes": peaks,
        "resident_bytes": resident,
        "memory_method": peak_method,
        "layer_grad_bytes": layer_grad,
        "adalora_over_fw_after_warmup": ada_vs_fw,
        "adalora_over_fw_warmup_exact": ada_vs_exact,
        "rounds": rounds,
        "inner": inner,
        "full": args.full,
        "bf16": args.bf16,
        "targets": targets,
    }
    name = "training" + suffix(dev, args.full)
    if custom:  # a one-off shape: never overwrite the standard figures
        name += f"_b{tokens[0]}_s{tokens[1]}"
    write(name, payload, table)
    return payload


if __name__ == "__main__":
    main()
