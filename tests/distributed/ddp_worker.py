"""Run by tests/distributed/test_integration_ddp.py under `torchrun --nproc_per_node=2` (gloo, CPU).

Trains the tiny LoRA model with transformers.Trainer + FisherAdamW + FisherCallback under
DistributedDataParallel, each rank on its own shard, with a checkpoint saved mid-warm-up while
rows are still waiting for the core (the Trainer saves the optimizer on rank 0 only), and λ
calibrated by lam="auto" at the first penalised step from the all-reduced gradients. Rank 0
writes what every rank ended with to argv[1] as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers
warnings.simplefilter("ignore")  # third-party noise; the test checks results, not warnings

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import Trainer  # noqa: E402

from fwlora import FisherAdamW  # noqa: E402
from fwlora.integrations import FisherCallback  # noqa: E402
from integration_helpers import TinyDataset, training_args  # noqa: E402
from tiny import tiny_lora_model  # noqa: E402

WARMUP = 4


def main(result_path: str, output_dir: str) -> None:
    torch.set_num_threads(1)
    model = tiny_lora_model(seed=0, dtype=torch.float32)
    opt = FisherAdamW(
        model, lr=1e-2, warmup=WARMUP, lam="auto", target_ratio=0.5, alpha=0.7, flush_every=3
    )
    fw = opt.fisher_weighting
    local_rows: list[list[float]] = []
    take_row = fw.statistics.take_row

    def recording_take_row(device):
        row = take_row(device)
        local_rows.append(row.tolist())  # this rank's statistic, before the all-reduce
        return row

    fw.statistics.take_row = recording_take_row
    args = training_args(
        output_dir,
        max_steps=6,
        save_strategy="steps",
        save_steps=2,  # checkpoint-2: mid-warm-up, rows not yet flushed
        ddp_backend="gloo",
    )
    trainer = Trainer(model=model, args=args, train_dataset=TinyDataset(48), optimizers=(opt, None))
    trainer.add_callback(FisherCallback(trainer))
    trainer.train()

    rank, world = dist.get_rank(), dist.get_world_size()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    params = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(params, flat)
    mine = {
        "rank": rank,
        "importance": opt.importance,
        "fisher": opt.fisher,
        "step": fw.step,
        "lam": opt.lam,
        "ratios": opt.penalty_grad_ratios(),
        "logged_lams": [h["fwlora/lam"] for h in trainer.state.log_history if "fwlora/lam" in h],
        "local_rows": local_rows,
    }
    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        result = {
            "world": world,
            "ranks": everyone,
            "max_param_diff": max(float((p - params[0]).abs().max()) for p in params),
            "alpha": fw.core.alpha,
            "warmup": WARMUP,
        }
        Path(result_path).write_text(json.dumps(result))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)
