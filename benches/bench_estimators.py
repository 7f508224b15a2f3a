"""Cost vs accuracy of the Fisher estimators: time per warm-up step and the Spearman rank
correlation of the importances with the exact statistic's, over the same warm-up.

    python benches/bench_estimators.py [--quick] [--full]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device, interleaved, md_table, write
from fwlora import FisherAdamW
from models import batch, build

VARIANTS = {"exact": {"estimator": "exact"}} | {
    f"sketch k={k}": {"estimator": "sketch", "sketch_dim": k} for k in (2, 8, 32)
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args(argv)
    dev = device()
    warmup = 8 if args.quick else 24
    batches = [batch(args.full, dev) for _ in range(1)]
    gen = torch.Generator().manual_seed(3)
    data = []
    for _ in range(warmup):  # different token batches, same shapes
        b = dict(batches[0])
        b["input_ids"] = torch.randint(3, 1000, b["input_ids"].shape, generator=gen).to(dev)
        b["labels"] = torch.randint(0, 2, b["labels"].shape, generator=gen).to(dev)
        data.append(b)
    importances, steps = {}, {}
    for name, kw in VARIANTS.items():
        model = build("lora", args.full, dev)
        opt = FisherAdamW(model, lr=0.0, warmup=warmup, **kw)
        for b in data:
            opt.zero_grad()
            model(**b).loss.backward()
            opt.step()
        importances[name] = list(opt.importance.values())
        timing_model = build("lora", args.full, dev)
        timing_opt = FisherAdamW(timing_model, lr=0.0, warmup=10**9, **kw)

        def step(m=timing_model, o=timing_opt):
            o.zero_grad()
            m(**data[0]).loss.backward()
            o.step()

        steps[name] = step
    times = interleaved(steps, rounds=3 if args.quick else 7, inner=2)
    rows, rho = [], {}
    for name in VARIANTS:
        rho[name] = float(spearmanr(importances["exact"], importances[name]).statistic)
        rows.append(
            [
                name,
                f"{times[name] * 1e3:.1f}",
                f"{times[name] / times['exact']:.3f}",
                f"{rho[name]:.3f}",
            ]
        )
    table = md_table(["estimator", "ms / warm-up step", "× exact", "Spearman ρ vs exact"], rows)
    table += f"\n\n{warmup} warm-up steps, {len(importances['exact'])} matrices, device {dev}."
    payload = {"seconds": times, "spearman": rho, "warmup_steps": warmup}
    write("estimators_full" if args.full else "estimators", payload, table)
    return payload


if __name__ == "__main__":
    main()
