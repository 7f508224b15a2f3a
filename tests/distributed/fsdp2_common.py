"""Shared by the FSDP2 worker's scenarios (tests/distributed/fsdp2_worker.py, under torchrun):
the tiny model's set-up, sharding, per-rank data, the training loop, the DDP and FSDP2
reference runs and the comparison of two runs' results. Imported by the worker after it has
put tests/ on the path and silenced third-party warnings."""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from fwlora import FisherAdamW
from tiny import batches, tiny_lora_model

WARMUP, STEPS = 4, 8
FW = {"lr": 1e-2, "warmup": WARMUP, "lam": 1e-3, "alpha": 0.7, "weight_decay": 0.01}


def initial_weights(trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainable weights a run started from: every run starts from tiny_lora_model(seed=0)
    with the LoRA rank its factors show."""
    rank = next(w.shape[0] for n, w in trained.items() if "lora_A" in n)
    return weights(tiny_lora_model(seed=0, dtype=torch.float32, rank=rank))


def shard(model: torch.nn.Module, **kwargs) -> None:
    """FSDP2 as the peft / trl recipes apply it: each transformer layer, then the root."""
    for layer in model.base_model.model.roberta.encoder.layer:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def data(rank: int, n: int) -> list[dict]:
    return batches(n, batch_size=2, seed=100 + rank)


def train(net, model, opt, batches_, *, first: int = 0, steps: int = STEPS, accumulate: int = 1):
    """Optimizer steps first+1..steps; with `accumulate` > 1 the gradient sync waits for the
    last micro-batch (DDP's no_sync, FSDP2's set_requires_gradient_sync(False)), as the
    Trainer and accelerate do."""
    for step in range(first, steps):
        for k in range(accumulate):
            last = k == accumulate - 1
            ctx = contextlib.nullcontext()
            if isinstance(net, torch.nn.parallel.DistributedDataParallel):
                if not last:
                    ctx = net.no_sync()
            elif accumulate > 1:
                net.set_requires_gradient_sync(last)
            with ctx:
                loss = net(**batches_[step * accumulate + k]).loss / accumulate
                loss.backward()
        opt.step()
        opt.zero_grad()


def weights(model) -> dict[str, torch.Tensor]:
    """Every trainable parameter, whole (gathered from the FSDP2 shards)."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name] = (p.full_tensor() if isinstance(p, DTensor) else p.detach()).clone()
    return out


def summary(model, opt) -> dict:
    fw = opt.fisher_weighting
    return {
        "weights": weights(model),
        "importance": fw.importance,
        "fisher": fw.fisher,
        "step": fw.step,
        "penalty": float(opt.penalty_value()),
        "ratios": fw.penalty_grad_ratios(),
        "lam": fw.lam,
        "factor_types": sorted({type(m.lora_A).__name__ for m in fw.matrices}),
    }


def compare(a: dict, b: dict) -> dict:
    start = initial_weights(a["weights"])
    ia, ib = list(a["importance"].values()), list(b["importance"].values())
    return {
        "importance_max_diff": max(abs(x - y) for x, y in zip(ia, ib)),
        "fisher_max_rel_diff": max(
            abs(x - y) / max(abs(x), 1e-30)
            for x, y in zip(a["fisher"].values(), b["fisher"].values())
        ),
        "weight_max_diff": max(
            float((a["weights"][n] - b["weights"][n]).abs().max()) for n in a["weights"]
        ),
        "weight_names_equal": sorted(a["weights"]) == sorted(b["weights"]),
        "moved": max(float((v - start[n]).abs().max()) for n, v in a["weights"].items()),
        "penalty": [a["penalty"], b["penalty"]],
        "ratios": [a["ratios"], b["ratios"]],
        "steps": [a["step"], b["step"]],
        "lams": [a["lam"], b["lam"]],
        "factor_types": [a["factor_types"], b["factor_types"]],
        "importance": ia,
    }


def run_ddp(rank: int, *, lora_rank: int = 4, accumulate: int = 1, **options) -> dict:
    model = tiny_lora_model(seed=0, dtype=torch.float32, rank=lora_rank)
    net = torch.nn.parallel.DistributedDataParallel(model)
    opt = FisherAdamW(model, **{**FW, **options})
    train(net, model, opt, data(rank, STEPS * accumulate), accumulate=accumulate)
    return summary(model, opt)


def run_fsdp2(rank: int, *, lora_rank: int = 4, accumulate: int = 1, mesh=None, **options) -> dict:
    model = tiny_lora_model(seed=0, dtype=torch.float32, rank=lora_rank)
    shard(model, mesh=mesh)
    opt = FisherAdamW(model, **{**FW, **options})  # built after sharding: FSDP2's own rule
    train(model, model, opt, data(rank, STEPS * accumulate), accumulate=accumulate)
    return summary(model, opt)
