"""Candidate implementations of FW-LoRA's penalty gradient, timed beside the shipped one.

Benchmark-only prototypes (nothing in fwlora imports this): bench_optimizer.py times each
alone against `FisherPenalty.add_gradients` and checks it adds the same gradients, so a
GPU run can decide whether one is worth moving into fwlora/optim/penalty.py.

* RowStackPenalty — A (r × in) and Bᵀ (r × out) stacked together by row length d (two
  stacks on roberta-base instead of six), one Gram bmm per stack, the partners' Grams
  gathered and scaled by one index_select + mul, the products written by four bmm in the
  gradients' own layouts, one foreach_add over all 2M gradients: 12 kernels instead of 30.
* BufferedPenalty — the shipped grouping and kernels, but the stacks, Grams and products
  written into buffers allocated once (`out=`), and one foreach_add for all 2M gradients
  instead of one per group and factor: no per-step allocation, 25 kernels instead of 30.
* AddmmPenalty — the shipped stacks and Gram bmm, then each gradient updated in place by one
  addmm_ (grad += B·(c·G_A), grad += (c·G_B)·A): no (n × ...) product tensors and no separate
  add pass (less memory traffic), at the price of one small kernel per factor (144 on
  roberta-base) instead of 2 bmm + 1 foreach_add per group.
* GraphPenalty (CUDA) — the shipped grouping, its stacks, Grams and products captured once
  in a CUDA graph writing static buffers; a step is one graph replay and one foreach_add.
  Valid while the LoRA parameters keep their storage (checked here by data_ptr).
"""

from __future__ import annotations

import torch


class RowStackPenalty:
    def __init__(self, matrices, factors) -> None:
        self.matrices = matrices
        rows: dict[tuple, list[int]] = {}
        for i, m in enumerate(matrices):
            rows.setdefault((m.in_features, "A"), []).append(i)
            rows.setdefault((m.out_features, "B"), []).append(i)
        self.groups = []  # per row length d: (indices whose A has it, whose Bᵀ has it)
        pos: dict[tuple, int] = {}
        offset = 0
        for d in sorted({d for d, _ in rows}):
            a_idx, b_idx = rows.get((d, "A"), []), rows.get((d, "B"), [])
            for k, i in enumerate(a_idx):
                pos[(i, "A")] = offset + k
            for k, i in enumerate(b_idx):
                pos[(i, "B")] = offset + len(a_idx) + k
            offset += len(a_idx) + len(b_idx)
            self.groups.append((a_idx, b_idx))
        order = [(i, s) for a, b in self.groups for s, idx in (("A", a), ("B", b)) for i in idx]
        first = matrices[0].lora_A
        # Item (i, "A") is multiplied by B_i's Gram, (i, "B") by A_i's.
        self.partner = torch.tensor(
            [pos[(i, "B" if s == "A" else "A")] for i, s in order], device=first.device
        )
        f = torch.as_tensor(factors, dtype=torch.float64)
        s2 = torch.tensor([matrices[i].scaling ** 2 for i, _ in order], dtype=torch.float64)
        idx = torch.tensor([i for i, _ in order])
        self.coef = (2.0 * f[idx] * s2).to(first.device, first.dtype).view(-1, 1, 1)

    @torch.no_grad()
    def add_gradients(self) -> None:
        ms = self.matrices
        xs, grams = [], []
        for a_idx, b_idx in self.groups:
            x = torch.stack([ms[i].lora_A for i in a_idx] + [ms[i].lora_B.mT for i in b_idx])
            xs.append(x)
            grams.append(torch.bmm(x, x.mT))
        p = torch.cat(grams).index_select(0, self.partner).mul_(self.coef)
        targets, sources = [], []
        offset = 0
        for (a_idx, b_idx), x in zip(self.groups, xs):
            na, nb = len(a_idx), len(b_idx)
            if na:  # grad_A += (s²·2f·BᵀB) A
                sources.extend(torch.bmm(p[offset : offset + na], x[:na]).unbind(0))
                targets.extend(ms[i].lora_A.grad for i in a_idx)
            if nb:  # grad_B += B (s²·2f·AAᵀ), written (out × r) like the gradient
                sources.extend(torch.bmm(x[na:].mT, p[offset + na : offset + na + nb]).unbind(0))
                targets.extend(ms[i].lora_B.grad for i in b_idx)
            offset += na + nb
        torch._foreach_add_(targets, sources)


