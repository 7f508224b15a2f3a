"""Evaluation of a model on an encoded split: mean loss and predictions in the split's order."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fwlora.harness.batching import Encoded
from fwlora.harness.config import RunConfig
from fwlora.harness.progress import steps


@torch.no_grad()
def evaluate(
    model, data: Encoded, cfg: RunConfig, device: torch.device, bf16: bool, desc: str
) -> tuple[float, np.ndarray]:
    """(mean loss, predictions in the split's order)."""
    model.eval()
    order = np.argsort(data.lengths(), kind="stable")  # similar lengths together: less padding
    preds = np.empty(len(data), dtype=np.int64)
    total_loss = 0.0
    starts = list(range(0, len(data), cfg.eval_batch_size))
    for start in steps(starts, desc=desc, quiet=cfg.quiet, unit="batch"):
        index = order[start : start + cfg.eval_batch_size]
        batch = data.batch(index, device)
        labels = batch.pop("labels")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**batch).logits.float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        preds[index] = logits.argmax(-1).cpu().numpy()
    return total_loss / len(data), preds
