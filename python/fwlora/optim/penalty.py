"""The Fisher-weighted penalty P = Σ_m f_m ‖ΔW_m‖²_F with ΔW_m = s_m·B_m·A_m.

Never forms ΔW: with the r × r Gram matrices,
    ‖ΔW‖²_F = s²·⟨BᵀB, A Aᵀ⟩,   ∂P/∂B = 2 f s² · B (A Aᵀ),   ∂P/∂A = 2 f s² · (BᵀB) A.
Matrices of equal shape are stacked and handled by one batched matmul each, so the cost per
optimizer step is a handful of kernels per distinct shape (3 on roberta-base), not per matrix.

FSDP2 (factors are DTensors, sharded on dim 0: A on its rank dim r, B on out): per shape group,
each rank stacks its local shards and needs only the full r × r Gram matrices:
  * BᵀB = Σ_ranks B_localᵀ B_local: one all-reduce of n·r·r floats (B sharded along out, the
    dimension BᵀB sums over); ∂P/∂B = c·B_local (A Aᵀ) is then local;
  * A Aᵀ needs whole rows of A: one all-gather of the (n × r × in) stacked A, the small factor
    (never W or ΔW); ∂P/∂A = c·(BᵀB) A is formed whole (n·r·r·in flops) and each rank keeps its
    rows. With A sharded along in (``fully_shard(..., shard_placement_fn=...)`` giving Shard(1))
    A Aᵀ is an all-reduce of r × r too and nothing is gathered.
Every rank ends with the same Gram matrices, so P and the strength read-out agree across ranks;
`add_gradients` and `value` are collectives there: every rank must call them.

‖∇P‖² comes from the same r × r Gram matrices, with no pass over the gradients: writing
G_A = A Aᵀ, G_B = BᵀB and c = 2 f s², ‖c·B G_A‖² = c² tr(G_A G_B G_A) and ‖c·G_B A‖² =
c² tr(G_B G_B G_A), so ‖∇_(A,B) P‖² = c²·Σ_ij (G_A G_B)_ij (G_A + G_B)_ij (float64; exact up
to rounding, and the same on every rank under FSDP2 without a collective).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fwlora.optim.collectives import is_dtensor
from fwlora.optim.targets import AdapterMatrix


@dataclass
class _ShapeGroup:
    indices: list[int]
    lora_A: list[torch.Tensor]
    lora_B: list[torch.Tensor]
    scaling_sq: torch.Tensor  # (n, 1, 1): s_m²
    sharded: bool = False  # factors are FSDP2 DTensors (see the module docstring)


def _layout(t: torch.Tensor) -> tuple:
    """What must agree for factors to be stacked: their mesh and placements (DTensors)."""
    if not is_dtensor(t):
        return ()
    return (id(t.device_mesh), tuple(t.placements))  # type: ignore[attr-defined]


class FisherPenalty:
    """Adds ∂P/∂A and ∂P/∂B to the LoRA gradients for per-matrix factors f_m."""

    def __init__(self, matrices: list[AdapterMatrix]) -> None:
        self.matrices = matrices
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(matrices):
            key = (
                tuple(m.lora_A.shape),
                tuple(m.lora_B.shape),
                m.lora_A.dtype,
                m.lora_A.device,
                _layout(m.lora_A),
                _layout(m.lora_B),
            )
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
                sharded=is_dtensor(matrices[idx[0]].lora_A) or is_dtensor(matrices[idx[0]].lora_B),
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
        """grad += scale · ∂P/∂(A, B) for every factor that has a gradient this step.

        A factor without one (no backward reached it, or requires_grad=False) is left alone,
        as AdamW leaves a parameter without a gradient: no penalty, no update. The measured
        norm then counts only the factors penalised. Under FSDP2 every rank still takes part
        in each group's collectives.

        With `measure`, returns ‖scale · ∂P/∂(A, B)‖² over all factors as a float64 0-d
        tensor on the factors' device (no host sync; from the r × r Gram matrices, see the
        module docstring); else None.
        """
        if self._coef is None:
            raise RuntimeError("FisherPenalty.add_gradients before set_factors")
        sq_norms = []
        for i, group in enumerate(self.groups):
            has_a = [_takes_penalty(p) for p in group.lora_A]
            has_b = [_takes_penalty(p) for p in group.lora_B]
            if not (any(has_a) or any(has_b)) and not group.sharded:
                continue  # nothing of this group is updated this step
            every = all(has_a) and all(has_b)
            if group.sharded:
                coef = self._follow(i, _local(group.lora_A[0]))
                c = coef if scale == 1.0 else coef * scale
                grad_a, grad_b, gram_a, gram_b = _sharded_terms(group, c)
                if measure:
                    sq_norms.append(
                        _grad_sq_norm(gram_a, gram_b, c, None if every else (has_a, has_b))
                    )
                _accumulate_sharded(group.lora_B, grad_b, has_b)
                _accumulate_sharded(group.lora_A, grad_a, has_a)
                continue
            a = torch.stack(group.lora_A)  # (n, r, in)
            b = torch.stack(group.lora_B)  # (n, out, r)
            coef = self._follow(i, a)
            c = coef if scale == 1.0 else coef * scale
            gram_a = torch.bmm(a, a.mT)
            gram_b = torch.bmm(b.mT, b)
            if measure:
                sq_norms.append(_grad_sq_norm(gram_a, gram_b, c, None if every else (has_a, has_b)))
            # Scale the r × r Gram matrices, not the (out × r) / (r × in) products: same
            # result, two fewer passes over the adapter-sized tensors.
            grad_b = torch.bmm(b, gram_a.mul_(c))
            grad_a = torch.bmm(gram_b.mul_(c), a)
            # One batched add for the group's A and B gradients.
            _accumulate(group.lora_B + group.lora_A, [*grad_b.unbind(0), *grad_a.unbind(0)])
        if not measure:
            return None
        if not sq_norms:  # no factor had a gradient
            return torch.zeros((), dtype=torch.float64, device=self.matrices[0].lora_A.device)
        device = sq_norms[0].device
        return torch.stack([v.to(device) for v in sq_norms]).sum()

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
            if group.sharded:
                coef = self._follow(i, _local(group.lora_A[0])) if coefs is None else coefs[i]
                gram_a, gram_b = _sharded_grams(group)
                gram = (gram_a * gram_b).sum(dim=(1, 2))
                part = (0.5 * coef.to(gram.device, gram.dtype).view(-1) * gram).sum()
                total = part if total is None else total + part
                continue
            a = torch.stack(group.lora_A)
            b = torch.stack(group.lora_B)
            coef = self._follow(i, a) if coefs is None else coefs[i]
            gram = (torch.bmm(a, a.mT) * torch.bmm(b.mT, b)).sum(dim=(1, 2))
            part = (0.5 * coef.view(-1) * gram).sum()
            total = part if total is None else total + part
        assert total is not None
        return total


def _takes_penalty(p: torch.Tensor) -> bool:
    """Whether the optimizer updates `p` this step (AdamW's rule: it has a gradient)."""
    return p.grad is not None and p.requires_grad


def _grad_sq_norm(
    gram_a: torch.Tensor,
    gram_b: torch.Tensor,
    c: torch.Tensor,
    masks: tuple[list[bool], list[bool]] | None = None,
) -> torch.Tensor:
    """Σ_n ‖c_n·B_n G_A,n‖² + ‖c_n·G_B,n A_n‖² from the (n, r, r) Gram matrices, float64;
    with `masks` (has A, has B per matrix) only the terms of penalised factors."""
    ga, gb = gram_a.to(torch.float64), gram_b.to(torch.float64)
    product = torch.bmm(ga, gb)
    if masks is None:
        per_matrix = (product * (ga + gb)).sum(dim=(1, 2))
    else:  # ‖∂P/∂B‖² = c² Σ (G_A G_B)∘G_A, ‖∂P/∂A‖² = c² Σ (G_A G_B)∘G_B
        has_a = torch.tensor(masks[0], dtype=torch.float64, device=ga.device)
        has_b = torch.tensor(masks[1], dtype=torch.float64, device=ga.device)
        per_matrix = has_b * (product * ga).sum(dim=(1, 2)) + has_a * (product * gb).sum(dim=(1, 2))
    return (per_matrix * c.to(torch.float64).view(-1).square()).sum()


def _accumulate(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """p.grad += g for every p that takes the penalty (see `_takes_penalty`)."""
    targets: list[torch.Tensor] = []
    updates: list[torch.Tensor] = []
    for p, g in zip(params, grads):
        if p.grad is not None and p.requires_grad:
            targets.append(p.grad)
            updates.append(g)
    if targets:
        torch._foreach_add_(targets, updates)


# ------------------------------------------------------------------ FSDP2 (DTensor factors)
def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if is_dtensor(t) else t  # type: ignore[attr-defined]


def _stack(factors: list[torch.Tensor]) -> Any:
    """The n factors as one (n, ...) DTensor, from their local shards (no communication)."""
    from torch.distributed.tensor import DTensor, Shard

    first: Any = factors[0]
    placements = [Shard(q.dim + 1) if isinstance(q, Shard) else q for q in first.placements]
    local = torch.stack([_local(f) for f in factors])
    shape = torch.Size((len(factors), *first.shape))
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, first.device_mesh, placements, shape=shape, stride=stride)


def _gram(x: Any, contract: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(full r × r Gram matrices, the tensor to multiply them with, whether it is whole).

    `x` is a stacked factor: A (n, r, in) with `contract` = 2, B (n, out, r) with 1. Sharded
    only along the contracted dim: local Gram, one all-reduce, and the local shard (its
    gradient is local). Sharded along r: the whole factor is gathered (it is the small one).
    """
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    rank_dim = 3 - contract
    if any(isinstance(q, Shard) and q.dim == rank_dim for q in x.placements):
        whole = x.full_tensor()
        gram = whole @ whole.mT if contract == 2 else whole.mT @ whole
        return gram, whole, True
    local = x.to_local()
    gram = local @ local.mT if contract == 2 else local.mT @ local
    placements = [Partial() if isinstance(q, Shard) else Replicate() for q in x.placements]
    return DTensor.from_local(gram, x.device_mesh, placements).full_tensor(), local, False


def _sharded_grams(group: _ShapeGroup) -> tuple[torch.Tensor, torch.Tensor]:
    gram_a, _, _ = _gram(_stack(group.lora_A), 2)
    gram_b, _, _ = _gram(_stack(group.lora_B), 1)
    return gram_a, gram_b


def _rows_of(whole: torch.Tensor, like: Any) -> torch.Tensor:
    """This rank's shard of a tensor every rank holds whole (no communication)."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = like.device_mesh
    replicated = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim)
    return replicated.redistribute(mesh, like.placements).to_local()


def _sharded_terms(
    group: _ShapeGroup, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's shards of c·(BᵀB) A and c·B (A Aᵀ), stacked (n, ...), and the full (n, r, r)
    Gram matrices A Aᵀ and BᵀB (the same on every rank)."""
    a, b = _stack(group.lora_A), _stack(group.lora_B)
    gram_a, a_t, a_whole = _gram(a, 2)
    gram_b, b_t, b_whole = _gram(b, 1)
    grad_b = torch.bmm(b_t, gram_a * c)
    grad_a = torch.bmm(gram_b * c, a_t)
    if a_whole:
        grad_a = _rows_of(grad_a, a)
    if b_whole:
        grad_b = _rows_of(grad_b, b)
    return grad_a, grad_b, gram_a, gram_b


def _accumulate_sharded(params: list[torch.Tensor], grads: torch.Tensor, takes: list[bool]) -> None:
    """p.grad += g on each rank's shard, for the factors that take the penalty."""
    for p, g, take in zip(params, grads.unbind(0), takes):
        d: Any = p
        if take:
            d.grad.to_local().add_(g)
