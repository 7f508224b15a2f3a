"""Shared by the integration tests and the DDP worker: a tiny dataset and Trainer set-up."""

from __future__ import annotations

import contextlib

import torch
from torch.utils.data import Dataset

from tiny import batches


class TinyDataset(Dataset):
    """`n` examples from tests/tiny.py's batches, one dict of (SEQ,) tensors each."""

    def __init__(self, n: int, seed: int = 1) -> None:
        rows = []
        for batch in batches(n, batch_size=1, seed=seed):
            rows.append({k: v[0] for k, v in batch.items()})
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def training_args(output_dir, **overrides):
    from transformers import TrainingArguments

    kwargs = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "max_steps": 8,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "linear",
        "warmup_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "data_seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "max_grad_norm": 1.0,
    }
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def reset_accelerate() -> None:
    """accelerate keeps process-wide singletons; each test starts from a clean one."""
    from accelerate.state import AcceleratorState, GradientState

    with contextlib.suppress(Exception):
        AcceleratorState._reset_state(reset_partial_state=True)
    with contextlib.suppress(Exception):
        GradientState._reset_state()