class BufferedPenalty:
    def __init__(self, penalty) -> None:
        """`penalty`: a fwlora FisherPenalty with its factors set."""
        self.penalty = penalty
        self.buffers = []
        for group in penalty.groups:
            a, b = torch.stack(group.lora_A), torch.stack(group.lora_B)
            n, r = a.shape[0], a.shape[1]
            grams = [a.new_empty(n, r, r), a.new_empty(n, r, r)]
            # stacks of A and B, their Grams, and the two products (shaped like A and B)
            self.buffers.append((torch.empty_like(a), torch.empty_like(b), *grams, a, b))
        # per group: the product buffers' rows, in the order the gradients are listed
        self.sources = [t for *_, ga, gb in self.buffers for t in (*gb.unbind(0), *ga.unbind(0))]

    @torch.no_grad()
    def add_gradients(self) -> None:
        targets = []
        for i, group in enumerate(self.penalty.groups):
            a, b, gram_a, gram_b, grad_a, grad_b = self.buffers[i]
            torch.stack(group.lora_A, out=a)
            torch.stack(group.lora_B, out=b)
            c = self.penalty._coef[i]
            torch.bmm(b, torch.bmm(a, a.mT, out=gram_a).mul_(c), out=grad_b)
            torch.bmm(torch.bmm(b.mT, b, out=gram_b).mul_(c), a, out=grad_a)
            targets += [p.grad for p in group.lora_B] + [p.grad for p in group.lora_A]
        torch._foreach_add_(targets, self.sources)


class AddmmPenalty:
    def __init__(self, penalty) -> None:
        """`penalty`: a fwlora FisherPenalty with its factors set."""
        self.penalty = penalty

    @torch.no_grad()
    def add_gradients(self) -> None:
        for i, group in enumerate(self.penalty.groups):
            a, b = torch.stack(group.lora_A), torch.stack(group.lora_B)
            c = self.penalty._coef[i]
            gram_a = torch.bmm(a, a.mT).mul_(c)
            gram_b = torch.bmm(b.mT, b).mul_(c)
            for k, (fa, fb) in enumerate(zip(group.lora_A, group.lora_B)):
                fb.grad.addmm_(fb, gram_a[k])
                fa.grad.addmm_(gram_b[k], fa)


class GraphPenalty:
    def __init__(self, penalty) -> None:
        """`penalty`: a fwlora FisherPenalty with its factors set (CUDA parameters)."""
        self.penalty = penalty
        self.params = [p for g in penalty.groups for p in (*g.lora_B, *g.lora_A)]
        self.ptrs = [p.data_ptr() for p in self.params]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graph asks
                self._products()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            outs = self._products()
        self.sources = [t for out in outs for t in out.unbind(0)]

    def _products(self) -> list[torch.Tensor]:
        outs = []
        for i, group in enumerate(self.penalty.groups):
            a = torch.stack(group.lora_A)
            b = torch.stack(group.lora_B)
            c = self.penalty._coef[i]
            outs.append(torch.bmm(b, torch.bmm(a, a.mT).mul_(c)))
            outs.append(torch.bmm(torch.bmm(b.mT, b).mul_(c), a))
        return outs

    @torch.no_grad()
    def add_gradients(self) -> None:
        if [p.data_ptr() for p in self.params] != self.ptrs:
            raise RuntimeError("LoRA parameters moved since the graph was captured")
        self.graph.replay()
        torch._foreach_add_([p.grad for p in self.params], self.sources)
