"""How strongly the penalty acts: ‖∇P‖ / ‖∇L_task‖ over the LoRA factors, per penalised step.

At the paper's λ = 1e-4 the penalty's gradient can be a thousandth of the task's, which makes
FW-LoRA numerically plain LoRA; this ratio makes that visible. Each step's ratio stays on the
device (no host sync) in a growing buffer; reading it syncs once.

Which steps are measured. ‖∇P‖² is free (the penalty's r × r Gram matrices), but ‖∇L_task‖²
is a pass over every LoRA gradient, so it is taken on the first N penalised steps and then on
every Nth, N = the `ratio_every` option (default `MEASURE_EVERY`, 16): penalised step j = t − K
(t the optimizer step, K the warm-up) is measured when j ≤ N or j % N == 0 (`is_measured`).
The first penalised step is always measured, and `force_next()` makes the next penalised
step measured whatever its number. `steps()` lists the measured steps, in the order of `history()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fwlora.optim.collectives import sq_norm_sum

_CHUNK = 1024
MEASURE_EVERY = 16  # ratio_every's default: the first 16 penalised steps, then every 16th


class PenaltyStrength:
    """Records one ratio per measured penalised step, on the device of the LoRA factors."""

    def __init__(self, every: int = MEASURE_EVERY) -> None:
        assert every >= 1, every
        self.every = every
        self._chunks: list[torch.Tensor] = []
        self._steps: list[int] = []  # the optimizer step of each recorded ratio
        self._count = 0
        self._forced = False

    def __len__(self) -> int:
        return self._count

    def is_measured(self, penalised_step: int) -> bool:
        """Whether penalised step j (1 = the first after warm-up) is measured."""
        return self._forced or penalised_step <= self.every or penalised_step % self.every == 0

    def force_next(self) -> None:
        """Measures the next penalised step, whatever its number."""
        self._forced = True

    @staticmethod
    def grad_sq_norm(params: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """Σ ‖p.grad‖² over `params` as a float64 0-d tensor (None when no grad exists)."""
        # FSDP2 shards (DTensors): the global sum, one scalar all-reduce.
        return sq_norm_sum(p.grad for p in params if p.grad is not None)

    def record(
        self, penalty_sq: torch.Tensor, task_sq: torch.Tensor | None, step: int | None = None
    ) -> None:
        """Appends sqrt(penalty_sq / task_sq) (inf when the task gradient is 0 or absent),
        measured at optimizer step `step` (listed by `steps()`)."""
        self._forced = False
        if task_sq is None:
            task_sq = torch.zeros((), dtype=torch.float64, device=penalty_sq.device)
        ratio = (penalty_sq.to(torch.float64) / task_sq.to(penalty_sq.device)).sqrt()
        slot = self._count % _CHUNK
        if slot == 0:
            self._chunks.append(torch.empty(_CHUNK, dtype=torch.float64, device=ratio.device))
        chunk = self._chunks[-1]
        chunk[slot] = ratio.to(chunk.device)
        self._steps.append(self._count + 1 if step is None else step)
        self._count += 1

    def latest(self) -> float | None:
        if not self._count:
            return None
        return float(self._chunks[-1][(self._count - 1) % _CHUNK])

    def history(self) -> list[float]:
        if not self._count:
            return []
        return torch.cat(self._chunks).cpu()[: self._count].tolist()

    def steps(self) -> list[int]:
        """The optimizer step of each ratio in `history()`."""
        return list(self._steps)

    def reset(self) -> None:
        self._chunks.clear()
        self._steps.clear()
        self._count = 0
        self._forced = False
