"""How strongly the penalty acts: ‖∇P‖ / ‖∇L_task‖ over the LoRA factors, per penalised step.

At the paper's λ = 1e-4 the penalty's gradient can be a thousandth of the task's, which makes
FW-LoRA numerically plain LoRA; this ratio makes that visible. Each step's ratio stays on the
device (no host sync) in a growing buffer; reading it syncs once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fwlora.optim.distributed import sq_norm_sum

_CHUNK = 1024


class PenaltyStrength:
    """Records one ratio per penalised step, on the device of the LoRA factors."""

    def __init__(self) -> None:
        self._chunks: list[torch.Tensor] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def grad_sq_norm(params: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """Σ ‖p.grad‖² over `params` as a float64 0-d tensor (None when no grad exists)."""
        # FSDP2 shards (DTensors): the global sum, one scalar all-reduce.
        return sq_norm_sum(p.grad for p in params if p.grad is not None)

    def record(self, penalty_sq: torch.Tensor, task_sq: torch.Tensor | None) -> None:
        """Appends sqrt(penalty_sq / task_sq) (inf when the task gradient is 0 or absent)."""
        if task_sq is None:
            task_sq = torch.zeros((), dtype=torch.float64, device=penalty_sq.device)
        ratio = (penalty_sq.to(torch.float64) / task_sq.to(penalty_sq.device)).sqrt()
        slot = self._count % _CHUNK
        if slot == 0:
            self._chunks.append(torch.empty(_CHUNK, dtype=torch.float64, device=ratio.device))
        chunk = self._chunks[-1]
        chunk[slot] = ratio.to(chunk.device)
        self._count += 1

    def latest(self) -> float | None:
        if not self._count:
            return None
        return float(self._chunks[-1][(self._count - 1) % _CHUNK])

    def history(self) -> list[float]:
        if not self._count:
            return []
        return torch.cat(self._chunks).cpu()[: self._count].tolist()

    def reset(self) -> None:
        self._chunks.clear()
        self._count = 0
