"""The Fisher-weighted penalty P = Σ_m f_m ‖ΔW_m‖²_F with ΔW_m = s_m·B_m·A_m.

Never forms ΔW: with the r × r Gram matrices,
    ‖ΔW‖²_F = s²·⟨BᵀB, A Aᵀ⟩,   ∂P/∂B = 2 f s² · B (A Aᵀ),   ∂P/∂A = 2 f s² · (BᵀB) A.
Matrices of equal shape are stacked and handled by one batched matmul each, so the cost per
optimizer step is a handful of kernels per distinct shape (3 on roberta-base), not per matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fwlora.optim.targets import AdapterMatrix


@dataclass
class _ShapeGroup:
    indices: list[int]
    lora_A: list[torch.Tensor]
    lora_B: list[torch.Tensor]
    scaling_sq: torch.Tensor  # (n, 1, 1): s_m²


class FisherPenalty:
    """Adds ∂P/∂A and ∂P/∂B to the LoRA gradients for per-matrix factors f_m."""

    def __init__(self, matrices: list[AdapterMatrix]) -> None:
        self.matrices = matrices
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(matrices):
            key = (tuple(m.lora_A.shape), tuple(m.lora_B.shape), m.lora_A.dtype, m.lora_A.device)
            groups.setdefault(key, []).append(i)
        self.groups = [
            _ShapeGroup(
                indices=idx,
                lora_A=[matrices[i].lora_A for i in idx],
                lora_B=[matrices[i].lora_B for i in idx],
                scaling_sq=torch.tensor(
                    [matrices[i].scaling ** 2 for i in idx],
                    dtype=matrices[idx[0]].lora_A.dtype,
                    device=matrices[idx[0]].lora_A.device,
                ).view(-1, 1, 1),
            )
            for idx in groups.values()
        ]
        self._coef: list[torch.Tensor] | None = None

    def set_factors(self, factors: Sequence[float] | np.ndarray) -> None:
        """f_m per matrix (a sequence of M floats): cached on the device as 2·f·s² per group."""
        self._coef = self._coefficients(factors)

    @staticmethod
    def _follow_scaling(group: _ShapeGroup, a: torch.Tensor) -> None:
        if group.scaling_sq.device != a.device or group.scaling_sq.dtype != a.dtype:
            group.scaling_sq = group.scaling_sq.to(a.device, a.dtype)

    def _follow(self, i: int, a: torch.Tensor) -> torch.Tensor:
        """Group i's cached coefficient on `a`'s device and dtype (Trainer and accelerate
        move the model after the optimizer was built); re-cached once when it moved."""
        assert self._coef is not None
        self._follow_scaling(self.groups[i], a)
        coef = self._coef[i]
        if coef.device != a.device or coef.dtype != a.dtype:
            coef = self._coef[i] = coef.to(a.device, a.dtype)
        return coef

    def _coefficients(self, factors: Sequence[float] | np.ndarray) -> list[torch.Tensor]:
        values = torch.as_tensor(factors, dtype=torch.float64)
        return [
            (2.0 * values[g.indices])
            .to(dtype=g.scaling_sq.dtype, device=g.scaling_sq.device)
            .view(-1, 1, 1)
            * g.scaling_sq
            for g in self.groups
        ]

    @torch.no_grad()
    def add_gradients(self, scale: float = 1.0, measure: bool = False) -> torch.Tensor | None:
        """grad += scale · ∂P/∂(A, B) for every adapter (a missing grad is created).

        With `measure`, returns ‖scale · ∂P/∂(A, B)‖² over all factors as a float64 0-d
        tensor on the factors' device (no host sync); else None.
        """
        if self._coef is None:
            raise RuntimeError("FisherPenalty.add_gradients before set_factors")
        sq_norms = []
        for i, group in enumerate(self.groups):
            a = torch.stack(group.lora_A)  # (n, r, in)
            b = torch.stack(group.lora_B)  # (n, out, r)
            coef = self._follow(i, a)
            c = coef if scale == 1.0 else coef * scale
            # Scale the r × r Gram matrices, not the (out × r) / (r × in) products: same
            # result, two fewer passes over the adapter-sized tensors.
            grad_b = torch.bmm(b, torch.bmm(a, a.mT).mul_(c))
            grad_a = torch.bmm(torch.bmm(b.mT, b).mul_(c), a)
            if measure:
                for g in (grad_a, grad_b):
                    sq_norms.append(torch.linalg.vector_norm(g, dtype=torch.float64).square())
            _accumulate(group.lora_B, grad_b)
            _accumulate(group.lora_A, grad_a)
        return torch.stack(sq_norms).sum() if measure else None

    @torch.no_grad()
    def value(self, factors: Sequence[float] | np.ndarray | None = None) -> torch.Tensor:
        """P = Σ f_m ‖ΔW_m‖²_F as a 0-d tensor (no host sync); `factors` default: the cached."""
        if factors is None and self._coef is None:
            raise RuntimeError("FisherPenalty.value before set_factors")
        coefs = None
        if factors is not None:
            for group in self.groups:
                self._follow_scaling(group, group.lora_A[0])
            coefs = self._coefficients(factors)
        total = None
        for i, group in enumerate(self.groups):
            a = torch.stack(group.lora_A)
            b = torch.stack(group.lora_B)
            coef = self._follow(i, a) if coefs is None else coefs[i]
            gram = (torch.bmm(a, a.mT) * torch.bmm(b.mT, b)).sum(dim=(1, 2))
            part = (0.5 * coef.view(-1) * gram).sum()
            total = part if total is None else total + part
        assert total is not None
        return total


def _accumulate(params: list[torch.Tensor], grads: torch.Tensor) -> None:
    with_grad = [p for p in params if p.grad is not None]
    if len(with_grad) == len(params):
        torch._foreach_add_([p.grad for p in with_grad if p.grad is not None], grads.unbind(0))
        return
    for p, g in zip(params, grads.unbind(0)):
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)
