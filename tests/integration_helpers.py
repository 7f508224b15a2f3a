"""Shared by the integration tests and the DDP worker: a tiny dataset and Trainer set-up."""

from __future__ import annotations

import contextlib

from tiny import TinyDataset  # noqa: F401  (re-exported: defined with the tiny models)


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
