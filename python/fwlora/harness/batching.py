"""Batching: a split's token ids, padded per batch to the longest row of the batch."""

from __future__ import annotations

import numpy as np
import torch

from fwlora.harness.data import Split


class Encoded:
    """Token ids of a split, padded per batch."""

    def __init__(self, tokenizer, split: Split, max_length: int) -> None:
        enc = tokenizer(
            split.texts, split.text_pairs, truncation=True, max_length=max_length, padding=False
        )
        self.keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        self.rows = [{k: enc[k][i] for k in self.keys} for i in range(len(split))]
        self.labels = np.asarray(split.labels, dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> np.ndarray:
        return np.array([len(r["input_ids"]) for r in self.rows])

    def batch(self, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        rows = [self.rows[i] for i in index]
        width = max(len(r["input_ids"]) for r in rows)
        out = {}
        for key in self.keys:
            fill = self.pad_id if key == "input_ids" else 0
            out[key] = torch.tensor(
                [r[key] + [fill] * (width - len(r[key])) for r in rows], device=device
            )
        out["labels"] = torch.as_tensor(self.labels[index], device=device)
        return out
